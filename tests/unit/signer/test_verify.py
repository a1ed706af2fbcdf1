"""SealVerifier against a real dev federation: one table of failures, every sub-indication the
verifier can give, the passing report, the caches, and a key rotation end to end.

Times (UTC): the federation is made at T0; some keys are revoked at REVOKED_AT; the registry is
published at PUBLISHED; seals are made at SIGNED and checked at NOW unless a case says otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from support import Federation, make_federation

from registry import (
    KeyRecord,
    KeyState,
    KeyUsage,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    load_trusted_root,
    rotate_key,
)
from registry._pki import IssuedKey, issue_key
from signer import (
    FileKeyProvider,
    Indication,
    SealInvalid,
    SealVerifier,
    SignatureKind,
    SubIndication,
    TrustedKey,
    TrustSource,
    ValidationReport,
    generate_private_key,
    load_private_key,
    seal,
    sign_bytes,
)

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
REVOKED_AT = T0 + timedelta(hours=1)
PUBLISHED = T0 + timedelta(hours=2)
SIGNED = T0 + timedelta(hours=2, minutes=30)
NOW = T0 + timedelta(hours=3)
BEFORE_REVOCATION = T0 + timedelta(minutes=30)
# publish() reissues each CRL with next update = snapshot lifetime (7 days) + 1 day.
CRL_NEXT_UPDATE = PUBLISHED + timedelta(days=8)

PAYLOAD = json.dumps(
    {"姓名": "张三", "参保状态": "正常参保", "缴费月数": 96}, ensure_ascii=False
).encode()
OTHER_PAYLOAD = PAYLOAD.replace(b"96", b"12")

# Every check of a passing validation, in order ("data digest" only for a detached sigD seal).
ORDER = (
    "format",
    "header",
    "algorithm",
    "signing key",
    "key and algorithm",
    "signed data",
    "signature",
    "data digest",
    "validity at signing time",
    "certificate chain",
    "kind",
    "revocation",
    "validity now",
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def published_registry(fed: Federation) -> Registry:
    """The current published registry, read back and verified as a gateway would."""
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / "authority" / "root.json"))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


def provider_of(fed: Federation, kid: str) -> FileKeyProvider:
    record = fed.inventory().get(kid)
    return FileKeyProvider(fed.pki / record.private_key, fed.pki / record.certificate)


def add_key(fed: Federation, key: IssuedKey, state: KeyState = KeyState.PENDING) -> None:
    inventory = fed.inventory()
    inventory.add(KeyRecord.from_issued(fed.pki, key, state, T0))
    inventory.save()


class CrlOnly:
    """The registry with every key reported active: a revocation can only come from the CRLs."""

    def __init__(self, trust: TrustSource) -> None:
        self._trust = trust

    @property
    def version(self) -> int:
        return self._trust.version

    def key(self, kid: str) -> TrustedKey | None:
        key = self._trust.key(kid)
        if key is None:
            return None
        return dataclasses.replace(key, state="active", revoked_at=None, revocation_reason="")

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return self._trust.anchors(region)

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return self._trust.crls(region)

    def regions(self) -> tuple[str, ...]:
        return self._trust.regions()


@dataclass
class World:
    fed: Federation
    registry: Registry
    trust: RegistryTrust
    keys: dict[str, FileKeyProvider]

    def seal(
        self,
        name: str,
        *,
        at: datetime = SIGNED,
        payload: bytes = PAYLOAD,
        detached: bool = False,
    ) -> str:
        return seal(payload, self.keys[name], signing_time=at, detached=detached)

    def header(self, name: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The header `seal` would write for key `name`, with `changes` (DROP removes)."""
        provider = self.keys[name]
        header: dict[str, Any] = {
            "alg": provider.algorithm,
            "typ": "JOSE",
            "cty": "application/json",
            "x5t#S256": provider.kid,
            "x5c": [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                for c in provider.certificate_chain
            ],
            "iat": int(SIGNED.timestamp()),
        }
        for parameter, value in (changes or {}).items():
            if value is DROP:
                del header[parameter]
            else:
                header[parameter] = value
        return header

    def forge(
        self,
        header: dict[str, Any] | str,
        *,
        payload: bytes = PAYLOAD,
        signer: str | Callable[[bytes], bytes] = "region seal",
    ) -> str:
        """A compact JWS with this header (a dict, or raw JSON text), signed by `signer`."""
        text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
        signing_input = f"{b64url(text.encode())}.{b64url(payload)}"
        sign = self.keys[signer].sign if isinstance(signer, str) else signer
        return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


