"""Validation of GB/T 38540 (v4) and GM/T 0031 (v1) seals and sealed signatures.

`GmVerifier` gives the same `ValidationReport` as `SealVerifier` gives for JWS seals. Unlike
it, every check that can be run is run and recorded, failing or not, and the report's
sub-indication is the first failure in `PRECEDENCE` (a malformed structure ends the run at
once, since nothing else can be read). Its message says both whether the signature was valid at
its signing time and whether it is valid now.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from signer._keys import x5t_s256_of_der
from signer._report import Check, Indication, SignatureKind, SubIndication, ValidationReport
from signer._ses_asn1 import SealView, SesFormatError, SignatureView, parse_seal, parse_signature
from signer._ses_cache import MAX_CACHED_DER_BYTES, read_certificate, remember, sm2_key
from signer._ses_poe import ses_time_stamp
from signer._ses_trust import (
    Anchoring,
    CertificateVerdict,
    anchor,
    path_time,
    revocation_of,
    revocation_verdict,
)
from signer._sm2 import SM2_WITH_SM3_OID, Sm2PublicKey
from signer._trust import TrustSource
from signer.errors import Sm2Refused, Sm2SignatureInvalid

__all__ = ["PRECEDENCE", "GmVerifier"]

S = SubIndication
PRECEDENCE: Final = (
    S.FORMAT_FAILURE,
    S.HASH_FAILURE,
    S.SIG_CRYPTO_FAILURE,
    S.REVOKED,
    S.EXPIRED,
    S.NOT_YET_VALID,
    S.NO_CERTIFICATE_CHAIN_FOUND,
    S.CHAIN_CONSTRAINTS_FAILURE,
    S.CRYPTO_CONSTRAINTS_FAILURE,
    S.REVOKED_NO_POE,
    S.OUT_OF_BOUNDS_NO_POE,
    S.SIGNED_DATA_NOT_FOUND,
    S.TRY_LATER,
)
_View = TypeVar("_View", SealView, SignatureView)

_NOW_CHECKS: Final = frozenset(
    {"validity now", "seal validity now"}
)  # the rest are about the signing time


class _Malformed(Exception):  # the structure cannot be read: the run ends
    pass


@dataclass(slots=True)
class _Run:
    """The checks of one validation, all recorded, and the failures among them."""

    checks: list[Check] = field(default_factory=list)
    failures: list[tuple[str, SubIndication, str]] = field(default_factory=list)

    def ok(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail))

    def fail(self, name: str, sub: SubIndication, message: str) -> None:
        self.checks.append(Check(name, False, f"{sub}: {message}"))
        self.failures.append((name, sub, message))

    def malformed(self, message: str) -> _Malformed:
        self.fail("format", S.FORMAT_FAILURE, message)
        return _Malformed(message)

    def worst(
        self, *, excluding: frozenset[str] = frozenset(), only: frozenset[str] | None = None
    ) -> tuple[SubIndication, str] | None:
        """The first failure by `PRECEDENCE` among the checks named (all by default)."""
        found = [
            (s, m)
            for n, s, m in self.failures
            if n not in excluding and (only is None or n in only)
        ]
        if not found:
            return None
        return min(found, key=lambda failure: PRECEDENCE.index(failure[0]))


@dataclass(slots=True)
class _Subject:
    """Who the report is about: the signer (or, for a seal alone, its maker)."""

    format: str = ""
    kid: str = ""
    subject: str = ""
    owner: str = ""
    owner_region: str = ""
    signing_time: datetime | None = None
    seal_name: str = ""
    es_id: str = ""
    seal_only: bool = False  # a seal validated by itself: its "signing time" is its creation
    proof: datetime | None = None  # a trusted timeStamp's genTime (proof of existence)


def _certificate(run: _Run, der: bytes, whose: str) -> x509.Certificate:
    certificate = read_certificate(der)
    if isinstance(certificate, str):
        raise run.malformed(f"{whose} certificate {certificate}")
    return certificate


def _stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def _sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def _sm2_verifies(certificate: x509.Certificate, signature: bytes, data: bytes) -> bool:
    key = sm2_key(certificate)
    if not isinstance(key, Sm2PublicKey):
        return False
    try:
        key.verify(signature, data)
    except Sm2SignatureInvalid:  # Sm2SignatureMalformed too
        return False
    return True


_Time = datetime | None
_THEN: Final = "validity at signing time"


class GmVerifier:
    """Validates GB/T 38540 / GM/T 0031 seals and sealed signatures against a `TrustSource`
    (the registry's regions), and `extra_anchors` for documents from outside the federation."""

    def __init__(
        self,
        trust: TrustSource | None,
        *,
        extra_anchors: Sequence[x509.Certificate] = (),
        extra_intermediates: Sequence[x509.Certificate] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tsa_anchors: Sequence[x509.Certificate] = (),  # as SealVerifier's
    ) -> None:
        self._trust = trust
        self._tsa_anchors = tuple(tsa_anchors)
        self._extra_anchors = tuple(extra_anchors)
        self._extra_intermediates = tuple(extra_intermediates)  # to build paths to them
        self._clock = clock
        self._parsed: dict[bytes, SealView | SignatureView] = {}  # by DER
        # For self._trust's version only: what a seal's checks recorded, and a path's check.
        self._seals: dict[SealView, tuple[_Run, Anchoring]] = {}
        self._paths: dict[tuple[str, bytes, datetime, str], tuple[_Run, Anchoring]] = {}

    def use(self, trust: TrustSource) -> None:
        """Validate against `trust` from now on (a newer registry version); what was
        remembered about seals and paths is dropped when the version differs."""
        if self._trust is None or trust.version != self._trust.version:
            self._seals, self._paths = {}, {}
        self._trust = trust

    # -- public ---------------------------------------------------------------------------------
    def check_signer(
        self, certificate: x509.Certificate, signed_at: _Time, *, validation_time: _Time = None
    ) -> CertificateVerdict:
        """A bare SM2 signer certificate's checks (9)-(13), as a seal's signer's (an OFD digital
        signature's, GB/T 35275); without `signed_at`, at the validation time, saying so."""
        run, now, whose = _Run(), validation_time or self._clock(), "the signer's certificate"
        at, when = (signed_at, "the claimed signing time") if signed_at else (now, "validation")
        self._check_validity(run, certificate, at, name=_THEN, whose=whose, when=when)
        anchoring = self._check_path(run, "signer chain", certificate, at, "")
        self._check_revocation(run, anchoring, at, None)
        self._check_now(run, certificate, None, now, whose)
        failures = tuple((sub, message) for _, sub, message in run.failures)
        owner = (anchoring.owner, anchoring.owner_region)
        return CertificateVerdict(tuple(run.checks), failures, *owner)

    def validate_signature(
        self, der: bytes, data: bytes | None, *, validation_time: datetime | None = None
    ) -> ValidationReport:
        """Validate a DER `SES_Signature` (v4 or v1) over `data`; never raises for bad input.

        (0) the structure parses as one version, the signer and maker certificates read
        (1)-(3) the seal: its maker's algorithm, signature over the seal, certificate (valid at
            the seal's creation, path, not revoked)
        (4) the signing time lies in the seal's validity window
        (5) the seal lists the signer's certificate (the certificate, or its digest)
        (6) the signature algorithm is SM2-with-SM3
        (7) the signature over the DER of TBS_Sign verifies with the signer's key
        (8) dataHash is SM3 of the data
        (9) the signer's certificate was valid at the signing time
        (10) its path builds to an anchor (registry, region, extra anchors)
        (11) not revoked (registry key state, CRLs) by the signing time
        (12) the time-stamp, if any, is over the signature value (proof of existence)
        (13) the signer's certificate is valid now, or a time-stamp proves the signature older
        """
        now = validation_time or self._clock()
        run, who = _Run(), _Subject()
        with contextlib.suppress(_Malformed):  # recorded as the format check
            self._signature_checks(run, who, der, data, now)
        ok = run.worst() is None
        return self._report(run, who, detached=data if ok else None)

    def validate_seal(
        self, der: bytes, *, validation_time: datetime | None = None
    ) -> ValidationReport:
        """Validate a DER `SESeal` (v4 or v1) by itself, as of now; never raises for bad input.

        (0) it parses; (1)-(3) its maker's algorithm, signature and certificate (validity, path,
        revocation) at the seal's creation; (4) now lies in the seal's validity window; (5) the
        maker's certificate is valid now.
        """
        now = validation_time or self._clock()
        run, who = _Run(), _Subject(seal_only=True)
        with contextlib.suppress(_Malformed):
            view = self._parse(run, der, parse_seal)
            maker = _certificate(run, view.maker_certificate, "the seal maker's")
            self._describe(who, view, maker, view.maker_certificate, view.created)
            anchoring = self._seal_checks(run, view, maker)
            who.owner, who.owner_region = anchoring.owner, anchoring.owner_region
            self._check_window(run, view, now, "seal validity now")
            self._check_now(run, maker, None, now, "the seal maker's certificate")
        return self._report(run, who, detached=None)

    # -- the signature's checks ----------------------------------------------------------------
    def _signature_checks(
        self, run: _Run, who: _Subject, der: bytes, data: bytes | None, now: datetime
    ) -> None:
        view = self._parse(run, der, parse_signature)  # (0)
        signer = _certificate(run, view.signer_certificate, "the signer's")
        maker = _certificate(run, view.seal.maker_certificate, "the seal maker's")
        self._describe(who, view.seal, signer, view.signer_certificate, view.signing_time)
        who.format = view.format
        if view.tbs_version != view.seal.version and view.version == 4:
            run.fail("format", S.FORMAT_FAILURE, f"TBS_Sign version {view.tbs_version} is not 4")
        self._seal_checks(run, view.seal, maker)  # (1)-(3)
        at = view.signing_time
        if at is None:
            run.fail("signing time", S.FORMAT_FAILURE, f"timeInfo {view.time_text!r} is not a time")
        else:
            self._check_window(run, view.seal, at, "seal validity at signing time")  # (4)
        self._check_listed(run, view.seal, view.signer_certificate)  # (5)
        if self._check_algorithm(run, "signature algorithm", view.algorithm, signer):  # (6)
            if _sm2_verifies(signer, view.signature, view.tbs):  # (7)
                run.ok("signature", "the SM2 signature over the DER of TBS_Sign verifies")
            else:
                run.fail(
                    "signature",
                    S.SIG_CRYPTO_FAILURE,
                    "the signature over TBS_Sign does not verify with the signer's key",
                )
        self._check_data(run, view, data)  # (8)
        if at is None:
            return
        self._check_validity(run, signer, at, name="validity at signing time",
                             whose="the signer's certificate", when="the claimed signing time")  # fmt: skip  # (9)
        anchoring = self._check_path(run, "signer chain", signer, at, view.seal.es_id)  # (10)
        who.owner, who.owner_region = anchoring.owner, anchoring.owner_region
        proof = who.proof = self._check_time_stamp(run, view)  # (12), before (11) uses it
        self._check_revocation(run, anchoring, at, proof)  # (11)
        self._check_now(run, signer, proof, now, "the signer's certificate")  # (13)

    def _parse(self, run: _Run, der: bytes, parse: Callable[[bytes], _View]) -> _View:
        known = self._parsed.get(der)
        if isinstance(known, SealView if parse is parse_seal else SignatureView):
            run.ok("format", known.format)
            return known  # type: ignore[return-value]
        try:
            view = parse(der)
        except SesFormatError as exc:
            raise run.malformed(str(exc)) from None
        run.ok("format", view.format)
        if len(der) <= MAX_CACHED_DER_BYTES:
            remember(self._parsed, bytes(der), view)
        return view

    @staticmethod
    def _describe(
        who: _Subject,
        seal: SealView,
        certificate: x509.Certificate,
        der: bytes,
        when: datetime | None,
    ) -> None:
        who.format = seal.format
        who.kid = x5t_s256_of_der(der)
        who.subject = certificate.subject.rfc4514_string()
        who.owner = seal.es_id
        who.signing_time = when
        who.seal_name, who.es_id = seal.name, seal.es_id

    def _seal_checks(self, run: _Run, seal: SealView, maker: x509.Certificate) -> Anchoring:
        """(1)-(3), recorded once per seal and trust version: they depend on nothing else."""
        known = self._seals.get(seal)
        if known is None:
            recorded = _Run()
            known = remember(self._seals, seal, (recorded, self._check_seal(recorded, seal, maker)))
        recorded, anchoring = known
        run.checks.extend(recorded.checks)
        run.failures.extend(recorded.failures)
        return anchoring

    def _check_seal(self, run: _Run, seal: SealView, maker: x509.Certificate) -> Anchoring:
        if self._check_algorithm(run, "seal algorithm", seal.algorithm, maker):  # (1)
            signed = next(
                (w for w, tbs in seal.to_be_signed if _sm2_verifies(maker, seal.signed_value, tbs)),
                None,
            )
            if signed is not None:  # (2)
                run.ok("seal signature", f"the seal maker's SM2 signature over {signed} verifies")
            else:
                run.fail(
                    "seal signature",
                    S.SIG_CRYPTO_FAILURE,
                    "the seal maker's signature on the seal does not verify",
                )
        self._check_validity(
            run,
            maker,
            seal.created,
            name="seal maker validity",
            whose="the seal maker's certificate",
            when="the seal's creation",
        )  # (3)
        anchoring = self._check_path(run, "seal maker chain", maker, seal.created, seal.es_id)
        self._check_revocation(run, anchoring, seal.created, None, name="seal maker revocation")
        return anchoring

    @staticmethod
    def _check_algorithm(run: _Run, name: str, oid: str, certificate: x509.Certificate) -> bool:
        if oid != SM2_WITH_SM3_OID:
            run.fail(name, S.CRYPTO_CONSTRAINTS_FAILURE, f"algorithm {oid} is not SM2-with-SM3")
            return False
        key = sm2_key(certificate)
        if key is None:
            run.fail(
                name,
                S.CRYPTO_CONSTRAINTS_FAILURE,
                "SM2-with-SM3, but the certificate's key is not an SM2 key",
            )
            return False
        if isinstance(key, Sm2Refused):
            run.fail(
                name, S.FORMAT_FAILURE, "the certificate's SM2 key is not a point on the curve"
            )
            return False
        run.ok(name, f"SM2-with-SM3 ({oid})")
        return True

    @staticmethod
    def _check_window(run: _Run, seal: SealView, at: datetime, name: str) -> None:
        window = (
            f"the seal's validity window {_stamp(seal.valid_start)} to {_stamp(seal.valid_end)}"
        )
        if at > seal.valid_end:
            run.fail(
                name, S.EXPIRED, f"{_stamp(at)} is after the end of {window}: the seal had expired"
            )
        elif at < seal.valid_start:
            run.fail(name, S.NOT_YET_VALID, f"{_stamp(at)} is before the start of {window}")
        else:
            run.ok(name, f"{_stamp(at)} lies in {window}")

    @staticmethod
    def _check_listed(run: _Run, seal: SealView, der: bytes) -> None:
        name = "signer listed in seal"
        if seal.cert_list_type == 1:
            if der in seal.certificates:
                run.ok(
                    name, f"the signer's certificate is one of the seal's {len(seal.certificates)}"
                )
            else:
                run.fail(
                    name,
                    S.CHAIN_CONSTRAINTS_FAILURE,
                    "the seal does not list the signer's certificate",
                )
            return
        known = {"sm3": hashes.SM3(), "sha256": hashes.SHA256()}  # SHA-1 is not compared
        for hash_name, value in seal.digests:
            algorithm = known.get(hash_name.lower().replace("-", ""))
            if algorithm is None:
                continue
            digest = hashes.Hash(algorithm)
            digest.update(der)
            if digest.finalize() == value:
                run.ok(name, f"the seal lists the {hash_name} digest of the signer's certificate")
                return
        unknown = sorted({n for n, _ in seal.digests if n.lower().replace("-", "") not in known})
        extra = f"; digests by unknown hashes not compared: {', '.join(unknown)}" if unknown else ""
        run.fail(
            name,
            S.CHAIN_CONSTRAINTS_FAILURE,
            f"no digest in the seal's list matches the signer's certificate{extra}",
        )

    @staticmethod
    def _check_data(run: _Run, view: SignatureView, data: bytes | None) -> None:
        if data is None:
            run.fail("data hash", S.SIGNED_DATA_NOT_FOUND, "the signed data was not supplied")
        elif _sm3(data) == view.data_hash:
            run.ok("data hash", f"dataHash is SM3 of the {len(data)} bytes of data")
        else:
            run.fail(
                "data hash", S.HASH_FAILURE, "dataHash is not SM3 of the data: the data changed"
            )

    @staticmethod
    def _check_validity(
        run: _Run, certificate: x509.Certificate, at: datetime, *, name: str, whose: str, when: str
    ) -> None:
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        window = f"{whose} (valid {_stamp(start)} to {_stamp(end)})"
        if at > end:
            run.fail(name, S.EXPIRED, f"{window} had expired at {when} {_stamp(at)}")
        elif at < start:
            run.fail(name, S.NOT_YET_VALID, f"{window} was not yet valid at {when} {_stamp(at)}")
        else:
            run.ok(name, f"{window} was valid at {when} {_stamp(at)}")

    def _check_path(
        self, run: _Run, name: str, certificate: x509.Certificate, at: datetime, owner: str
    ) -> Anchoring:
        """The path check, recorded once per (certificate, time, owner) and trust version."""
        key = (name, certificate.public_bytes(serialization.Encoding.DER), at, owner)
        known = self._paths.get(key)
        if known is None:
            recorded = _Run()
            anchoring = self._check_path_afresh(recorded, name, certificate, at, owner)
            known = remember(self._paths, key, (recorded, anchoring))
        recorded, anchoring = known
        run.checks.extend(recorded.checks)
        run.failures.extend(recorded.failures)
        return anchoring

    def _check_path_afresh(
        self, run: _Run, name: str, certificate: x509.Certificate, at: datetime, owner: str
    ) -> Anchoring:
        when, note = path_time(certificate, at)
        anchoring = anchor(
            certificate,
            trust=self._trust,
            extra_anchors=self._extra_anchors,
            extra_intermediates=self._extra_intermediates,
            at=when,
            default_owner=owner,
        )
        failure = anchoring.failure
        if failure is None:
            assert anchoring.path is not None
            run.ok(name, f"path of {len(anchoring.path.certificates)} to {anchoring.where}{note}")
        else:
            where = f" ({anchoring.where})" if anchoring.where else ""
            run.fail(name, failure.sub, f"{failure.message}{where}{note}")
        return anchoring

    @staticmethod
    def _check_revocation(
        run: _Run,
        anchoring: Anchoring,
        at: datetime,
        proof: datetime | None,
        *,
        name: str = "revocation",
    ) -> None:
        """Revoked by `at` (the signing time; a seal's creation) per the registry and the CRLs."""
        revoked = revocation_of(anchoring)
        if revoked is None:
            if anchoring.path is not None:  # else no CRL was read: the path's failure says why
                state = f"key is {anchoring.key.state} in the registry; " if anchoring.key else ""
                run.ok(name, f"{state}{anchoring.path.revocation_checked}")
            return
        sub, message = revocation_verdict(*revoked, signed_at=at, proof=proof)
        if sub is None:
            run.ok(name, message)
        else:
            run.fail(name, sub, message)

    def _check_time_stamp(self, run: _Run, view: SignatureView) -> datetime | None:
        """The time-stamp's genTime when it proves existence (`signer._ses_poe`), else None."""
        if view.time_stamp is None:
            return None
        proof, sub, detail = ses_time_stamp(
            view.time_stamp, view.signature, trust=self._trust, extra_anchors=self._extra_anchors,
            extra_intermediates=self._extra_intermediates, tsa_anchors=self._tsa_anchors,
        )  # fmt: skip
        if sub is None:
            run.ok("time-stamp", detail)
        else:
            run.fail("time-stamp", sub, detail)
        return proof

    @staticmethod
    def _check_now(
        run: _Run, certificate: x509.Certificate, proof: datetime | None, now: datetime, whose: str
    ) -> None:
        end = certificate.not_valid_after_utc
        if now <= end:
            run.ok("validity now", f"{whose} is valid until {_stamp(end)}")
        elif proof is not None and proof <= end:
            run.ok(
                "validity now",
                f"{whose} expired at {_stamp(end)}; a time-stamp proves existence at {_stamp(proof)}",
            )
        else:
            run.fail(
                "validity now",
                S.OUT_OF_BOUNDS_NO_POE,
                f"{whose} expired at {_stamp(end)}; without a time-stamp the signing time cannot be proved",
            )

    # -- the report ----------------------------------------------------------------------------
    def _report(self, run: _Run, who: _Subject, *, detached: bytes | None) -> ValidationReport:
        worst = run.worst()
        return ValidationReport(
            indication=worst[0].indication if worst else Indication.TOTAL_PASSED,
            sub_indication=worst[0] if worst else None,
            message=_message(run, who),
            checks=tuple(run.checks),
            registry_version=self._trust.version if self._trust is not None else 0,
            algorithm="SM2" if who.kid else "",
            signer_kid=who.kid,
            signer_subject=who.subject,
            owner=who.owner,
            owner_region=who.owner_region,
            kind=SignatureKind.SEAL if who.kid else None,
            signing_time=who.signing_time,
            detached_payload=detached,
            format=who.format or "GB/T 38540",
            proof_of_existence=who.proof,
        )


def _message(run: _Run, who: _Subject) -> str:
    """One sentence: valid at signing time (for a seal alone: when made)? valid now? Truthfully,
    with the first reason for each "no"."""
    if not who.kid:
        worst = run.worst()
        return (
            f"not a readable GB/T 38540 or GM/T 0031 structure: {worst[1] if worst else 'unknown'}"
        )
    when = _stamp(who.signing_time) if who.signing_time else "an unreadable time"
    if who.seal_only:
        what = f"{who.format} \u201c{who.seal_name}\u201d ({who.es_id}) made at {when}"
        moment = "when made"
    else:
        what = f"{who.format} with seal \u201c{who.seal_name}\u201d ({who.es_id}) made at {when}"
        moment = "at signing time"
    then = run.worst(excluding=_NOW_CHECKS)
    if then is None:
        at_signing = f"valid {moment}"
    elif then[0].indication is Indication.TOTAL_FAILED:
        at_signing = f"not valid {moment} ({then[1]})"
    else:
        at_signing = f"not shown valid {moment} ({then[1]})"
    now = run.worst(only=_NOW_CHECKS)
    if then is None and now is None:
        return f"{what}: {at_signing} and valid now"
    failed = any(f[0].indication is Indication.TOTAL_FAILED for f in (then, now) if f)
    shown = "not" if failed else "not shown"
    if now is None:
        return f"{what}: {at_signing}, so {shown} valid now"
    joint = "but" if then is None else "and"
    return f"{what}: {at_signing}, {joint} {shown} valid now ({now[1]})"
