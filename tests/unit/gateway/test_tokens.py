"""Request tokens against a real dev federation: the good token and its claims, one table of
refusals (each with its reason, none echoing the token), the verification cache, and
`tongban token issue` end to end.

Times (UTC): the federation is made at T0; one extra token key is revoked at REVOKED_AT; the
registry is published at PUBLISHED; tokens are issued at ISSUED and checked at NOW.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import Federation, make_federation

from gateway.cli import main
from gateway.tokens import (
    MAX_TOKEN_BYTES,
    MAX_TOKEN_LIFETIME_SECONDS,
    TOKEN_BINDING_MISMATCH,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TokenClaims,
    TokenError,
    TokenVerifier,
    audience_for,
    bearer_token,
    issue_token,
    issuer_for,
)
from registry import (
    TRUSTED_ROOT,
    KeyRecord,
    KeyState,
    KeyUsage,
    Registry,
    SnapshotVerifier,
    load_trusted_root,
)
from registry._pki import issue_key
from signer import (
    PrivateKey,
    generate_private_key,
    load_private_key,
    sign_bytes,
    x5t_s256_of_certificate,
)

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
REVOKED_AT = T0 + timedelta(hours=1)
PUBLISHED = T0 + timedelta(hours=2)
ISSUED = T0 + timedelta(hours=3)
NOW = ISSUED + timedelta(seconds=60)

REGION = "330000"
AGENCY = "zj.hrss"
OPERATOR = "张三"
DROP = object()


class Clock:
    """A manual clock: tests move it instead of sleeping."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def read_registry(fed: Federation) -> Registry:
    """The current published registry, read back and verified as a gateway would."""
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / TRUSTED_ROOT))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


def tls_thumbprint(fed: Federation, owner: str) -> str:
    chain, _ = fed.tls_files(owner)
    return x5t_s256_of_certificate(x509.load_pem_x509_certificates(chain.read_bytes())[0])


@dataclass(frozen=True)
class Signer:
    kid: str
    key: PrivateKey
    algorithm: str


@dataclass
class World:
    fed: Federation
    registry: Registry
    signers: dict[str, Signer]
    thumbprints: dict[str, str]  # agency -> x5t#S256 of its active TLS certificate

    def claims(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        iat = int(ISSUED.timestamp())
        claims: dict[str, Any] = {
            "iss": issuer_for(REGION),
            "sub": OPERATOR,
            "agency": AGENCY,
            "aud": audience_for(REGION),
            "iat": iat,
            "exp": iat + 300,
            "jti": "token-1",
            "cnf": {"x5t#S256": self.thumbprints[AGENCY]},
        }
        for name, value in (changes or {}).items():
            if value is DROP:
                del claims[name]
            else:
                claims[name] = value
        return claims

    def token(
        self,
        changes: dict[str, Any] | None = None,
        *,
        signer: str = "token",
        header: dict[str, Any] | None = None,
    ) -> str:
        """A token with these claim and header changes (DROP removes), signed by `signer`."""
        who = self.signers[signer]
        head: dict[str, Any] = {"alg": who.algorithm, "kid": who.kid, "typ": "JWT"}
        for name, value in (header or {}).items():
            if value is DROP:
                del head[name]
            else:
                head[name] = value
        return self.forge(head, changes, signer=signer)

    def forge(
        self,
        header: dict[str, Any],
        changes: dict[str, Any] | None = None,
        *,
        signer: str | Callable[[bytes], bytes] = "token",
        payload: bytes | None = None,
    ) -> str:
        """A compact JWS with exactly this header and these claims (or raw `payload`), signed
        by `signer` (a key's name, or a function of the signing input)."""
        body = json.dumps(self.claims(changes)).encode() if payload is None else payload
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(body)}".encode()
        if callable(signer):
            signature = signer(signing_input)
        else:
            who = self.signers[signer]
            signature = sign_bytes(who.algorithm, who.key, signing_input)
        return f"{signing_input.decode()}.{b64url(signature)}"

    def verify(self, token: str, **changes: Any) -> TokenClaims:
        verifier: TokenVerifier = changes.pop("verifier", None) or TokenVerifier(
            region=changes.pop("region", REGION), clock=changes.pop("clock", Clock())
        )
        arguments: dict[str, Any] = {
            "registry": self.registry,
            "caller_agency": AGENCY,
            "caller_region": REGION,
            "client_thumbprint": self.thumbprints[AGENCY],
        }
        arguments.update(changes)
        return verifier.verify(token, **arguments)