DROP = object()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    fed = make_federation(tmp_path_factory.mktemp("federation"), now=T0)
    other = make_federation(tmp_path_factory.mktemp("other-federation"), now=T0)
    issued: dict[str, IssuedKey] = {}

    def issue(name: str, region: str = "330000", **options: Any) -> IssuedKey:
        issued[name] = issue_key(
            fed.pki, region=region, owner=region, usage="seal", now=T0, **options
        )
        return issued[name]

    add_key(fed, issue("eddsa seal", algorithm="EdDSA"))
    add_key(fed, issue("ps256 seal", algorithm="PS256"))
    add_key(fed, issue("one-day seal", validity_days=1))
    inventory = fed.inventory()
    for name, reason in {
        "compromised": "keyCompromise",
        "unspecified": "unspecified",
        "superseded": "superseded",
    }.items():
        key = issue(name, region="510000")
        inventory.add(KeyRecord.from_issued(fed.pki, key, KeyState.ACTIVE, T0))
        inventory.revoke(key.kid, at=REVOKED_AT, reason=reason)
    # A certificate of another federation, imported into this one's inventory for region
    # 330000: the registry publishes it, but it does not chain to 330000's anchors.
    foreign = other.inventory().get(other.active("330000", KeyUsage.SEAL))
    (fed.pki / "imported").mkdir()
    for relative in (foreign.certificate, foreign.private_key):
        shutil.copy(other.pki / relative, fed.pki / "imported" / Path(relative).name)
    inventory.add(
        dataclasses.replace(
            foreign,
            state=KeyState.PENDING,
            certificate=f"imported/{Path(foreign.certificate).name}",
            private_key=f"imported/{Path(foreign.private_key).name}",
        )
    )
    inventory.save()
    fed.publish(now=PUBLISHED)
    registry = published_registry(fed)

    keys = {name: FileKeyProvider(k.key_path, k.certificate_path) for name, k in issued.items()}
    for name, owner, usage in (
        ("region seal", "330000", KeyUsage.SEAL),
        ("510000 seal", "510000", KeyUsage.SEAL),
        ("agency seal", "zj.hrss", KeyUsage.SEAL),
        ("signature", "330000", KeyUsage.SIGNATURE),
        ("tls", "330000", KeyUsage.TLS),
        ("agency tls", "zj.hrss", KeyUsage.TLS),
        ("token", "330000", KeyUsage.TOKEN),
    ):
        keys[name] = provider_of(fed, fed.active(owner, usage))
    keys["imported"] = provider_of(fed, foreign.kid)
    keys["other federation"] = provider_of(other, other.active("510000", KeyUsage.SEAL))
    return World(fed, registry, RegistryTrust(registry), keys)


# -- the table of failures --------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    jws: str
    payload: bytes | None = None  # the detached payload supplied
    kind: SignatureKind | None = None
    region: str | None = None
    at: datetime = NOW  # validation time
    crl_only: bool = False  # verify against CrlOnly(registry)


@dataclass(frozen=True)
class Case:
    make: Callable[[World], Attempt]
    sub: SubIndication
    check: str  # the check that fails (the last one of the report)
    fragment: str  # in the report's message


