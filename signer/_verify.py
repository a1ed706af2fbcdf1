"""Verifying e-seals and e-signatures: a non-raising `validate()` and a raising `verify()`.

The key that proves a signature is the one the trust source (the registry) publishes for the
header's `x5t#S256`, never a key or chain carried only in the header. The chain is built with
`cryptography.x509.verification` against the anchors of the key's own region, at the claimed
signing time; revocation comes from the registry's key states and the region's CRLs, checked
after path validation (pyca has no revocation step). Verified chains are cached per key and
registry version, so a repeated verification costs one signature check; a compact seal whose
header passed before is repeated without parsing (`signer._verify_fast`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509

from signer._algorithms import ALLOWED_ALGORITHMS, check_key_fits, verify_fitted
from signer._jades import SIGD_HASH_MECHANISM, JwsFormatError, ParsedJws, b64url_decode
from signer._jades_json import is_json_serialisation, parse_jws
from signer._keyfile import PublicKey
from signer._keys import x5t_s256_of_der
from signer._report import Indication, SignatureKind, SubIndication, ValidationReport
from signer._revocation_fetch import RevocationFetcher
from signer._timestamps import TimeStampClient
from signer._trust import TrustedKey, TrustSource
from signer._verify_fast import Verdicts
from signer._verify_helpers import (
    EARLIEST,
    LATEST,
    Chain,
    Facts,
    Fail,
    Request,
    Run,
    check_crit,
    facts_of,
    verified_chain,
)
from signer._verify_revocation import check_revocation, check_time_stamps
from signer.errors import SealInvalid, UnsupportedAlgorithm

__all__ = ["CLOCK_SKEW", "SealVerifier"]

CLOCK_SKEW: Final = timedelta(minutes=5)  # a signing time this far ahead is still accepted
MAX_CACHED_KEYS: Final = 4096  # x5c thumbprints remembered before the cache is cleared
# Only a certificate of a plausible size is remembered (one is 1-3 KB in base64): 4096
# certificates of the megabytes a JWS may carry would hold gigabytes.
MAX_CACHED_CERTIFICATE_CHARS: Final = 16 * 1024


class SealVerifier:
    """Validates JAdES seals and signatures against one trust source (a registry version)."""

    def __init__(
        self,
        trust: TrustSource,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        revocation: RevocationFetcher | None = None,
        tsa_anchors: Sequence[x509.Certificate] = (),
        stamper: TimeStampClient | None = None,
    ) -> None:
        self._trust = trust
        # The anchors a time-stamp's TSA must chain to for its genTime to prove existence
        # (`[timestamp] tsa_certificates`); and the TSA client sealers share (`stamper`).
        self._tsa_anchors = tuple(tsa_anchors)
        self._stamper = stamper
        self._clock = clock
        # Asks the OCSP responders and CRL URLs a signing certificate names (blocking, bounded
        # by its timeout, cached to nextUpdate); None: the registry's states and CRLs only.
        self._online = revocation
        self._facts: dict[str, Facts] = {}  # by kid, for self._trust.version only
        self._x5c_thumbprints: dict[str, str] = {}  # x5c[0] text -> its thumbprint
        self._verdicts = Verdicts()  # passing validations of compact seals, by header

    @property
    def trust(self) -> TrustSource:
        return self._trust

    @property
    def revocation(self) -> RevocationFetcher | None:
        """The fetcher of online revocation status, if any (shared with the TLS caller check)."""
        return self._online

    @property
    def stamper(self) -> TimeStampClient | None:
        """The client of the configured time-stamping authority, if any (for sealers)."""
        return self._stamper

    def use(self, trust: TrustSource) -> None:
        """Switch to a newer trust source (a registry swap); cached chains are dropped."""
        if trust.version != self._trust.version:
            self._facts = {}
        if trust is not self._trust:
            self._verdicts.clear()
        self._trust = trust

    def verify(
        self,
        jws: str | bytes,
        *,
        detached_payload: bytes | None = None,
        expected_kind: SignatureKind | None = None,
        expected_owner_region: str | None = None,
        validation_time: datetime | None = None,
    ) -> ValidationReport:
        """The report if the signature is TOTAL_PASSED; otherwise raise `SealInvalid(report)`."""
        report = self.validate(
            jws,
            detached_payload=detached_payload,
            expected_kind=expected_kind,
            expected_owner_region=expected_owner_region,
            validation_time=validation_time,
        )
        if not report.passed:
            raise SealInvalid(report)
        return report

    def validate(
        self,
        jws: str | bytes,
        *,
        detached_payload: bytes | None = None,
        expected_kind: SignatureKind | None = None,
        expected_owner_region: str | None = None,
        validation_time: datetime | None = None,
    ) -> ValidationReport:
        """Validate and report; never raises for a bad signature.

        (0) the JWS parses: compact or flattened JSON serialisation, base64url, one JSON object
            without duplicate names, and the validation data of etsiU if any
        (1) the header follows the profile: crit, x5t#S256, iat, sigD
        (2) the algorithm is allowed
        (3) the signing key is one the registry publishes; x5c, if present, agrees with it
        (4) the algorithm fits the key
        (5) the signed data is there (attached, or supplied for a detached signature)
        (6) the signature verifies with the registry's key
        (7) a detached payload matches the digest that was signed (sigD)
        (8) the certificate was valid at the signing time
        (9) the chain builds to the key's region anchors, with seal/signature constraints
        (10) kind and region are what the registry and the caller expect
        (11) not revoked (registry key state, embedded OCSP responses and CRLs, region CRLs)
             as of the signing time (`signer._verify_revocation`), or revoked only after a
             proof of existence (13)
        (12) the certificate is still within its validity now, or was at the proof of existence
        (13) the time-stamps (etsiU sigTst) over the signature value whose TSA chains to a
             configured TSA anchor: the earliest genTime is the proof of existence; run before
             (11) and (12), which use it
        """
        trust = self._trust
        now = validation_time or self._clock()
        repeated = self._verdicts.repeat(
            jws,
            detached_payload,
            now,
            trust,
            expected_kind=expected_kind,
            expected_region=expected_owner_region,
        )
        if repeated is not None:
            return repeated
        # The checks are recorded only when they are needed: a passing validation reuses the
        # checks recorded the first time this key passed in this form; a failing one is run
        # again, recording, so that its report lists every check up to the failure.
        # A JSON-serialised seal's checks are its own (its evidence): recorded in the one run.
        run = Run(record=is_json_serialisation(jws))
        request = Request(jws, detached_payload, expected_kind, expected_owner_region, now, trust)
        outcome = self._execute(run, request)
        if outcome is not None or run.facts is None:
            recorded = run if run.record else Run(record=True)
            failure = outcome if run.record else self._execute(recorded, request)
            assert failure is not None
            return self._report(recorded, trust, failure.sub, failure.message)
        form = (run.algorithm, detached_payload is not None, run.sig_d)
        checks = tuple(run.checks) if run.embedded else run.facts.passing_checks.get(form)
        if checks is None:
            recorded = Run(record=True)
            self._execute(recorded, request)
            checks = run.facts.passing_checks[form] = tuple(recorded.checks)
        run.checks = list(checks)
        key = run.key
        assert key is not None
        when = f"{run.signing_time:%Y-%m-%d %H:%M:%SZ}" if run.signing_time else "an unknown time"
        proved = (
            f", existing at {run.proof:%Y-%m-%d %H:%M:%SZ} by a time-stamp," if run.proof else ""
        )
        message = f"e-{run.kind or 'signature'} by {key.owner_name or key.owner} ({key.region}) made at {when}{proved} is valid"
        report = self._report(run, trust, None, message)
        if run.repeatable and not run.embedded:
            self._verdicts.remember(run, request, report)
        return report

    def _execute(self, run: Run, request: Request) -> Fail | None:
        """Run the checks of `validate`; the failure, or None when every check passed."""
        jws, detached_payload, now, trust = (
            request.jws,
            request.detached_payload,
            request.now,
            request.trust,
        )
        try:
            parsed = self._parse(run, jws)  # (0)
            run.header_b64 = parsed.header_b64
            if run.validation:  # what the seal embeds is judged afresh each time
                run.repeatable = False
            self._check_header(run, parsed, now)  # (1)
            self._check_algorithm(run, parsed)  # (2)
            key = self._identify_key(run, parsed, trust)  # (3)
            facts = self._facts.get(key.kid)
            if facts is None:
                facts = self._facts[key.kid] = facts_of(key)
            run.subject = facts.subject
            public_key = self._check_key_fits(run, facts)  # (4)
            self._check_signed_data(run, parsed, detached_payload)  # (5)
            self._check_signature(run, parsed, public_key, detached_payload)  # (6)
            self._check_digest(run, parsed, detached_payload)  # (7)
            self._check_validity_at_signing(run, facts)  # (8)
            chain = self._check_chain(run, key, facts, trust)  # (9)
            self._check_kind_and_region(
                run, key, facts, request.expected_kind, request.expected_region
            )  # (10)
            if run.validation.time_stamps:  # (13), before (11) and (12) use it
                check_time_stamps(run, parsed, self._tsa_anchors, now=now, skew=CLOCK_SKEW)
            self._check_revocation(run, key, facts, chain, trust, now=now)  # (11)
            self._check_validity_now(run, facts, now)  # (12)
        except Fail as failure:
            return failure
        run.facts = facts
        run.payload_b64 = parsed.payload_b64
        run.detached_payload = detached_payload
        return None

    # -- steps --------------------------------------------------------------------------------
    @staticmethod
    def _parse(run: Run, jws: str | bytes) -> ParsedJws:
        try:
            parsed, run.validation = parse_jws(jws)
        except JwsFormatError as exc:
            raise run.fail(
                "format", SubIndication.FORMAT_FAILURE, f"not a valid JWS: {exc}"
            ) from None
        data = run.validation
        form = "compact JWS"
        if is_json_serialisation(jws):
            form = "JWS JSON serialisation"
            run.embedded = True  # its checks are its own, not a compact seal's cached ones
        embedded = (
            f", embedding {len(data.time_stamps)} time-stamp(s), "
            f"{len(data.ocsp_responses)} OCSP response(s), {len(data.crls)} CRL(s), "
            f"{len(data.certificates)} certificate(s) (etsiU)"
            if data
            else ""
        )
        run.ok("format", f"{form}, protected header is a JSON object{embedded}")
        return parsed

    @staticmethod
    def _check_header(run: Run, parsed: ParsedJws, now: datetime) -> None:
        header = parsed.header
        crit = header.get("crit")
        if crit is not None:
            check_crit(run, header, crit)
        if "sigD" in header and "sigD" not in (crit or []):
            raise run.fail(
                "header", SubIndication.FORMAT_FAILURE, "sigD is used but not listed in crit"
            )
        if "sigD" in header and not parsed.detached:
            raise run.fail(
                "header",
                SubIndication.FORMAT_FAILURE,
                "sigD is for a detached payload, but the payload is attached",
            )
        if "b64" in header:
            raise run.fail(
                "header", SubIndication.FORMAT_FAILURE, "b64 is not part of the Tongban profile"
            )
        identifiers = [name for name in ("x5t#S256", "x5t#o", "sigX5ts") if name in header]
        if identifiers != ["x5t#S256"]:
            raise run.fail(
                "header",
                SubIndication.FORMAT_FAILURE,
                "the header must identify the signer by exactly one x5t#S256",
            )
        if not isinstance(header["x5t#S256"], str):
            raise run.fail("header", SubIndication.FORMAT_FAILURE, "x5t#S256 must be a string")
        if "sigT" in header:
            raise run.fail(
                "header",
                SubIndication.FORMAT_FAILURE,
                "sigT is not used for signatures made since 2025-07-15: use iat",
            )
        iat = header.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise run.fail(
                "header",
                SubIndication.FORMAT_FAILURE,
                "iat (the signing time) is missing or not a number",
            )
        try:
            run.signing_time = datetime.fromtimestamp(iat, UTC)
        except (OverflowError, OSError, ValueError):
            raise run.fail("header", SubIndication.FORMAT_FAILURE, "iat is out of range") from None
        if run.signing_time - now > CLOCK_SKEW:  # not `now + CLOCK_SKEW`: may overflow
            raise run.fail(
                "header",
                SubIndication.FORMAT_FAILURE,
                f"the signing time {run.signing_time:%Y-%m-%dT%H:%M:%SZ} is in the future",
            )
        try:
            run.during(run.signing_time - CLOCK_SKEW, LATEST)
        except OverflowError:  # a signing time in year 1: not worth remembering
            run.repeatable = False
        run.sig_d = "sigD" in header
        cty = header.get("cty", "")
        run.content_type = cty if isinstance(cty, str) else ""
        run.ok(
            "header",
            "JAdES baseline-B profile: x5t#S256, iat" + (", sigD" if "sigD" in header else ""),
        )

    @staticmethod
    def _check_algorithm(run: Run, parsed: ParsedJws) -> None:
        alg = parsed.header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise run.fail(
                "algorithm",
                SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
                f"algorithm {alg!r} is not allowed (allowed: {', '.join(ALLOWED_ALGORITHMS)})",
            )
        run.algorithm = alg
        run.ok("algorithm", alg)

    def _identify_key(self, run: Run, parsed: ParsedJws, trust: TrustSource) -> TrustedKey:
        kid = parsed.header["x5t#S256"]
        run.kid = kid
        key = trust.key(kid)
        if key is None:
            raise run.fail(
                "signing key",
                SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
                f"key {kid} is not published in registry version {trust.version}",
            )
        run.key = key
        x5c = parsed.header.get("x5c")
        if x5c is not None:
            if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
                raise run.fail(
                    "signing key",
                    SubIndication.FORMAT_FAILURE,
                    "x5c must be a non-empty list of base64 certificates",
                )
            thumbprint = self._x5c_thumbprints.get(x5c[0])
            if thumbprint is None:
                try:
                    thumbprint = x5t_s256_of_der(base64.b64decode(x5c[0], validate=True))
                except ValueError:
                    raise run.fail(
                        "signing key", SubIndication.FORMAT_FAILURE, "x5c[0] is not base64"
                    ) from None
                if len(x5c[0]) <= MAX_CACHED_CERTIFICATE_CHARS:
                    if len(self._x5c_thumbprints) >= MAX_CACHED_KEYS:
                        self._x5c_thumbprints.clear()
                    self._x5c_thumbprints[x5c[0]] = thumbprint
            if thumbprint != kid:
                raise run.fail(
                    "signing key",
                    SubIndication.FORMAT_FAILURE,
                    "x5t#S256 does not match the certificate in x5c",
                )
        run.ok(
            "signing key",
            f"{kid} of {key.owner} ({key.usage}, {key.state}) from registry version {trust.version}",
        )
        return key

    @staticmethod
    def _check_key_fits(run: Run, facts: Facts) -> PublicKey:
        public = facts.public_key
        if public is not None and run.algorithm in facts.fitting:
            run.ok("key and algorithm", facts.fitting[run.algorithm])
            return public
        if public is None:
            raise run.fail(
                "key and algorithm",
                SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
                "the certificate's key is not a Tongban signing key type",
            )
        try:
            check_key_fits(run.algorithm, public)
        except UnsupportedAlgorithm as exc:
            raise run.fail(
                "key and algorithm", SubIndication.CRYPTO_CONSTRAINTS_FAILURE, str(exc)
            ) from None
        facts.fitting[run.algorithm] = f"{run.algorithm} fits the certificate's key"
        run.ok("key and algorithm", facts.fitting[run.algorithm])
        return public

    @staticmethod
    def _check_signed_data(run: Run, parsed: ParsedJws, detached_payload: bytes | None) -> None:
        if not parsed.detached:
            if detached_payload is not None:
                raise run.fail(
                    "signed data",
                    SubIndication.FORMAT_FAILURE,
                    "a payload was supplied but the signature is attached",
                )
            run.ok("signed data", "attached")
            return
        if detached_payload is None:
            raise run.fail(
                "signed data",
                SubIndication.SIGNED_DATA_NOT_FOUND,
                "the signature is detached and no payload was supplied",
            )
        run.ok("signed data", "detached, supplied by the caller")

    @staticmethod
    def _check_signature(
        run: Run, parsed: ParsedJws, public: PublicKey, detached_payload: bytes | None
    ) -> None:
        if not verify_fitted(
            run.algorithm, public, parsed.signing_input(detached_payload), parsed.signature
        ):
            raise run.fail(
                "signature",
                SubIndication.SIG_CRYPTO_FAILURE,
                "the signature does not verify with the registry's key (the data or header was changed, or another key signed)",
            )
        run.ok("signature", "verifies with the registry's certificate")

    @staticmethod
    def _check_digest(run: Run, parsed: ParsedJws, payload: bytes | None) -> None:
        sig_d = parsed.header.get("sigD")
        if sig_d is None or payload is None:
            return
        if (
            not isinstance(sig_d, dict)
            or sig_d.get("mId") != SIGD_HASH_MECHANISM
            or sig_d.get("hashM") != "S256"
            or not isinstance(sig_d.get("hashV"), list)
            or len(sig_d["hashV"]) != 1
            or not isinstance(sig_d["hashV"][0], str)
        ):
            raise run.fail(
                "data digest",
                SubIndication.FORMAT_FAILURE,
                "sigD must name one S256 digest (ObjectIdByURIHash)",
            )
        try:
            signed_digest = b64url_decode(sig_d["hashV"][0])
        except JwsFormatError:
            raise run.fail(
                "data digest", SubIndication.FORMAT_FAILURE, "sigD hashV is not base64url"
            ) from None
        if hashlib.sha256(payload).digest() != signed_digest:
            raise run.fail(
                "data digest",
                SubIndication.HASH_FAILURE,
                "the supplied payload is not the one that was signed (SHA-256 differs)",
            )
        run.ok("data digest", "SHA-256 of the payload matches sigD")

    @staticmethod
    def _check_validity_at_signing(run: Run, facts: Facts) -> None:
        assert run.signing_time is not None
        if run.signing_time < facts.not_before:
            raise run.fail(
                "validity at signing time",
                SubIndication.NOT_YET_VALID,
                f"the certificate was not yet valid at the signing time (valid from {facts.not_before:%Y-%m-%dT%H:%M:%SZ})",
            )
        if run.signing_time > facts.not_after:
            raise run.fail(
                "validity at signing time",
                SubIndication.EXPIRED,
                f"the certificate had expired at the signing time (valid until {facts.not_after:%Y-%m-%dT%H:%M:%SZ})",
            )
        run.ok("validity at signing time", facts.validity)

    @staticmethod
    def _check_chain(run: Run, key: TrustedKey, facts: Facts, trust: TrustSource) -> Chain:
        assert run.signing_time is not None
        chain = facts.chain
        if chain is None or not chain.valid_from <= run.signing_time <= chain.valid_until:
            roots, intermediates = trust.anchors(key.region)
            if not roots:
                raise run.fail(
                    "certificate chain",
                    SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
                    f"region {key.region} has no trust anchor in registry version {trust.version}",
                )
            try:
                chain = verified_chain(
                    key.certificate, roots, intermediates, run.signing_time, key.region
                )
            except Fail as failure:
                raise run.fail("certificate chain", failure.sub, failure.message) from None
            facts.chain = chain
        run.ok(
            "certificate chain",
            f"{len(chain.certificates)} certificates to region {key.region}'s root, at the signing time",
        )
        return chain

    @staticmethod
    def _check_kind_and_region(
        run: Run,
        key: TrustedKey,
        facts: Facts,
        expected_kind: SignatureKind | None,
        expected_region: str | None,
    ) -> None:
        kind = facts.kind
        if kind is None:
            raise run.fail(
                "kind",
                SubIndication.CHAIN_CONSTRAINTS_FAILURE,
                "the certificate is neither a seal (legal person) nor a signature (natural person) certificate",
            )
        run.kind = kind
        if key.usage != kind.value:
            raise run.fail(
                "kind",
                SubIndication.CHAIN_CONSTRAINTS_FAILURE,
                f"the registry publishes this key for {key.usage!r} but its certificate is a {kind.value} certificate",
            )
        if expected_kind is not None and kind is not expected_kind:
            raise run.fail(
                "kind",
                SubIndication.CHAIN_CONSTRAINTS_FAILURE,
                f"an e-{expected_kind.value} was required, but this is an e-{kind.value}",
            )
        if expected_region is not None and key.region != expected_region:
            raise run.fail(
                "kind",
                SubIndication.CHAIN_CONSTRAINTS_FAILURE,
                f"made by a key of region {key.region}, not of region {expected_region}",
            )
        run.ok("kind", f"e-{kind.value} of {key.owner} ({key.region})")

    def _check_revocation(
        self,
        run: Run,
        key: TrustedKey,
        facts: Facts,
        chain: Chain,
        trust: TrustSource,
        *,
        now: datetime,
    ) -> None:
        check_revocation(
            run, key, facts, chain, trust, now=now, skew=CLOCK_SKEW, online=self._online
        )

    @staticmethod
    def _check_validity_now(run: Run, facts: Facts, now: datetime) -> None:
        if now > facts.not_after and run.proof is not None and run.proof <= facts.not_after:
            run.ok(
                "validity now",
                f"the certificate expired at {facts.not_after:%Y-%m-%dT%H:%M:%SZ}, after the time-stamp of {run.proof:%Y-%m-%dT%H:%M:%SZ}",
            )
            return
        if now > facts.not_after:
            raise run.fail(
                "validity now",
                SubIndication.OUT_OF_BOUNDS_NO_POE,
                f"the certificate expired at {facts.not_after:%Y-%m-%dT%H:%M:%SZ}; without a time-stamp the signing time cannot be proved",
            )
        run.during(EARLIEST, facts.not_after)
        run.ok("validity now", "certificate still valid")

    @staticmethod
    def _report(
        run: Run, trust: TrustSource, sub: SubIndication | None, message: str
    ) -> ValidationReport:
        key = run.key
        return ValidationReport(
            indication=sub.indication if sub else Indication.TOTAL_PASSED,
            sub_indication=sub,
            message=message,
            checks=tuple(run.checks),
            registry_version=trust.version,
            algorithm=run.algorithm,
            signer_kid=run.kid,
            signer_subject=run.subject,
            owner=key.owner if key else "",
            owner_region=key.region if key else "",
            kind=run.kind,
            signing_time=run.signing_time,
            content_type=run.content_type,
            signed_payload_b64=run.payload_b64 if sub is None else "",
            detached_payload=run.detached_payload if sub is None else None,
            proof_of_existence=run.proof,
            time_stamp_authority=run.tsa,
        )
