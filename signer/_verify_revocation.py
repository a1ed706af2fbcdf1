"""Step (11) of `SealVerifier.validate`: was the signer's certificate, or a CA certificate of its
chain, revoked by the signing time?

The sources, in order:

1. the registry's key state (`revoked`, with its time and reason): the federation's own word,
   which no older evidence overrides;
2. validation data embedded in the seal (JAdES baseline-LT `etsiU` `rVals`): for each
   certificate of the chain (the root excepted), an OCSP response or a CRL that names it, checked
   by `signer._revocation` (signed by the issuer or its delegated responder, about this very
   certificate, current at the later of the signing time and its own issue);
3. when the embedded data does not cover the signing certificate and the verifier was given a
   `RevocationFetcher`, the OCSP responders and CRL URLs the certificate names (hard-fail);
4. the region's CRLs from the registry, for the certificates the embedded data does not cover
   (the leaf's issuer must have one, as before, unless the embedded data covers the leaf).

An embedded item that names a certificate of the chain but cannot be relied on (a bad signature,
an unauthorised responder, stale) makes the validation INDETERMINATE / TRY_LATER: tampered
evidence is refused, never silently skipped. Items about no certificate of the chain are
ignored, and the check says how many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import ocsp

from signer._jades import ParsedJws
from signer._jades_json import ValidationData, timestamp_input
from signer._report import SubIndication
from signer._revocation import CertStatus, RevocationStatus, check_crl, check_ocsp_response
from signer._revocation_fetch import RevocationFetcher
from signer._sm2_x509 import CERTIFICATE_READ_ERRORS
from signer._timestamps import proof_of_existence
from signer._trust import TrustedKey, TrustSource
from signer._verify_helpers import (
    BENIGN_REASONS,
    Chain,
    Facts,
    Revocation,
    Run,
    check_online,
    revocation_of,
)
from signer.errors import RevocationDataInvalid

__all__: list[str] = []  # internals of `_verify`


@dataclass(frozen=True, slots=True)
class Embedded:
    """What the embedded validation data says about the chain's certificates, by position."""

    statuses: dict[int, RevocationStatus]  # position in the chain (0 = leaf) -> status
    ignored: int  # items about no certificate of the chain


def _ocsp_issued(
    der: bytes, certificate: x509.Certificate, issuer: x509.Certificate
) -> datetime | None:
    """thisUpdate of the single response whose CertID names `certificate` of `issuer`, or None
    when the response names it nowhere (or is not a successful response)."""
    try:
        response = ocsp.load_der_ocsp_response(der)
        if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        for single in response.responses:
            if single.serial_number != certificate.serial_number:
                continue
            request = ocsp.OCSPRequestBuilder().add_certificate(
                certificate, issuer, single.hash_algorithm
            )
            built = request.build()
            if (built.issuer_name_hash, built.issuer_key_hash) == (
                single.issuer_name_hash,
                single.issuer_key_hash,
            ):
                return single.this_update_utc
    except (*CERTIFICATE_READ_ERRORS, UnsupportedAlgorithm):  # parsed lazily: unreadable
        return None
    return None


def _describe(status: RevocationStatus) -> str:
    what = "OCSP response" if status.source == "ocsp" else "CRL"
    return f"embedded {what} of {status.this_update:%Y-%m-%dT%H:%M:%SZ}"