def _hs256_with_public_key(w: World) -> Attempt:
    provider = w.keys["region seal"]
    secret = (
        provider.certificate_chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = w.header("region seal", {"alg": "HS256"})
    return Attempt(
        w.forge(header, signer=lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    )


def _rs256(w: World) -> Attempt:
    provider = w.keys["ps256 seal"]
    key = load_private_key(w.fed.pki / w.fed.inventory().get(provider.kid).private_key)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Attempt(
        w.forge(
            w.header("ps256 seal", {"alg": "RS256"}),
            signer=lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        )
    )


def _es256_header_on_eddsa_key(w: World) -> Attempt:
    return Attempt(w.forge(w.header("eddsa seal", {"alg": "ES256"}), signer="eddsa seal"))


def _another_key_claims_the_kid(w: World) -> Attempt:
    impostor = generate_private_key("ES256")
    return Attempt(
        w.forge(w.header("region seal"), signer=lambda data: sign_bytes("ES256", impostor, data))
    )


def _tampered_payload(w: World) -> Attempt:
    header, _, signature = w.seal("region seal").split(".")
    return Attempt(f"{header}.{b64url(OTHER_PAYLOAD)}.{signature}")


def _tampered_header(w: World) -> Attempt:
    _, payload, signature = w.seal("region seal").split(".")
    header = json.dumps(w.header("region seal", {"cty": "text/plain"}), separators=(",", ":"))
    return Attempt(f"{b64url(header.encode())}.{payload}.{signature}")


def _duplicate_names(w: World) -> Attempt:
    text = json.dumps(w.header("region seal"), separators=(",", ":"))
    return Attempt(w.forge('{"alg":"ES256",' + text[1:]))


def _sigd_without_crit(w: World) -> Attempt:
    detached = w.seal("region seal", detached=True)
    header = json.loads(base64.urlsafe_b64decode(detached.split(".")[0] + "=="))
    del header["crit"]
    return Attempt(w.forge(header))


def _sigd_with_attached_payload(w: World) -> Attempt:
    """sigD names one payload's digest, the JWS carries (and signs) another."""
    detached = w.seal("region seal", detached=True, payload=OTHER_PAYLOAD)
    header = json.loads(base64.urlsafe_b64decode(detached.split(".")[0] + "=="))
    return Attempt(w.forge(header, payload=PAYLOAD))


def _x5t_o_instead(w: World) -> Attempt:
    digest = hashlib.sha256(w.keys["region seal"].certificate_chain[0].tbs_certificate_bytes)
    x5t_o = {"digAlg": "http://www.w3.org/2001/04/xmlenc#sha256", "digVal": b64url(digest.digest())}
    return Attempt(w.forge(w.header("region seal", {"x5t#S256": DROP, "x5t#o": x5t_o})))


def _x5c_of_another_key(w: World) -> Attempt:
    x5c = w.header("510000 seal")["x5c"]
    return Attempt(w.forge(w.header("region seal", {"x5c": x5c})))


def _with_payload_part(w: World, text: str) -> Attempt:
    header, _, signature = w.seal("region seal").split(".")
    return Attempt(f"{header}.{text}.{signature}")


CASES: dict[str, Case] = {
    # FORMAT_FAILURE: the JWS or its header is not what the profile says
    "garbage": Case(
        lambda w: Attempt("this is not a seal"),
        SubIndication.FORMAT_FAILURE,
        "format",
        "not a compact JWS",
    ),
    "two parts": Case(
        lambda w: Attempt(w.seal("region seal").rsplit(".", 1)[0]),
        SubIndication.FORMAT_FAILURE,
        "format",
        "not a compact JWS",
    ),
    "non-ASCII payload part": Case(
        lambda w: _with_payload_part(w, "张三"),
        SubIndication.FORMAT_FAILURE,
        "format",
        "the payload is not unpadded base64url",
    ),
    "payload part with a '?'": Case(
        lambda w: _with_payload_part(w, "?" + b64url(PAYLOAD)[1:]),
        SubIndication.FORMAT_FAILURE,
        "format",
        "the payload is not unpadded base64url",
    ),
    "duplicate header names": Case(
        _duplicate_names,
        SubIndication.FORMAT_FAILURE,
        "format",
        "duplicate header parameter alg",
    ),
    "unknown crit": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"crit": ["urn:x"], "urn:x": 1}))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "crit lists 'urn:x', which this verifier does not understand",
    ),
    "crit lists alg": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"crit": ["alg"]}))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "crit lists RFC 7515 header 'alg'",
    ),
    "crit lists sigD, which is absent": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"crit": ["sigD"]}))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "crit lists 'sigD', which the header lacks",
    ),
    "sigD without crit": Case(
        _sigd_without_crit,
        SubIndication.FORMAT_FAILURE,
        "header",
        "sigD is used but not listed in crit",
    ),
    "sigD with an attached payload": Case(
        _sigd_with_attached_payload,
        SubIndication.FORMAT_FAILURE,
        "header",
        "sigD is for a detached payload, but the payload is attached",
    ),
    "b64 header": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"b64": True}))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "b64 is not part of the Tongban profile",
    ),
    "x5t#S256 missing": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"x5t#S256": DROP}))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "exactly one x5t#S256",
    ),
    "x5t#o instead of x5t#S256": Case(
        _x5t_o_instead,
        SubIndication.FORMAT_FAILURE,
        "header",
        "exactly one x5t#S256",
    ),
    "sigT": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"sigT": "2026-11-21T10:30:00Z"}))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "sigT is not used",
    ),
    "iat missing": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"iat": DROP}))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "iat (the signing time) is missing or not a number",
    ),
    "iat a string": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"iat": "1795249800"}))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "iat (the signing time) is missing or not a number",
    ),
    "iat in the future": Case(
        lambda w: Attempt(w.seal("region seal", at=NOW + timedelta(hours=1))),
        SubIndication.FORMAT_FAILURE,
        "header",
        "the signing time 2026-11-21T12:00:00Z is in the future",
    ),
    "x5t#S256 not matching x5c": Case(
        _x5c_of_another_key,
        SubIndication.FORMAT_FAILURE,
        "signing key",
        "x5t#S256 does not match the certificate in x5c",
    ),
    "payload supplied for an attached seal": Case(
        lambda w: Attempt(w.seal("region seal"), payload=PAYLOAD),
        SubIndication.FORMAT_FAILURE,
        "signed data",
        "a payload was supplied but the signature is attached",
    ),
    # HASH_FAILURE
    "payload swapped under a detached seal": Case(
        lambda w: Attempt(w.seal("region seal", detached=True), payload=OTHER_PAYLOAD),
        SubIndication.HASH_FAILURE,
        "data digest",
        "the supplied payload is not the one that was signed",
    ),
    # SIG_CRYPTO_FAILURE
    "attached payload tampered": Case(
        _tampered_payload,
        SubIndication.SIG_CRYPTO_FAILURE,
        "signature",
        "does not verify with the registry's key",
    ),
    "header tampered": Case(
        _tampered_header,
        SubIndication.SIG_CRYPTO_FAILURE,
        "signature",
        "does not verify with the registry's key",
    ),
    "another key claims the kid": Case(
        _another_key_claims_the_kid,
        SubIndication.SIG_CRYPTO_FAILURE,
        "signature",
        "does not verify with the registry's key",
    ),
    # CRYPTO_CONSTRAINTS_FAILURE
    "alg none": Case(
        lambda w: Attempt(w.forge(w.header("region seal", {"alg": "none"}), signer=lambda _: b"")),
        SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
        "algorithm",
        "algorithm 'none' is not allowed",
    ),
    "HS256 keyed with the public key": Case(
        _hs256_with_public_key,
        SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
        "algorithm",
        "algorithm 'HS256' is not allowed",
    ),
    "RS256": Case(
        _rs256,
        SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
        "algorithm",
        "algorithm 'RS256' is not allowed",
    ),
    "ES256 header on an EdDSA key": Case(
        _es256_header_on_eddsa_key,
        SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
        "key and algorithm",
        "algorithm ES256 does not fit a Ed25519PublicKey",
    ),
    # NO_CERTIFICATE_CHAIN_FOUND
    "kid not in the registry (another federation's key)": Case(
        lambda w: Attempt(w.seal("other federation")),
        SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
        "signing key",
        "is not published in registry version 1",
    ),
    "published certificate not anchored in its region": Case(
        lambda w: Attempt(w.seal("imported")),
        SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
        "certificate chain",
        "does not chain to region 330000's CA",
    ),
    # CHAIN_CONSTRAINTS_FAILURE
    "signature certificate where a seal is required": Case(
        lambda w: Attempt(w.seal("signature"), kind=SignatureKind.SEAL),
        SubIndication.CHAIN_CONSTRAINTS_FAILURE,
        "kind",
        "an e-seal was required, but this is an e-signature",
    ),
    "seal where a signature is required": Case(
        lambda w: Attempt(w.seal("agency seal"), kind=SignatureKind.SIGNATURE),
        SubIndication.CHAIN_CONSTRAINTS_FAILURE,
        "kind",
        "an e-signature was required, but this is an e-seal",
    ),
    "gateway TLS key": Case(
        lambda w: Attempt(w.seal("tls")),
        SubIndication.CHAIN_CONSTRAINTS_FAILURE,
        "certificate chain",
        "not for document signing",
    ),
    "agency TLS key": Case(
        lambda w: Attempt(w.seal("agency tls")),
        SubIndication.CHAIN_CONSTRAINTS_FAILURE,
        "certificate chain",
        "not for document signing",
    ),
    "token key": Case(
        lambda w: Attempt(w.seal("token")),
        SubIndication.CHAIN_CONSTRAINTS_FAILURE,
        "certificate chain",
        "not for document signing",
    ),
    "another region's key claiming this region": Case(
        lambda w: Attempt(w.seal("510000 seal"), region="330000"),
        SubIndication.CHAIN_CONSTRAINTS_FAILURE,
        "kind",
        "made by a key of region 510000, not of region 330000",
    ),
    # SIGNED_DATA_NOT_FOUND
    "detached without its payload": Case(
        lambda w: Attempt(w.seal("region seal", detached=True)),
        SubIndication.SIGNED_DATA_NOT_FOUND,
        "signed data",
        "the signature is detached and no payload was supplied",
    ),
    # REVOKED: the signing time is after the revocation, whatever the reason
    "revoked before the signing time (registry)": Case(
        lambda w: Attempt(w.seal("compromised")),
        SubIndication.REVOKED,
        "revocation",
        "was revoked at 2026-11-21T09:00:00Z (keyCompromise), before the signing time",
    ),
    "superseded before the signing time (registry)": Case(
        lambda w: Attempt(w.seal("superseded")),
        SubIndication.REVOKED,
        "revocation",
        "was revoked at 2026-11-21T09:00:00Z (superseded), before the signing time",
    ),
    "revoked before the signing time (CRL only)": Case(
        lambda w: Attempt(w.seal("compromised"), crl_only=True),
        SubIndication.REVOKED,
        "revocation",
        "the signing certificate was revoked at 2026-11-21T09:00:00Z (key_compromise), before",
    ),
    # REVOKED_NO_POE: revoked for a reason that taints earlier signatures
    "keyCompromise after the signing time (registry)": Case(
        lambda w: Attempt(w.seal("compromised", at=BEFORE_REVOCATION)),
        SubIndication.REVOKED_NO_POE,
        "revocation",
        "(keyCompromise); the claimed earlier signing time cannot be proved",
    ),
    "unspecified after the signing time (registry)": Case(
        lambda w: Attempt(w.seal("unspecified", at=BEFORE_REVOCATION)),
        SubIndication.REVOKED_NO_POE,
        "revocation",
        "(unspecified); the claimed earlier signing time cannot be proved",
    ),
    "keyCompromise after the signing time (CRL only)": Case(
        lambda w: Attempt(w.seal("compromised", at=BEFORE_REVOCATION), crl_only=True),
        SubIndication.REVOKED_NO_POE,
        "revocation",
        "(key_compromise); the claimed earlier signing time cannot be proved",
    ),
    # EXPIRED, NOT_YET_VALID: the certificate at the signing time
    "signed after the certificate expired": Case(
        lambda w: Attempt(
            w.seal("one-day seal", at=T0 + timedelta(days=1, hours=1)),
            at=T0 + timedelta(days=1, hours=2),
        ),
        SubIndication.EXPIRED,
        "validity at signing time",
        "the certificate had expired at the signing time (valid until 2026-11-22T08:00:00Z)",
    ),
    "signed before the certificate was valid": Case(
        lambda w: Attempt(w.seal("region seal", at=T0 - timedelta(hours=1))),
        SubIndication.NOT_YET_VALID,
        "validity at signing time",
        "the certificate was not yet valid at the signing time (valid from 2026-11-21T07:55:00Z)",
    ),
    # OUT_OF_BOUNDS_NO_POE: signed in time, but checked after the certificate expired
    "checked after the certificate expired": Case(
        lambda w: Attempt(w.seal("one-day seal"), at=T0 + timedelta(days=2)),
        SubIndication.OUT_OF_BOUNDS_NO_POE,
        "validity now",
        "the certificate expired at 2026-11-22T08:00:00Z; without a time-stamp",
    ),
    # TRY_LATER: the registry's CRLs are past their next update
    "stale CRL": Case(
        lambda w: Attempt(w.seal("region seal"), at=CRL_NEXT_UPDATE + timedelta(minutes=1)),
        SubIndication.TRY_LATER,
        "revocation",
        "the region 330000 CRLs are not current (next update 2026-11-29T10:00:00Z)",
    ),
}