def signer_of(fed: Federation, record: KeyRecord) -> Signer:
    return Signer(record.kid, load_private_key(fed.pki / record.private_key), record.algorithm)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    fed = make_federation(tmp_path_factory.mktemp("federation"), now=T0)
    inventory = fed.inventory()
    extra: dict[str, KeyRecord] = {}
    # An Ed25519 token key, published as pending (pending keys verify).
    eddsa = issue_key(
        fed.pki, region=REGION, owner=REGION, usage="token", algorithm="EdDSA", now=T0
    )
    extra["eddsa token"] = KeyRecord.from_issued(fed.pki, eddsa, KeyState.PENDING, T0)
    inventory.add(extra["eddsa token"])
    # A token key revoked at REVOKED_AT, before any token here is issued.
    revoked = issue_key(fed.pki, region=REGION, owner=REGION, usage="token", now=T0)
    inventory.add(KeyRecord.from_issued(fed.pki, revoked, KeyState.ACTIVE, T0))
    extra["revoked token"] = inventory.revoke(revoked.kid, at=REVOKED_AT, reason="keyCompromise")
    inventory.save()
    fed.publish(now=PUBLISHED)

    inventory = fed.inventory()
    signers = {name: signer_of(fed, record) for name, record in extra.items()}
    for name, owner, usage in (
        ("token", REGION, KeyUsage.TOKEN),
        ("510000 token", "510000", KeyUsage.TOKEN),
        ("seal", REGION, KeyUsage.SEAL),
        ("agency seal", AGENCY, KeyUsage.SEAL),
    ):
        signers[name] = signer_of(fed, inventory.get(fed.active(owner, usage)))
    # The right kid, but another key signs.
    signers["impostor"] = Signer(signers["token"].kid, generate_private_key("ES256"), "ES256")
    thumbprints = {a: tls_thumbprint(fed, a) for a in (AGENCY, "zj.hsa", "sc.hrss")}
    return World(fed, read_registry(fed), signers, thumbprints)


# -- issuing and the good token ---------------------------------------------------------------