def embedded_statuses(run: Run, data: ValidationData, chain: Chain, signed: datetime) -> Embedded:
    """The status of each certificate of `chain` that the embedded data covers; `Fail`
    (TRY_LATER) when an item that names one of them cannot be relied on."""
    statuses: dict[int, RevocationStatus] = {}
    used: set[tuple[str, int]] = set()
    pairs = list(zip(chain.certificates, chain.certificates[1:], strict=False))
    for position, (certificate, issuer) in enumerate(pairs):
        what = "signing certificate" if position == 0 else "CA certificate"
        candidates: list[tuple[str, int, bytes, datetime]] = []
        for index, der in enumerate(data.ocsp_responses):
            issued = _ocsp_issued(der, certificate, issuer)
            if issued is not None:
                candidates.append(("ocsp", index, der, issued))
        for index, der in enumerate(data.crls):
            try:
                crl = x509.load_der_x509_crl(der)
                named = crl.issuer == issuer.subject
            except ValueError:  # a name cryptography reads only now: a CRL of nobody here
                continue
            if named:
                candidates.append(("crl", index, der, crl.last_update_utc))
        for kind, index, der, issued in candidates:
            used.add((kind, index))
            check = check_ocsp_response if kind == "ocsp" else check_crl
            try:
                status = check(der, certificate, issuer, now=max(signed, issued))
            except RevocationDataInvalid as exc:
                name = "OCSP response" if kind == "ocsp" else "CRL"
                raise run.fail(
                    "revocation",
                    SubIndication.TRY_LATER,
                    f"the embedded {name} for the {what} cannot be relied on: {exc}",
                ) from None
            statuses.setdefault(position, status)  # the first that names it counts
    ignored = len(data.ocsp_responses) + len(data.crls) - len(used)
    return Embedded(statuses, ignored)


def check_time_stamps(
    run: Run,
    parsed: ParsedJws,
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime,
    skew: timedelta,
) -> None:
    """(13) of `SealVerifier.validate`, run before (11) and (12), which use what it finds: the
    earliest `sigTst` token that proves the signature value existed (`run.proof`). A token that
    proves nothing is reported as such, and the signature is judged without it."""
    assert run.signing_time is not None
    notes = []
    for token in run.validation.time_stamps:
        proof = proof_of_existence(token, timestamp_input(parsed), anchors, now=now)
        if not proof.proved or proof.gen_time is None:
            notes.append(f"a time-stamp proves nothing: {proof.problem}")
            continue
        stamped = f"{proof.gen_time:%Y-%m-%dT%H:%M:%SZ}"
        if run.signing_time - proof.gen_time > skew:
            notes.append(f"a time-stamp of {stamped} precedes the claimed signing time: not used")
            continue
        notes.append(f"time-stamp of {stamped} by {proof.tsa} over the signature value")
        if run.proof is None or proof.gen_time < run.proof:
            run.proof, run.tsa = proof.gen_time, proof.tsa
    if run.proof is not None:
        notes.insert(0, f"proof of existence at {run.proof:%Y-%m-%dT%H:%M:%SZ}")
    run.ok("time-stamp", "; ".join(notes))


def revocation_outcome(run: Run, what: str, revoked_at: datetime, reason: str) -> None:
    """REVOKED, REVOKED_NO_POE, or a passing check, for a revocation at `revoked_at`; a proof of
    existence (`run.proof`) before the revocation keeps a signature made before it valid."""
    assert run.signing_time is not None
    when = f"{revoked_at:%Y-%m-%dT%H:%M:%SZ}"
    if run.signing_time >= revoked_at:
        raise run.fail(
            "revocation",
            SubIndication.REVOKED,
            f"{what} was revoked at {when} ({reason or 'no reason given'}), before the signing time",
        )
    if run.proof is not None and run.proof < revoked_at:
        run.ok(
            "revocation",
            f"{what} was revoked at {when} ({reason or 'no reason given'}), after the time-stamp of {run.proof:%Y-%m-%dT%H:%M:%SZ}",
        )
        return
    if reason not in BENIGN_REASONS:
        raise run.fail(
            "revocation",
            SubIndication.REVOKED_NO_POE,
            f"{what} was revoked at {when} ({reason or 'no reason given'}); the claimed earlier signing time cannot be proved",
        )
    run.ok("revocation", f"{what} was revoked at {when} for {reason}, after the signing time")


def _what(position: int, certificate: x509.Certificate) -> str:
    if position == 0:
        return "the signing certificate"
    return f"CA certificate {certificate.subject.rfc4514_string()}"