def _verifier(world: World, attempt: Attempt) -> SealVerifier:
    trust: TrustSource = CrlOnly(world.trust) if attempt.crl_only else world.trust
    return SealVerifier(trust, clock=lambda: NOW)


def _validate(verifier: SealVerifier, attempt: Attempt) -> ValidationReport:
    return verifier.validate(
        attempt.jws,
        detached_payload=attempt.payload,
        expected_kind=attempt.kind,
        expected_owner_region=attempt.region,
        validation_time=attempt.at,
    )


def test_every_sub_indication_is_in_the_table() -> None:
    assert {case.sub for case in CASES.values()} == set(SubIndication)


@pytest.mark.parametrize("name", list(CASES))
def test_failure(world: World, name: str) -> None:
    case = CASES[name]
    attempt = case.make(world)
    verifier = _verifier(world, attempt)
    report = _validate(verifier, attempt)
    assert (report.indication, report.sub_indication) == (case.sub.indication, case.sub)
    assert case.fragment in report.message
    # The checks run up to the failing one, in the order of the plan; only the last failed.
    names = [check.name for check in report.checks]
    expected = [n for n in ORDER[: ORDER.index(case.check) + 1] if n != "data digest"]
    if case.check == "data digest":
        expected.append("data digest")
    assert names == expected
    assert all(check.passed for check in report.checks[:-1])
    assert report.checks[-1].detail == report.message
    # Nothing of a failed signature is handed out as signed.
    assert report.payload is None
    assert report.signed_payload_b64 == ""
    assert report.detached_payload is None
    # The same report the second time (the failing path records its checks afresh).
    assert _validate(verifier, attempt) == report