@pytest.mark.parametrize("signer", ["token", "eddsa token"])
def test_a_good_token_verifies_with_its_claims(world: World, signer: str) -> None:
    who = world.signers[signer]
    token = issue_token(
        who.key,
        who.kid,
        region=REGION,
        operator=OPERATOR,
        agency=AGENCY,
        thumbprint=world.thumbprints[AGENCY],
        lifetime_seconds=120,
        now=ISSUED,
        token_id="jti-42",
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": who.algorithm, "kid": who.kid, "typ": "JWT"}
    claims = world.verify(token)
    assert claims == TokenClaims(
        issuer="urn:tongban:idp:330000",
        region=REGION,
        operator=OPERATOR,
        agency=AGENCY,
        audience="urn:tongban:gateway:330000",
        issued_at=ISSUED,
        expires_at=ISSUED + timedelta(seconds=120),
        token_id="jti-42",
        thumbprint=world.thumbprints[AGENCY],
        kid=who.kid,
    )


def test_a_portal_token_names_its_applicant_and_a_malformed_one_is_refused(
    world: World,
) -> None:
    who = world.signers["token"]
    applicant = "11010519491231002X"
    token = issue_token(
        who.key,
        who.kid,
        region=REGION,
        operator=OPERATOR,
        agency=AGENCY,
        thumbprint=world.thumbprints[AGENCY],
        now=ISSUED,
        applicant=applicant,
    )
    assert world.verify(token).applicant == applicant
    assert jwt.decode(token, options={"verify_signature": False})["applicant"] == applicant
    plain = issue_token(
        who.key,
        who.kid,
        region=REGION,
        operator=OPERATOR,
        agency=AGENCY,
        thumbprint=world.thumbprints[AGENCY],
        now=ISSUED,
    )
    assert world.verify(plain).applicant == ""
    assert "applicant" not in jwt.decode(plain, options={"verify_signature": False})
    # the last two: a trailing newline (what `$` lets through) and full-width digits, which
    # no other part of the gateway reads as the same citizen
    for bad in (
        "110105194912310021",
        42,
        "",
        f"{applicant}\n",
        "１１０１０５１９４９１２３１００２X",
    ):
        with pytest.raises(TokenError) as caught:
            world.verify(world.token({"applicant": bad}))
        assert caught.value.reason == "TOKEN_INVALID"
        assert "applicant" in str(caught.value)
        assert "1101051949" not in str(caught.value)


def test_issue_token_picks_a_random_jti_and_the_full_lifetime(world: World) -> None:
    who = world.signers["token"]
    tokens = [
        issue_token(
            who.key,
            who.kid,
            region=REGION,
            operator=OPERATOR,
            agency=AGENCY,
            thumbprint=world.thumbprints[AGENCY],
            now=ISSUED,
        )
        for _ in range(2)
    ]
    first, second = (world.verify(t) for t in tokens)
    assert first.token_id != second.token_id
    assert len(first.token_id) >= 16
    assert first.expires_at - first.issued_at == timedelta(seconds=MAX_TOKEN_LIFETIME_SECONDS)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param({"lifetime_seconds": 0}, ValueError, id="lifetime-0"),
        pytest.param({"lifetime_seconds": 301}, ValueError, id="lifetime-301"),
        pytest.param({"lifetime_seconds": 1.5}, TypeError, id="lifetime-float"),
        pytest.param({"now": ISSUED.replace(tzinfo=None)}, ValueError, id="naive-time"),
        pytest.param({"operator": ""}, ValueError, id="no-operator"),
        pytest.param({"thumbprint": ""}, ValueError, id="no-thumbprint"),
        pytest.param({"key": generate_private_key("PS256")}, ValueError, id="rsa-key"),
        pytest.param({"applicant": "110105194912310021"}, ValueError, id="bad-applicant"),
    ],
)
def test_issue_token_refuses(world: World, change: dict[str, Any], error: type[Exception]) -> None:
    arguments: dict[str, Any] = {
        "key": world.signers["token"].key,
        "kid": world.signers["token"].kid,
        "region": REGION,
        "operator": OPERATOR,
        "agency": AGENCY,
        "thumbprint": world.thumbprints[AGENCY],
        "now": ISSUED,
    }
    arguments.update(change)
    with pytest.raises(error):
        issue_token(**arguments)


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc.def.ghi ") == "abc.def.ghi"
    for bad in ("abc.def.ghi", "Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", ""):
        with pytest.raises(TokenError) as caught:
            bearer_token(bad)
        assert caught.value.reason == TOKEN_INVALID


# -- the table of refusals --------------------------------------------------------------------


def hs256_with_public_key(world: World) -> str:
    """The classic confusion: HMAC keyed with the token key's public certificate key."""
    entry = world.registry.key(world.signers["token"].kid)
    assert entry is not None
    public = x509.load_der_x509_certificate(entry.certificate).public_key()
    secret = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return world.forge(
        {"alg": "HS256", "kid": world.signers["token"].kid, "typ": "JWT"},
        signer=lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )


def alg_none(world: World, signature: bytes) -> str:
    return world.forge(
        {"alg": "none", "kid": world.signers["token"].kid, "typ": "JWT"},
        signer=lambda _: signature,
    )