def check_revocation(
    run: Run,
    key: TrustedKey,
    facts: Facts,
    chain: Chain,
    trust: TrustSource,
    *,
    now: datetime,
    skew: timedelta,
    online: RevocationFetcher | None = None,
) -> None:
    """(11) of `SealVerifier.validate`, by the sources of the module docstring."""
    if key.state == "revoked":
        revocation_outcome(
            run,
            f"key {key.kid}",
            key.revoked_at or datetime.min.replace(tzinfo=UTC),
            key.revocation_reason,
        )
        return
    assert run.signing_time is not None
    embedded = Embedded({}, 0)
    if run.validation:
        embedded = embedded_statuses(run, run.validation, chain, run.signing_time)
    for position, status in sorted(embedded.statuses.items()):
        what = f"{_what(position, chain.certificates[position])} ({_describe(status)})"
        if status.status is CertStatus.REVOKED:
            assert status.revoked_at is not None
            revocation_outcome(run, what, status.revoked_at, status.reason)
            return
        if status.status is CertStatus.UNKNOWN:
            raise run.fail(
                "revocation", SubIndication.TRY_LATER, f"unknown to the responder: {what}"
            )
    notes = [
        f"{_what(p, chain.certificates[p])} good by the {_describe(s)} ({s.responder})"
        for p, s in sorted(embedded.statuses.items())
    ]
    if embedded.ignored:
        notes.append(f"{embedded.ignored} embedded item(s) about no certificate of the chain")
    crls = trust.crls(key.region)
    if 0 not in embedded.statuses:  # (3) the network, only for what the seal does not carry
        if online is not None:  # its answer may change from one validation to the next
            run.repeatable = False
        fetched, said = check_online(run, online, chain, crls)
        if fetched is not None and fetched.status is CertStatus.REVOKED:
            assert fetched.revoked_at is not None
            what = f"the signing certificate (by its {fetched.source.upper()})"
            revocation_outcome(run, what, fetched.revoked_at, fetched.reason)
            return
        if said:
            notes.insert(0, said.removesuffix("; "))
    state = f"key is {key.state} in the registry"
    if 0 in embedded.statuses:
        _region_crls_beside(run, facts, chain, crls, now=now, skew=skew)
        run.ok("revocation", f"{state}; " + "; ".join(notes))
        return
    if not crls:
        run.ok("revocation", "; ".join([f"{state}; region {key.region} publishes no CRL", *notes]))
        return
    revocation = facts.revocation
    if revocation is None:
        revocation = facts.revocation = revocation_of(chain, crls)
    if revocation.problem:
        raise run.fail("revocation", SubIndication.TRY_LATER, revocation.problem)
    if not _current(revocation, now, skew):
        raise run.fail(
            "revocation",
            SubIndication.TRY_LATER,
            f"the region {key.region} CRLs are not current (next update {revocation.fresh_until:%Y-%m-%dT%H:%M:%SZ}): a newer registry is needed",
        )
    try:  # the bounds of `_current`
        run.during(revocation.fresh_from - skew, revocation.fresh_until)
    except OverflowError:  # a CRL of year 1: not worth remembering
        run.repeatable = False
    if revocation.revoked is not None:
        revocation_outcome(run, *revocation.revoked)
        return
    run.ok("revocation", "; ".join([f"{state}; not on region {key.region}'s CRLs", *notes]))


def _current(revocation: Revocation, now: datetime, skew: timedelta) -> bool:
    return not (revocation.fresh_from - now > skew or now > revocation.fresh_until)


def _region_crls_beside(
    run: Run,
    facts: Facts,
    chain: Chain,
    crls: tuple[x509.CertificateRevocationList, ...],
    *,
    now: datetime,
    skew: timedelta,
) -> None:
    """With the leaf covered by embedded data, the region's CRLs are not required; but when
    they are current and list a certificate of the chain, that revocation still counts (a
    revocation is a fact that no earlier "good" undoes)."""
    if not crls:
        return
    revocation = facts.revocation
    if revocation is None:
        revocation = facts.revocation = revocation_of(chain, crls)
    if revocation.revoked is not None and _current(revocation, now, skew):
        revocation_outcome(run, *revocation.revoked)