def test_indications_follow_the_table_of_en_319_102_1() -> None:
    failed = {s for s in SubIndication if s.indication is Indication.TOTAL_FAILED}
    assert {s.value for s in failed} == {
        "FORMAT_FAILURE",
        "HASH_FAILURE",
        "SIG_CRYPTO_FAILURE",
        "REVOKED",
        "EXPIRED",
        "NOT_YET_VALID",
    }


# -- passing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passing:
    key: str
    kind: SignatureKind
    owner: str
    region: str
    algorithm: str
    detached: bool = False
    at: datetime = SIGNED
    crl_only: bool = False
    revocation: str = "not on region"  # in the revocation check's detail


PASSING = {
    "region seal, ES256": Passing("region seal", SignatureKind.SEAL, "330000", "330000", "ES256"),
    "region seal, detached": Passing(
        "region seal", SignatureKind.SEAL, "330000", "330000", "ES256", detached=True
    ),
    "agency seal": Passing("agency seal", SignatureKind.SEAL, "zj.hrss", "330000", "ES256"),
    "agency seal, detached": Passing(
        "agency seal", SignatureKind.SEAL, "zj.hrss", "330000", "ES256", detached=True
    ),
    "natural-person signature": Passing(
        "signature", SignatureKind.SIGNATURE, "330000", "330000", "ES256"
    ),
    "EdDSA seal": Passing("eddsa seal", SignatureKind.SEAL, "330000", "330000", "EdDSA"),
    "PS256 seal": Passing("ps256 seal", SignatureKind.SEAL, "330000", "330000", "PS256"),
    "PS256 seal, detached": Passing(
        "ps256 seal", SignatureKind.SEAL, "330000", "330000", "PS256", detached=True
    ),
    "superseded after the signing time (registry)": Passing(
        "superseded",
        SignatureKind.SEAL,
        "510000",
        "510000",
        "ES256",
        at=BEFORE_REVOCATION,
        revocation="was revoked at 2026-11-21T09:00:00Z for superseded, after the signing time",
    ),
    "superseded after the signing time (CRL only)": Passing(
        "superseded",
        SignatureKind.SEAL,
        "510000",
        "510000",
        "ES256",
        at=BEFORE_REVOCATION,
        crl_only=True,
        revocation="the signing certificate was revoked at 2026-11-21T09:00:00Z for superseded",
    ),
}


@pytest.mark.parametrize("name", list(PASSING))
def test_passing_report(world: World, name: str) -> None:
    case = PASSING[name]
    provider = world.keys[case.key]
    jws = world.seal(case.key, at=case.at, detached=case.detached)
    attempt = Attempt(
        jws,
        payload=PAYLOAD if case.detached else None,
        kind=case.kind,
        region=case.region,
        crl_only=case.crl_only,
    )
    verifier = _verifier(world, attempt)
    report = _validate(verifier, attempt)
    assert report.indication is Indication.TOTAL_PASSED, report.message
    assert report.sub_indication is None
    assert report.passed
    assert report.kind is case.kind
    assert report.owner == case.owner
    assert report.owner_region == case.region
    assert report.signer_kid == provider.kid
    assert report.signer_subject == provider.certificate_chain[0].subject.rfc4514_string()
    assert report.signing_time == case.at
    assert report.algorithm == case.algorithm
    assert report.registry_version == world.registry.version == 1
    assert report.content_type == "application/json"
    assert report.payload == PAYLOAD
    assert report.message.endswith("made at " + f"{case.at:%Y-%m-%d %H:%M:%SZ} is valid")
    assert [check.name for check in report.checks] == [
        n for n in ORDER if n != "data digest" or case.detached
    ]
    assert all(check.passed for check in report.checks)
    checks = {check.name: check.detail for check in report.checks}
    assert case.revocation in checks["revocation"]
    if not case.crl_only and case.revocation == "not on region":
        assert checks["revocation"].endswith(f"not on region {case.region}'s CRLs")
    # The cached path: the same report again, and the same as a fresh verifier's.
    assert _validate(verifier, attempt) == report
    assert _validate(_verifier(world, attempt), attempt) == report


def test_verify_returns_the_report_or_raises_seal_invalid(world: World) -> None:
    verifier = SealVerifier(world.trust, clock=lambda: NOW)
    good = world.seal("region seal")
    assert verifier.verify(good) == verifier.validate(good)
    bad = _tampered_payload(world).jws
    with pytest.raises(SealInvalid) as caught:
        verifier.verify(bad)
    report = caught.value.report
    assert report == verifier.validate(bad)
    assert report.sub_indication is SubIndication.SIG_CRYPTO_FAILURE
    assert str(caught.value).startswith("TOTAL_FAILED/SIG_CRYPTO_FAILURE: the signature does not")
    with pytest.raises(SealInvalid, match="INDETERMINATE/CHAIN_CONSTRAINTS_FAILURE"):
        verifier.verify(good, expected_owner_region="510000")


def test_validate_uses_the_clock_when_no_time_is_given(world: World) -> None:
    late = CRL_NEXT_UPDATE + timedelta(hours=1)
    verifier = SealVerifier(world.trust, clock=lambda: late)
    report = verifier.validate(world.seal("region seal"))
    assert report.sub_indication is SubIndication.TRY_LATER
    assert verifier.validate(world.seal("region seal"), validation_time=NOW).passed