def oversized(world: World) -> str:
    return world.token({"padding": "x" * MAX_TOKEN_BYTES})


iat = int(ISSUED.timestamp())
now_ts = int(NOW.timestamp())


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[World], str]
    reason: str
    fragment: str  # in the message
    verify: dict[str, Any] = dataclasses.field(default_factory=dict)


CASES = [
    Case(
        "expired",
        lambda w: w.token({"iat": now_ts - 400, "exp": now_ts - 100}),
        TOKEN_EXPIRED,
        "expired",
    ),
    Case(
        "expired-beyond-leeway-only",
        lambda w: w.token({"iat": now_ts - 300, "exp": now_ts - 31}),
        TOKEN_EXPIRED,
        "expired",
    ),
    Case(
        "lifetime-over-5-minutes",
        lambda w: w.token({"exp": iat + 301}),
        TOKEN_INVALID,
        "longer than the 300 seconds",
    ),
    Case(
        "exp-before-iat", lambda w: w.token({"exp": iat - 1}), TOKEN_INVALID, "before it was issued"
    ),
    Case(
        "issued-in-the-future",
        lambda w: w.token({"iat": now_ts + 60, "exp": now_ts + 120}),
        TOKEN_INVALID,
        "in the future",
    ),
    Case(
        "not-before-in-the-future",
        lambda w: w.token({"nbf": now_ts + 60}),
        TOKEN_INVALID,
        "not valid yet",
    ),
    Case("exp-not-a-number", lambda w: w.token({"exp": "soon"}), TOKEN_INVALID, "'exp'"),
    Case("iat-a-boolean", lambda w: w.token({"iat": True}), TOKEN_INVALID, "'iat'"),
    *(
        Case(
            f"missing-{claim}",
            lambda w, claim=claim: w.token({claim: DROP}),
            TOKEN_INVALID,
            f"'{claim}'",
        )
        for claim in ("exp", "iat", "aud", "iss", "jti", "sub", "agency")
    ),
    Case("empty-sub", lambda w: w.token({"sub": ""}), TOKEN_INVALID, "'sub'"),
    Case("sub-with-a-newline", lambda w: w.token({"sub": "a\nb"}), TOKEN_INVALID, "'sub'"),
    Case("jti-lone-surrogate", lambda w: w.token({"jti": "\ud800"}), TOKEN_INVALID, "'jti'"),
    Case(
        "cnf-lone-surrogate",
        lambda w: w.token({"cnf": {"x5t#S256": "\udc00"}}),
        TOKEN_BINDING_MISMATCH,
        "TLS client certificate",
    ),
    Case("sub-not-a-string", lambda w: w.token({"sub": 7}), TOKEN_INVALID, "token is malformed"),
    Case(
        "aud-of-another-regions-gateway",
        lambda w: w.token({"aud": audience_for("510000")}),
        TOKEN_INVALID,
        "not for the gateway of region 330000",
    ),
    Case(
        "aud-a-list",
        lambda w: w.token({"aud": [audience_for(REGION), audience_for("510000")]}),
        TOKEN_INVALID,
        "not for the gateway",
    ),
    Case(
        "verified-by-another-regions-gateway",
        lambda w: w.token(),
        TOKEN_INVALID,
        "not for the gateway of region 510000",
        {"region": "510000"},
    ),
    Case(
        "iss-of-another-region",
        lambda w: w.token({"iss": issuer_for("510000")}),
        TOKEN_INVALID,
        "identity service of region 330000",
    ),
    Case("alg-none-unsigned", lambda w: alg_none(w, b""), TOKEN_INVALID, "not a compact JWS"),
    Case(
        "alg-none-with-a-signature",
        lambda w: alg_none(w, b"\x00" * 64),
        TOKEN_INVALID,
        "not ES256 or EdDSA",
    ),
    Case("hs256-with-the-public-key", hs256_with_public_key, TOKEN_INVALID, "not ES256 or EdDSA"),
    Case(
        "alg-es256-on-an-eddsa-key",
        lambda w: w.token(signer="eddsa token", header={"alg": "ES256"}),
        TOKEN_INVALID,
        "does not sign with the token's algorithm",
    ),
    Case(
        "kid-unknown",
        lambda w: w.token(header={"kid": b64url(b"\x01" * 32)}),
        TOKEN_INVALID,
        "unknown to registry",
    ),
    Case("kid-missing", lambda w: w.token(header={"kid": DROP}), TOKEN_INVALID, "no key (kid)"),
    Case("kid-not-a-string", lambda w: w.token(header={"kid": 5}), TOKEN_INVALID, "header"),
    Case("typ-not-jwt", lambda w: w.token(header={"typ": "JOSE"}), TOKEN_INVALID, "not JWT"),
    Case(
        "crit-header",
        lambda w: w.token(header={"crit": ["exp"], "exp": 1}),
        TOKEN_INVALID,
        "header",
    ),
    Case(
        "kid-of-a-seal-key",
        lambda w: w.token(signer="seal"),
        TOKEN_INVALID,
        "is a seal key, not a token key",
    ),
    Case(
        "kid-of-an-agency-seal-key",
        lambda w: w.token(signer="agency seal"),
        TOKEN_INVALID,
        "not a token key",
    ),
    Case(
        "kid-of-another-regions-token-key",
        lambda w: w.token(signer="510000 token"),
        TOKEN_INVALID,
        "token key of 510000, not of the caller's region 330000",
    ),
    Case(
        "another-regions-token-key-and-issuer",
        lambda w: w.token({"iss": issuer_for("510000")}, signer="510000 token"),
        TOKEN_INVALID,
        "token key of 510000",
    ),
    Case(
        "token-key-revoked-before-iat",
        lambda w: w.token(signer="revoked token"),
        TOKEN_INVALID,
        "was revoked",
    ),
    Case(
        "signed-by-another-key-with-the-right-kid",
        lambda w: w.token(signer="impostor"),
        TOKEN_INVALID,
        "signature does not verify",
    ),
    Case(
        "payload-altered-after-signing",
        lambda w: (
            w.token().split(".")[0]
            + "."
            + b64url(json.dumps(w.claims({"sub": "李四"})).encode())
            + "."
            + w.token().split(".")[2]
        ),
        TOKEN_INVALID,
        "signature does not verify",
    ),
    Case(
        "agency-mismatch",
        lambda w: w.token({"agency": "zj.hsa"}),
        TOKEN_BINDING_MISMATCH,
        "another agency",
    ),
    Case(
        "caller-of-another-agency",
        lambda w: w.token(),
        TOKEN_BINDING_MISMATCH,
        "another agency",
        {"caller_agency": "zj.hsa"},
    ),
    Case(
        "caller-of-another-region",
        lambda w: w.token(),
        TOKEN_INVALID,
        "not of the caller's region 510000",
        {"caller_region": "510000", "caller_agency": "sc.hrss"},
    ),
    Case(
        "cnf-missing",
        lambda w: w.token({"cnf": DROP}),
        TOKEN_BINDING_MISMATCH,
        "not bound to the caller's TLS client certificate",
    ),
    Case(
        "cnf-not-an-object",
        lambda w: w.token({"cnf": "x"}),
        TOKEN_BINDING_MISMATCH,
        "TLS client certificate",
    ),
    Case(
        "cnf-without-x5t",
        lambda w: w.token({"cnf": {"jkt": "x"}}),
        TOKEN_BINDING_MISMATCH,
        "TLS client certificate",
    ),
    Case(
        "cnf-of-another-certificate",
        lambda w: w.token({"cnf": {"x5t#S256": w.thumbprints["zj.hsa"]}}),
        TOKEN_BINDING_MISMATCH,
        "TLS client certificate",
    ),
    Case(
        "presented-over-another-certificate",
        lambda w: w.token(),
        TOKEN_BINDING_MISMATCH,
        "TLS client certificate",
        {"client_thumbprint": "another"},
    ),
    Case("garbage", lambda w: "not a token", TOKEN_INVALID, "not a compact JWS"),
    Case("empty", lambda w: "", TOKEN_INVALID, "not a compact JWS"),
    Case("three-junk-parts", lambda w: "abc.def.ghi", TOKEN_INVALID, "header cannot be read"),
    Case(
        "header-not-an-object",
        lambda w: f"{b64url(b'[1]')}.{b64url(b'{}')}.{b64url(b'sig')}",
        TOKEN_INVALID,
        "header cannot be read",
    ),
    Case(
        "payload-not-json",
        lambda w: w.forge({"alg": "ES256", "kid": w.signers["token"].kid}, payload=b"not json"),
        TOKEN_INVALID,
        "malformed",
    ),
    Case("oversized", oversized, TOKEN_INVALID, f"larger than {MAX_TOKEN_BYTES} bytes"),
    Case("bearer-prefix-left-on", lambda w: "Bearer " + w.token(), TOKEN_INVALID, "compact JWS"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refusals(world: World, case: Case) -> None:
    token = case.make(world)
    with pytest.raises(TokenError) as caught:
        world.verify(token, **case.verify)
    error = caught.value
    assert error.reason == case.reason, str(error)
    message = str(error)
    assert case.fragment in message
    assert message.count(". ") == 0
    assert "\n" not in message
    # The token never appears in a message, not even one of its parts.
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in message


def test_a_revoked_key_verifies_its_tokens_only_until_the_revocation(world: World) -> None:
    """A token made before the revocation passes `check_may_verify(iat)`; the key is also
    checked at the current time, so once the revocation time has passed the token is refused."""
    token = world.token(
        {"iat": int(REVOKED_AT.timestamp()) - 100, "exp": int(REVOKED_AT.timestamp()) + 100},
        signer="revoked token",
    )
    clock = Clock(REVOKED_AT - timedelta(seconds=50))
    assert world.verify(token, clock=clock).kid == world.signers["revoked token"].kid
    clock = Clock(REVOKED_AT + timedelta(seconds=10))
    with pytest.raises(TokenError, match="was revoked") as caught:
        world.verify(token, clock=clock)
    assert caught.value.reason == TOKEN_INVALID


def test_within_leeway_an_expired_token_still_passes(world: World) -> None:
    token = world.token({"iat": now_ts - 310, "exp": now_ts - 10})
    assert world.verify(token).expires_at == datetime.fromtimestamp(now_ts - 10, UTC)


# -- the cache --------------------------------------------------------------------------------


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every `jwt.decode` call the verifier makes (one per token actually verified)."""
    calls: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


def test_a_second_verify_is_a_cache_hit(world: World, decodes: list[str]) -> None:
    verifier = TokenVerifier(region=REGION, clock=Clock())
    token = world.token()
    first = world.verify(token, verifier=verifier)
    assert len(decodes) == 1
    assert world.verify(token, verifier=verifier) is first
    assert len(decodes) == 1
    assert verifier.cached == 1
    # The cache is keyed by the caller and its certificate too: no shortcut for anyone else.
    with pytest.raises(TokenError) as caught:
        world.verify(token, verifier=verifier, client_thumbprint=world.thumbprints["zj.hsa"])
    assert caught.value.reason == TOKEN_BINDING_MISMATCH
    with pytest.raises(TokenError) as caught:
        world.verify(token, verifier=verifier, caller_agency="zj.hsa")
    assert caught.value.reason == TOKEN_BINDING_MISMATCH
    assert len(decodes) == 3
    # Refusals are never cached.
    with pytest.raises(TokenError):
        world.verify(token, verifier=verifier, caller_agency="zj.hsa")
    assert len(decodes) == 4


def test_the_cache_forgets_a_token_at_its_expiry(world: World, decodes: list[str]) -> None:
    clock = Clock()
    verifier = TokenVerifier(region=REGION, clock=clock)
    token = world.token()  # exp = ISSUED + 300 s; NOW = ISSUED + 60 s
    world.verify(token, verifier=verifier)
    clock.advance(240 + 29)  # exp passed, but within the leeway
    world.verify(token, verifier=verifier)
    assert len(decodes) == 1
    clock.advance(1)
    with pytest.raises(TokenError) as caught:
        world.verify(token, verifier=verifier)
    assert caught.value.reason == TOKEN_EXPIRED
    assert token not in str(caught.value)
    assert verifier.cached == 0
    assert len(decodes) == 1  # refused from the cache, before any decode


def test_the_cache_is_emptied_when_the_registry_version_changes(
    world: World, decodes: list[str]
) -> None:
    verifier = TokenVerifier(region=REGION, clock=Clock())
    token = world.token()
    world.verify(token, verifier=verifier)
    newer = dataclasses.replace(world.registry, version=world.registry.version + 1)
    world.verify(token, verifier=verifier, registry=newer)
    assert len(decodes) == 2
    world.verify(token, verifier=verifier, registry=newer)
    assert len(decodes) == 2


def test_a_cached_token_is_refused_once_its_key_is_revoked_and_published(
    tmp_path: Path,
) -> None:
    """End to end: the revocation arrives as a new registry version, which empties the cache."""
    fed = make_federation(tmp_path, now=T0)
    fed.publish(now=PUBLISHED)
    record = fed.inventory().get(fed.active(REGION, KeyUsage.TOKEN))
    key = load_private_key(fed.pki / record.private_key)
    thumbprint = tls_thumbprint(fed, AGENCY)
    token = issue_token(
        key,
        record.kid,
        region=REGION,
        operator=OPERATOR,
        agency=AGENCY,
        thumbprint=thumbprint,
        now=ISSUED,
    )
    clock = Clock()
    verifier = TokenVerifier(region=REGION, clock=clock)
    arguments: dict[str, Any] = {
        "caller_agency": AGENCY,
        "caller_region": REGION,
        "client_thumbprint": thumbprint,
    }
    before = read_registry(fed)
    verifier.verify(token, registry=before, **arguments)
    inventory = fed.inventory()
    inventory.revoke(record.kid, at=ISSUED - timedelta(seconds=1), reason="keyCompromise")
    inventory.save()
    fed.publish(now=NOW)
    after = read_registry(fed)
    assert after.version == before.version + 1
    verifier.verify(token, registry=before, **arguments)  # the old version: still cached
    with pytest.raises(TokenError, match="was revoked") as caught:
        verifier.verify(token, registry=after, **arguments)
    assert caught.value.reason == TOKEN_INVALID


def test_the_cache_is_bounded(world: World, decodes: list[str]) -> None:
    verifier = TokenVerifier(region=REGION, clock=Clock(), max_cached=2)
    tokens = [world.token({"jti": f"t{i}"}) for i in range(3)]
    for token in tokens:
        world.verify(token, verifier=verifier)
    assert verifier.cached == 2
    world.verify(tokens[2], verifier=verifier)  # the newest stayed
    assert len(decodes) == 3
    world.verify(tokens[0], verifier=verifier)  # the oldest was dropped
    assert len(decodes) == 4


def test_a_full_cache_drops_expired_entries_first(world: World, decodes: list[str]) -> None:
    clock = Clock()
    verifier = TokenVerifier(region=REGION, clock=clock, max_cached=2)
    short = world.token({"jti": "short", "exp": iat + 90})  # expires 30 s after NOW
    long = world.token({"jti": "long"})
    world.verify(short, verifier=verifier)
    world.verify(long, verifier=verifier)
    world.verify(short, verifier=verifier)  # short is the most recently used, yet...
    clock.advance(90)  # ...it has expired (beyond the leeway), and long has not
    world.verify(world.token({"jti": "new"}), verifier=verifier)
    assert verifier.cached == 2
    world.verify(long, verifier=verifier)
    assert len(decodes) == 3  # long was kept (not the least recently used): short made room


# -- tongban token issue ----------------------------------------------------------------------


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("COLUMNS", "250")

    def invoke(*argv: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """A federation made now: the CLI signs with the real time."""
    fed = make_federation(tmp_path_factory.mktemp("live"))
    fed.publish()
    return fed


@pytest.mark.parametrize(("agency", "region"), [("zj.hrss", "330000"), ("sc.hsa", "510000")])
def test_cli_token_issue_verifies(run: Run, live: Federation, agency: str, region: str) -> None:
    code, out, err = run(
        "token", "issue", "--pki", live.pki, "--agency", agency, "--operator", OPERATOR,
        "--lifetime", "2m",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.endswith("\n")
    assert out.count("\n") == 1
    token = out.strip()
    claims = TokenVerifier(region=region, clock=lambda: datetime.now(UTC)).verify(
        token,
        registry=read_registry(live),
        caller_agency=agency,
        caller_region=region,
        client_thumbprint=tls_thumbprint(live, agency),
    )
    assert (claims.operator, claims.agency, claims.region) == (OPERATOR, agency, region)
    assert claims.expires_at - claims.issued_at == timedelta(minutes=2)
    assert claims.kid == live.active(region, KeyUsage.TOKEN)
    assert abs(claims.issued_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_cli_token_issue_default_lifetime_is_5_minutes(run: Run, live: Federation) -> None:
    code, out, _ = run("token", "issue", "--pki", live.pki, "--agency", AGENCY, "--operator", "x")
    assert code == 0
    claims = jwt.decode(out.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 300


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        pytest.param(["--agency", "nobody"], 1, "'nobody' is not an agency", id="unknown-agency"),
        pytest.param(["--agency", "330000"], 1, "is a region, not an agency", id="region"),
        pytest.param(["--lifetime", "301s"], 2, "at most 300s", id="lifetime-301s"),
        pytest.param(["--lifetime", "6m"], 2, "at most 300s", id="lifetime-6m"),
        pytest.param(["--lifetime", "0s"], 2, "more than 0", id="lifetime-0"),
        pytest.param(["--lifetime", "soon"], 2, "not a duration", id="lifetime-words"),
        pytest.param(["--operator", ""], 2, "one non-empty line", id="no-operator"),
        pytest.param(["--operator", "a\nb"], 2, "one non-empty line", id="two-line-operator"),
        pytest.param(
            ["--passphrase-env", "TB_TEST_PASSPHRASE"],
            1,
            "not encrypted, but a passphrase was given",
            id="passphrase-for-a-plain-key",
        ),
    ],
)
def test_cli_token_issue_errors(
    run: Run,
    live: Federation,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    code: int,
    fragment: str,
) -> None:
    monkeypatch.setenv("TB_TEST_PASSPHRASE", "secret")
    defaults = {"--agency": AGENCY, "--operator": OPERATOR}
    for option, value in zip(argv[::2], argv[1::2], strict=True):
        defaults.pop(option, None)
        defaults[option] = value
    arguments = [item for pair in defaults.items() for item in pair]
    got, out, err = run("token", "issue", "--pki", live.pki, *arguments)
    assert got == code
    assert out == ""
    assert err.count("\n") == 1
    assert fragment in err
    assert "Traceback" not in err


def test_cli_token_issue_on_a_missing_pki(run: Run, tmp_path: Path) -> None:
    code, out, err = run(
        "token", "issue", "--pki", tmp_path, "--agency", AGENCY, "--operator", OPERATOR
    )
    assert (code, out) == (1, "")
    assert "no key inventory" in err


def test_cli_token_help(run: Run) -> None:
    code, out, err = run("token", "issue", "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: tongban token issue")
    assert "--lifetime" in out
