"""The consent artefact (`tongban-consent+jwt`): what a citizen allowed, signed by the identity
service of the citizen's home region with that region's registry `token` key (the key that
signs its request tokens), in the project's signed JSON (`signer.sign_json`, a compact JWS).

Claims (all required but `agencies`/`regions`, of which at least one is not empty)::

    jti        the consent id (8 to 64 characters: letters, digits, '-', '_')
    iss        urn:tongban:idp:<home region>: the home region's identity service
    sub        the citizen id (GB 11643) or USCC; never logged, never audited
    agencies   registry ids of the agencies that may ask
    regions    GB/T 2260 codes of the regions whose agencies may ask
    purpose    registry id of the purpose
    datasets   [{"region", "dataset", "fields": [...]}]: what may be asked, field by field
    nbf, exp   from when until when (seconds since the epoch)
    iat        when it was issued
    max_uses   how many queries it allows in all (counted by the owners' gateways)
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gateway._errors import GatewayError
from gateway._identity_keys import jwt_algorithm, registry_token_key
from gateway.applicant_ids import is_applicant_id
from gateway.tokens import ISSUER_PREFIX, LEEWAY_SECONDS, issuer_for
from registry import (
    Inventory,
    KeyEntry,
    KeyRefused,
    KeyState,
    KeyUsage,
    Registry,
    is_region_code,
    is_registry_id,
)
from signer import (
    PrivateKey,
    PublicKey,
    SignedJsonRefused,
    canonical_json,
    key_reference,
    open_signing_key,
    sign_json,
    verify_json,
)

__all__ = [
    "CONSENT_ALGORITHMS",
    "CONSENT_TYPE",
    "MAX_CONSENT_BYTES",
    "ConsentClaims",
    "ConsentError",
    "ConsentScope",
    "is_consent_id",
    "issue_consent",
    "issue_region_consent",
    "read_consent",
]

CONSENT_TYPE: Final = "tongban-consent+jwt"
CONSENT_ALGORITHMS: Final = ("ES256", "EdDSA")
MAX_CONSENT_BYTES: Final = 8 * 1024  # a consent of 20 datasets is ~3 KiB
MAX_LIST_ITEMS: Final = 64  # agencies, regions, datasets, fields of one dataset
_CONSENT_ID: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")
_CLAIMS: Final = frozenset(
    {"jti", "iss", "sub", "agencies", "regions", "purpose", "datasets", "nbf", "exp", "iat"}
    | {"max_uses"}
)


def is_consent_id(value: str) -> bool:
    """The consent-id grammar: 8 to 64 characters, letters, digits, '-' and '_'."""
    return _CONSENT_ID.fullmatch(value) is not None


class ConsentError(GatewayError):
    """A consent refused: `reason` is one of the CONSENT_* reasons; `consent_id` is the
    consent's id once its signature verified ("" before). The message never holds the
    subject."""

    def __init__(self, reason: str, message: str, consent_id: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.consent_id = consent_id


def _invalid(message: str) -> ConsentError:
    return ConsentError("CONSENT_INVALID", message)


@dataclass(frozen=True, slots=True)
class ConsentScope:
    """One dataset a consent covers, and its fields."""

    region: str
    dataset: str
    fields: frozenset[str]

    @property
    def name(self) -> str:
        return f"{self.region}/{self.dataset}"


@dataclass(frozen=True, slots=True)
class ConsentClaims:
    """What a verified consent says."""

    consent_id: str
    region: str  # the home region, whose identity service signed it
    subject: str  # the citizen id: never logged, never audited
    agencies: frozenset[str]
    regions: frozenset[str]
    purpose: str
    datasets: tuple[ConsentScope, ...]
    not_before: datetime
    expires_at: datetime
    issued_at: datetime
    max_uses: int
    kid: str

    def scope(self, region: str, dataset: str) -> ConsentScope | None:
        return next((d for d in self.datasets if (d.region, d.dataset) == (region, dataset)), None)


def issue_consent(
    key: PrivateKey,
    kid: str,
    *,
    region: str,
    subject: str,
    purpose: str,
    datasets: Sequence[tuple[str, str, Sequence[str]]],
    not_before: datetime,
    expires_at: datetime,
    max_uses: int,
    now: datetime,
    agencies: Sequence[str] = (),
    regions: Sequence[str] = (),
    consent_id: str | None = None,
) -> str:
    """What the home region's identity service signs once the citizen agreed: a consent of
    `subject` for `purpose` over `datasets` ((region, dataset, fields) each), asked by
    `agencies` or agencies of `regions`, valid from `not_before` until `expires_at`, for
    `max_uses` queries; signed with `region`'s token key `key` (`kid`). ValueError when a
    value is outside its grammar."""
    algorithm = jwt_algorithm(key, "a consent")
    consent_id = consent_id or secrets.token_urlsafe(16)
    if not is_consent_id(consent_id):
        raise ValueError("a consent id is 8 to 64 letters, digits, '-' or '_'")
    if not is_applicant_id(subject):
        raise ValueError("the subject is not a citizen id (GB 11643) or USCC (GB 32100)")
    if not is_region_code(region) or not all(is_region_code(r) for r in regions):
        raise ValueError("a region is a six-digit GB/T 2260 code")
    if not agencies and not regions:
        raise ValueError("a consent names the agencies or regions that may ask")
    if not all(is_registry_id(a) for a in agencies) or not is_registry_id(purpose):
        raise ValueError("agencies and the purpose are registry ids")
    if not datasets or not all(
        is_region_code(r) and is_registry_id(d) and f and all(is_registry_id(x) for x in f)
        for r, d, f in datasets
    ):
        raise ValueError("a consent lists datasets as (region, dataset, fields), fields given")
    if not 1 <= max_uses <= 1_000_000:
        raise ValueError("max_uses is 1 to 1000000")
    if not now.tzinfo or not not_before.tzinfo or not expires_at.tzinfo:
        raise ValueError("consent times carry a time zone")
    if expires_at <= not_before:
        raise ValueError("a consent expires after it starts")
    claims: dict[str, Any] = {
        "jti": consent_id,
        "iss": issuer_for(region),
        "sub": subject,
        "agencies": sorted(set(agencies)),
        "regions": sorted(set(regions)),
        "purpose": purpose,
        "datasets": [{"region": r, "dataset": d, "fields": sorted(set(f))} for r, d, f in datasets],
        "nbf": int(not_before.timestamp()),
        "exp": int(expires_at.timestamp()),
        "iat": int(now.timestamp()),
        "max_uses": max_uses,
    }
    return sign_json(
        canonical_json(claims), key, typ=CONSENT_TYPE, kid=kid, algorithms=(algorithm,)
    )


def issue_region_consent(
    pki_root: Path, region: str, *, passphrase: bytes | None = None, **claims: Any
) -> str:
    """`issue_consent` with `region`'s active token key from a PKI folder's key inventory
    (what `tongban consent issue` does). ValueError says what is missing."""
    inventory = Inventory.load(pki_root)
    token_keys = inventory.find(region, KeyUsage.TOKEN, KeyState.ACTIVE)
    if not token_keys:
        raise ValueError(f"region {region} has no active token key in {inventory.path}")
    entry = token_keys[-1]
    key = open_signing_key(key_reference(entry.located_private_key(), pki_root), passphrase)
    return issue_consent(key, entry.kid, region=region, **claims)


def _texts(claims: Mapping[str, Any], name: str, grammar: Any) -> frozenset[str]:
    value = claims.get(name)
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST_ITEMS
        or not all(isinstance(v, str) and grammar(v) for v in value)
    ):
        raise _invalid(f"the consent's {name!r} claim is not a list of ids")
    return frozenset(value)


def _time(claims: Mapping[str, Any], name: str) -> datetime:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 40:
        raise _invalid(f"the consent's {name!r} claim is not a time")
    return datetime.fromtimestamp(value, UTC)


def _scopes(claims: Mapping[str, Any]) -> tuple[ConsentScope, ...]:
    value = claims.get("datasets")
    if not isinstance(value, list) or not 0 < len(value) <= MAX_LIST_ITEMS:
        raise _invalid("the consent's 'datasets' claim is not a list of datasets")
    scopes = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"region", "dataset", "fields"}:
            raise _invalid("a dataset of the consent is {region, dataset, fields}")
        region, dataset = item["region"], item["dataset"]
        if not (isinstance(region, str) and is_region_code(region)) or not (
            isinstance(dataset, str) and is_registry_id(dataset)
        ):
            raise _invalid("a dataset of the consent has no region code or dataset id")
        scopes.append(ConsentScope(region, dataset, _texts(item, "fields", is_registry_id)))
    return tuple(scopes)


def read_consent(artefact: str, registry: Registry, now: datetime) -> ConsentClaims:
    """The claims of `artefact`, or ConsentError (CONSENT_INVALID) saying why not.

    (1) a compact JWS of at most MAX_CONSENT_BYTES, `typ` CONSENT_TYPE, ES256 or EdDSA
    (2) its kid names a token key of a region in `registry` (the kid is a hint: the key is the
        registry's), whose certificate's key type is the algorithm's
    (3) the signature verifies with that key (`signer.verify_json`)
    (4) exactly the claims of the format, each in its grammar; `iss` is the identity service
        of the key's region (the home region)
    (5) the key may verify a consent made at `iat`, and now
    (6) times against `now` with the request tokens' leeway: `iat` not in the future, `nbf`
        reached, `exp` not passed
    """
    if not isinstance(artefact, str) or len(artefact) > MAX_CONSENT_BYTES:
        raise _invalid(f"a consent is a compact JWS of at most {MAX_CONSENT_BYTES} bytes")
    found: list[KeyEntry] = []

    def key_for(header: Mapping[str, Any]) -> PublicKey:  # (2)
        entry, public = registry_token_key(
            header, registry, region=None, what="the consent", refuse=_invalid
        )
        found.append(entry)
        return public

    try:  # (1), (3)
        verified = verify_json(
            artefact,
            key_for=key_for,
            algorithms=CONSENT_ALGORITHMS,
            typ=CONSENT_TYPE,
            typ_required=True,
            max_bytes=MAX_CONSENT_BYTES,
            what="the consent",
        )
    except SignedJsonRefused as exc:
        raise _invalid(f"the consent does not verify: {exc}") from exc
    except ConsentError:
        raise
    entry = found[0]
    consent = _claims_of(verified.payload, entry)  # (4)
    try:  # (5)
        entry.check_may_verify(consent.issued_at)
        entry.check_may_verify(now)
    except KeyRefused as exc:
        raise _invalid(f"token key {entry.kid} may not verify this consent: {exc}") from exc
    # (6)
    stamp = now.timestamp()
    if max(consent.issued_at, consent.not_before).timestamp() > stamp + LEEWAY_SECONDS:
        raise ConsentError("CONSENT_INVALID", "the consent is not valid yet", consent.consent_id)
    if consent.expires_at.timestamp() <= stamp - LEEWAY_SECONDS:
        raise ConsentError("CONSENT_INVALID", "the consent has expired", consent.consent_id)
    return consent


def _claims_of(payload: bytes, entry: KeyEntry) -> ConsentClaims:
    """(4) of `read_consent`: the verified payload's claims, each in its grammar."""
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise _invalid("the consent's payload is not JSON") from exc
    if not isinstance(claims, dict) or set(claims) != _CLAIMS:
        raise _invalid(f"a consent has exactly the claims {sorted(_CLAIMS)}")
    consent_id, subject, purpose = claims["jti"], claims["sub"], claims["purpose"]
    if not isinstance(consent_id, str) or not is_consent_id(consent_id):
        raise _invalid("the consent's 'jti' is not a consent id")
    if claims["iss"] != issuer_for(entry.region) or not str(claims["iss"]).startswith(
        ISSUER_PREFIX
    ):
        raise _invalid("the consent's issuer is not the identity service of its key's region")
    if not isinstance(subject, str) or not is_applicant_id(subject):
        raise _invalid("the consent's subject is not a citizen id or USCC")
    if not isinstance(purpose, str) or not is_registry_id(purpose):
        raise _invalid("the consent's purpose is not a registry id")
    max_uses = claims["max_uses"]
    if isinstance(max_uses, bool) or not isinstance(max_uses, int) or not max_uses >= 1:
        raise _invalid("the consent's 'max_uses' is not a positive integer")
    agencies = _texts(claims, "agencies", is_registry_id)
    regions = _texts(claims, "regions", is_region_code)
    if not agencies and not regions:
        raise _invalid("the consent names no agency or region that may ask")
    return ConsentClaims(
        consent_id=consent_id,
        region=entry.region,
        subject=subject,
        agencies=agencies,
        regions=regions,
        purpose=purpose,
        datasets=_scopes(claims),
        not_before=_time(claims, "nbf"),
        expires_at=_time(claims, "exp"),
        issued_at=_time(claims, "iat"),
        max_uses=max_uses,
        kid=entry.kid,
    )