MAX_TIME = datetime.max.replace(tzinfo=UTC)
MIN_TIME = datetime.min.replace(tzinfo=UTC)
FIRST_SECOND = int(MIN_TIME.timestamp())  # 0001-01-01T00:00:00Z as an iat


@pytest.mark.parametrize(
    ("iat", "validation_time", "sub", "fragment"),
    [
        (None, MAX_TIME, SubIndication.TRY_LATER, "CRLs are not current"),
        (None, MIN_TIME, SubIndication.FORMAT_FAILURE, "is in the future"),
        (FIRST_SECOND, NOW, SubIndication.NOT_YET_VALID, "was not yet valid"),
        (FIRST_SECOND, MIN_TIME, SubIndication.NOT_YET_VALID, "was not yet valid"),
        (253402300799, MAX_TIME, SubIndication.EXPIRED, "had expired"),  # 9999-12-31T23:59:59Z
        (253402300800, NOW, SubIndication.FORMAT_FAILURE, "iat is out of range"),  # year 10000
        (10**20, NOW, SubIndication.FORMAT_FAILURE, "iat is out of range"),
    ],
)
def test_extreme_times_give_a_report_never_an_exception(
    world: World, iat: int | None, validation_time: datetime, sub: SubIndication, fragment: str
) -> None:
    """The first and last representable instants: no `now + skew` overflow escapes validate()."""
    jws = world.seal("region seal")
    if iat is not None:
        jws = world.forge(world.header("region seal", {"iat": iat}))
    verifier = SealVerifier(world.trust, clock=lambda: NOW)
    report = verifier.validate(jws, validation_time=validation_time)
    assert report.sub_indication is sub
    assert fragment in report.message


def test_cached_checks_follow_the_form_of_the_seal(world: World) -> None:
    """Passing checks are cached per key and form; each form gets its own list, the same as a
    fresh verifier's. An RFC 7515 appendix F detached JWS (no sigD: the payload is signed as
    usual and sent apart) has no data digest check, even after a sigD seal of the same key."""
    header = world.header("region seal")
    attached = world.forge(header)
    head, _, signature = attached.split(".")
    appendix_f = f"{head}..{signature}"
    forms = [
        (world.seal("region seal", detached=True), PAYLOAD),
        (appendix_f, PAYLOAD),
        (world.seal("region seal"), None),
        (attached, None),
    ]
    shared = SealVerifier(world.trust, clock=lambda: NOW)
    for jws, payload in forms:
        cached = shared.validate(jws, detached_payload=payload)
        fresh = SealVerifier(world.trust, clock=lambda: NOW).validate(jws, detached_payload=payload)
        assert cached.passed, cached.message
        assert cached == fresh
    first, second = (shared.validate(j, detached_payload=p).checks for j, p in forms[:2])
    assert "data digest" in [c.name for c in first]
    assert "data digest" not in [c.name for c in second]


def test_distinct_seals_of_one_key_share_the_cached_checks(world: World) -> None:
    verifier = SealVerifier(world.trust, clock=lambda: NOW)
    reports = [
        verifier.validate(world.seal("agency seal", at=SIGNED + timedelta(seconds=s)))
        for s in range(3)
    ]
    assert all(r.passed for r in reports)
    assert reports[0].checks == reports[1].checks == reports[2].checks
    assert [r.signing_time for r in reports] == [SIGNED + timedelta(seconds=s) for s in range(3)]


def test_use_of_another_registry_version_drops_the_cached_chains(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, now=T0)
    fed.publish(now=PUBLISHED)
    v1 = RegistryTrust(published_registry(fed))
    kid = fed.active("330000", KeyUsage.SEAL)
    jws = seal(PAYLOAD, provider_of(fed, kid), signing_time=SIGNED)
    verifier = SealVerifier(CrlOnly(v1), clock=lambda: NOW)
    assert verifier.validate(jws).passed  # chain and "not on the CRL" are now cached
    assert verifier._facts  # the cache under test
    verifier.use(CrlOnly(RegistryTrust(published_registry(fed))))  # the same version: kept
    assert verifier._facts

    inventory = fed.inventory()
    inventory.revoke(kid, at=SIGNED - timedelta(minutes=5), reason="keyCompromise")
    inventory.save()
    fed.publish(now=SIGNED - timedelta(minutes=4))
    v2 = RegistryTrust(published_registry(fed))
    assert v2.version == 2
    verifier.use(CrlOnly(v2))  # only the CRL of version 2 says the key is revoked
    assert not verifier._facts
    report = verifier.validate(jws)
    assert report.sub_indication is SubIndication.REVOKED
    assert report.registry_version == 2
    assert verifier.trust.version == 2
    # A verifier still on version 1 still passes it: the revocation is news of version 2.
    assert SealVerifier(CrlOnly(v1), clock=lambda: NOW).validate(jws).passed


# -- rotation ---------------------------------------------------------------------------------


def test_rotation_never_fails_a_verification_and_revocation_takes_effect(tmp_path: Path) -> None:
    """Seal with A; rotate to B; after two publishes (A retiring, B active) both verify against
    the newest registry; after A is revoked for keyCompromise, A's seals dated after the
    revocation fail REVOKED (and its earlier ones can no longer be trusted either)."""

    def minutes(n: int) -> datetime:
        return T0 + timedelta(minutes=n)

    fed = make_federation(tmp_path, now=T0)
    fed.publish(now=minutes(10))
    kid_a = fed.active("330000", KeyUsage.SEAL)
    seal_a = seal(PAYLOAD, provider_of(fed, kid_a), signing_time=minutes(20))

    # Rotate, as `tongban keys rotate` does: a pending successor from the region CA.
    key_b = rotate_key(fed.pki, "330000", KeyUsage.SEAL, now=minutes(30)).successor
    fed.publish(now=minutes(40))  # B published as pending
    fed.publish(now=minutes(50))  # B active, A retiring
    registry = published_registry(fed)
    assert registry.version == 3
    assert registry.key(kid_a).state is KeyState.RETIRING  # type: ignore[union-attr]
    assert registry.key(key_b.kid).state is KeyState.ACTIVE  # type: ignore[union-attr]
    assert fed.active("330000", KeyUsage.SEAL) == key_b.kid
    seal_b = seal(PAYLOAD, provider_of(fed, key_b.kid), signing_time=minutes(60))

    verifier = SealVerifier(RegistryTrust(registry), clock=lambda: minutes(70))
    for jws, kid, state in ((seal_a, kid_a, "retiring"), (seal_b, key_b.kid, "active")):
        report = verifier.validate(jws, expected_kind=SignatureKind.SEAL)
        assert report.indication is Indication.TOTAL_PASSED, report.message
        assert report.signer_kid == kid
        assert report.registry_version == 3
        assert f"(seal, {state})" in {c.name: c.detail for c in report.checks}["signing key"]

    revoked_at = minutes(80)
    inventory = fed.inventory()
    inventory.revoke(kid_a, at=revoked_at, reason="keyCompromise")
    inventory.save()
    fed.publish(now=minutes(90))
    verifier.use(RegistryTrust(published_registry(fed)))
    late_a = seal(PAYLOAD, provider_of(fed, kid_a), signing_time=minutes(100))
    report = verifier.validate(late_a, validation_time=minutes(110))
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.REVOKED,
    )
    assert report.registry_version == 4
    assert "was revoked at 2026-11-21T09:20:00Z (keyCompromise)" in report.message
    # The compromise also taints what A sealed before it; B is untouched.
    early = verifier.validate(seal_a, validation_time=minutes(110))
    assert early.sub_indication is SubIndication.REVOKED_NO_POE
    assert verifier.validate(seal_b, validation_time=minutes(110)).passed


def test_large_x5c_certificates_are_not_remembered(world: World) -> None:
    # Each seal names a real registry key but carries its own 256 KiB x5c[0]: checked, refused,
    # and not kept (4096 of them would hold a gigabyte).
    verifier = SealVerifier(world.trust, clock=lambda: NOW)
    for n in range(20):
        junk = base64.b64encode(n.to_bytes(4, "big") + b"\x00" * 192 * 1024).decode()
        report = verifier.validate(world.forge(world.header("region seal", {"x5c": [junk]})))
        assert report.sub_indication is SubIndication.FORMAT_FAILURE
    assert sum(len(text) for text in verifier._x5c_thumbprints) == 0
    assert verifier.validate(world.seal("region seal")).passed
    assert len(verifier._x5c_thumbprints) == 1  # a real certificate is still remembered


# -- the repeat of a passing validation (signer._verify_fast) ----------------------------------


def _prime(verifier: SealVerifier, world: World, attempt: Attempt) -> None:
    """Let `verifier` see a seal of every key pass, attached and detached, with and without the
    attempt's expectations: each that passes is remembered by its header (signed at SIGNED, as
    the seals of the table are, so their headers are the same)."""
    for key in world.keys:
        for detached in (False, True):
            jws = world.seal(key, detached=detached)
            payload = PAYLOAD if detached else None
            verifier.validate(jws, detached_payload=payload)
            verifier.validate(
                jws,
                detached_payload=payload,
                expected_kind=attempt.kind,
                expected_owner_region=attempt.region,
            )


@pytest.mark.parametrize("name", list(CASES))
def test_failure_after_a_pass_of_the_same_header(world: World, name: str) -> None:
    """A verifier that remembers passes of the very header an attempt carries (tampered payload
    or signature, another validation time, other expectations, a malformed part) still reports
    each failure exactly as a fresh verifier does."""
    attempt = CASES[name].make(world)
    verifier = _verifier(world, attempt)
    _prime(verifier, world, attempt)
    assert verifier._verdicts._by_header  # the memory under test
    report = _validate(verifier, attempt)
    assert not report.passed
    assert report == _validate(_verifier(world, attempt), attempt)


def _signed(world: World, signing_input: str) -> str:
    """`signing_input` and the region seal key's signature over it, as a signer would add it."""
    signature = world.keys["region seal"].sign(signing_input.encode())
    return f"{signing_input}.{b64url(signature)}"


def test_a_repeat_rechecks_each_part_that_may_differ(world: World) -> None:
    verifier = SealVerifier(world.trust, clock=lambda: NOW)
    jws = world.seal("region seal")
    detached = world.seal("region seal", detached=True)
    first = verifier.validate(jws)
    assert first.passed
    for _ in range(2):  # a verdict is kept from a header's second pass on
        assert verifier.validate(jws) == first
        assert verifier.validate(detached, detached_payload=PAYLOAD).passed
    assert len(verifier._verdicts._by_header) == 2
    header, payload, signature = jws.split(".")
    other = world.seal("region seal", payload=OTHER_PAYLOAD).split(".")[1]
    impostor = world.forge(world.header("region seal"), signer="510000 seal").split(".")[2]
    attempts: list[tuple[str, bytes | None, SubIndication]] = [
        (f"{header}.{other}.{signature}", None, SubIndication.SIG_CRYPTO_FAILURE),
        (f"{header}.{payload}.{impostor}", None, SubIndication.SIG_CRYPTO_FAILURE),
        (f"{header}.{payload}+.{signature}", None, SubIndication.FORMAT_FAILURE),
        (f"{header}.{payload}.{signature}.", None, SubIndication.FORMAT_FAILURE),
        (f"{header}.{payload}.{signature}=", None, SubIndication.FORMAT_FAILURE),
        (f"{header}.{payload}A.{signature}", None, SubIndication.FORMAT_FAILURE),
        (f"{header}.{payload}é.{signature}", None, SubIndication.FORMAT_FAILURE),
        (jws, PAYLOAD, SubIndication.FORMAT_FAILURE),  # a payload for an attached seal
        # signed by the key itself, yet malformed: a payload part outside base64url, four parts
        (_signed(world, f"{header}.{payload[:-4]}+/+/"), None, SubIndication.FORMAT_FAILURE),
        (_signed(world, f"{header}.{payload}.{payload}"), None, SubIndication.FORMAT_FAILURE),
        (_signed(world, f"{header}.{payload}A"), None, SubIndication.FORMAT_FAILURE),
        (detached, None, SubIndication.SIGNED_DATA_NOT_FOUND),
        (detached, OTHER_PAYLOAD, SubIndication.HASH_FAILURE),
    ]
    for text, supplied, sub in attempts:
        report = verifier.validate(text, detached_payload=supplied)
        assert report.sub_indication is sub, text
        fresh = SealVerifier(world.trust, clock=lambda: NOW)
        assert report == fresh.validate(text, detached_payload=supplied)
    # Another payload under the same header, signed by the key: its own payload is reported.
    other_seal = _signed(world, f"{header}.{b64url(OTHER_PAYLOAD)}")
    for _ in range(2):
        assert verifier.validate(other_seal).payload == OTHER_PAYLOAD
    # The original still passes, with the report of its first validation.
    assert verifier.validate(jws) == first
    assert verifier.validate(jws).payload == PAYLOAD
    assert verifier.validate(f" {jws}\n") == first
    repeated = verifier.validate(detached, detached_payload=PAYLOAD)
    assert repeated.passed
    assert repeated.payload == PAYLOAD


def test_a_repeat_rechecks_the_validation_time(world: World) -> None:
    """The bounds of each time-dependent check, just inside and just outside, after a pass."""
    verifier = SealVerifier(world.trust, clock=lambda: NOW)
    jws = world.seal("one-day seal")  # valid until T0 + 1 day
    assert verifier.validate(jws).passed
    assert verifier.validate(jws).passed  # remembered from its second pass
    not_after = world.keys["one-day seal"].certificate_chain[0].not_valid_after_utc
    tick = timedelta(microseconds=1)
    skew = timedelta(minutes=5)
    for at, sub in (
        (SIGNED - skew, None),
        (SIGNED - skew - tick, SubIndication.FORMAT_FAILURE),  # signed in the future
        (not_after, None),
        (not_after + tick, SubIndication.OUT_OF_BOUNDS_NO_POE),
    ):
        report = verifier.validate(jws, validation_time=at)
        assert report.sub_indication is sub, at
        assert report == SealVerifier(world.trust, clock=lambda: NOW).validate(
            jws, validation_time=at
        )
    long_lived = world.seal("region seal")
    assert verifier.validate(long_lived).passed
    assert verifier.validate(long_lived).passed
    for at, sub in (
        (CRL_NEXT_UPDATE, None),
        (CRL_NEXT_UPDATE + tick, SubIndication.TRY_LATER),  # the CRLs are no longer current
    ):
        assert verifier.validate(long_lived, validation_time=at).sub_indication is sub


def test_a_key_revoked_in_a_new_registry_version_is_refused_after_repeats(
    tmp_path: Path,
) -> None:
    fed = make_federation(tmp_path, now=T0)
    fed.publish(now=PUBLISHED)
    v1 = RegistryTrust(published_registry(fed))
    kid = fed.active("330000", KeyUsage.SEAL)
    jws = seal(PAYLOAD, provider_of(fed, kid), signing_time=SIGNED)
    verifier = SealVerifier(v1, clock=lambda: NOW)
    for _ in range(3):  # remembered at the second, repeated at the third
        assert verifier.validate(jws).passed
    assert verifier._verdicts._by_header
    verifier.use(RegistryTrust(published_registry(fed)))  # the same version, another source
    assert not verifier._verdicts._by_header
    for _ in range(3):
        assert verifier.validate(jws).passed

    inventory = fed.inventory()
    inventory.revoke(kid, at=SIGNED - timedelta(minutes=5), reason="keyCompromise")
    inventory.save()
    fed.publish(now=SIGNED - timedelta(minutes=4))
    v2 = RegistryTrust(published_registry(fed))
    assert v2.version == 2
    verifier.use(v2)
    for _ in range(2):
        report = verifier.validate(jws)
        assert report.sub_indication is SubIndication.REVOKED
        assert report.registry_version == 2


class _CountingFetcher:
    """An online revocation source that finds the certificate good (nothing to say), counting
    how often it is asked."""

    def __init__(self) -> None:
        self.asked = 0

    def now(self) -> datetime:
        return NOW

    def check(self, *args: object, **kwargs: object) -> None:
        self.asked += 1


def test_a_seal_seen_once_is_not_remembered(world: World) -> None:
    verifier = SealVerifier(world.trust, clock=lambda: NOW)
    for second in range(5):
        assert verifier.validate(
            world.seal("region seal", at=SIGNED + timedelta(seconds=second))
        ).passed
    assert not verifier._verdicts._by_header


def test_a_validation_that_asked_online_is_not_repeated(world: World) -> None:
    fetcher = _CountingFetcher()
    verifier = SealVerifier(world.trust, clock=lambda: NOW, revocation=fetcher)  # type: ignore[arg-type]
    jws = world.seal("region seal")
    for _ in range(3):
        before = fetcher.asked
        assert verifier.validate(jws).passed
        assert fetcher.asked > before  # its answer may change: asked on every validation
    assert not verifier._verdicts._by_header
