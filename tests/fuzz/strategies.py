"""Hypothesis strategies for adversarial Tongban requests (importable as `fuzz.strategies`).

Every strategy draws plain data; anything that depends on the time (tokens) or must be fresh
(request ids) is a small recipe object built just before the call, so that Hypothesis can replay
and shrink an example and its printed form says what was sent.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from tongban.v1 import exchange_pb2

REGIONS = ("330000", "510000", "500000")
DATASETS = (
    "si.participation",
    "medical.insurance",
    "hukou.household",
    "market.business_licence",
    "civil.marriage",
)
PURPOSES = ("SI-TRANSFER", "MED-REG", "HUKOU-TRANSFER", "LICENCE-VERIFY", "MARRIAGE-CHECK")
FIELDS = (
    "name",
    "citizen_id",
    "insured_since",
    "insurance_types",
    "contribution_months",
    "employer_name",
    "status",
    "marital_status",
    "gender",
    "birth_date",
)
AGENCIES = ("sc.hrss", "sc.amr", "sc.psb", "sc.data", "zj.hrss", "zj.data", "cq.psb", "cq.hrss")
CREDENTIAL_TYPES = ("business_licence", "marriage_certificate")
GRPC_SOFT_METADATA_LIMIT = 8 * 1024  # bytes: gRPC may refuse more headers than this

ASCII_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
# Strings a protobuf string field can carry (valid UTF-8: no lone surrogates).
UNICODE = st.characters(codec="utf-8")
ODD_STRINGS = (
    "\x00",
    "\n",
    "330000\n",
    "٣٣٠٠٠٠",  # Arabic-Indic digits: \d matches them
    "３３００００",  # full-width digits
    "²",  # isdigit() but not int()
    "\u202eevil",  # right-to-left override
    "e\u0301",  # combining accent
    "\ufeff",  # BOM
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "🀄" * 40,
    "' OR 1=1 --",
    "%s%n%x",
    "../../etc/passwd",
    "${jndi:ldap://x}",
    "\u2028\u2029",
    "-1",
    "9999999999999999999999999999999999999999",
)


def huge_strings(min_size: int = 1_000, max_size: int = 200_000) -> st.SearchStrategy[str]:
    """Long strings made cheaply: a short unit repeated."""
    return st.builds(
        lambda unit, size: (unit * (size // max(len(unit), 1) + 1))[:size],
        st.text(UNICODE, min_size=1, max_size=4),
        st.integers(min_size, max_size),
    )


def texts(*good: str, huge: bool = True) -> st.SearchStrategy[str]:
    """A string field: good values, empty, random, odd, and (optionally) huge strings."""
    options: list[st.SearchStrategy[str]] = [
        st.just(""),
        st.text(UNICODE, max_size=24),
        st.text(ASCII_PRINTABLE, max_size=80),
        st.sampled_from(ODD_STRINGS),
        st.integers(1, 6_000).map(lambda n: "0" * n),
    ]
    if good:
        options.insert(0, st.sampled_from(good))
        options.append(st.sampled_from(good).map(lambda s: s + "\n"))
        options.append(st.sampled_from(good).map(str.upper))
    if huge:
        options.append(huge_strings())
    return st.one_of(options)


def timestamps() -> st.SearchStrategy[Timestamp | None]:
    """Unset, plausible, or any int64 seconds / int32 nanos at all (out of range included)."""
    return st.one_of(
        st.none(),
        st.builds(
            lambda s, n: Timestamp(seconds=s, nanos=n),
            st.integers(0, 4_102_444_800),
            st.integers(0, 999_999_999),
        ),
        st.builds(
            lambda s, n: Timestamp(seconds=s, nanos=n),
            st.integers(-(2**63), 2**63 - 1),
            st.integers(-(2**31), 2**31 - 1),
        ),
    )


UINT64 = st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1), st.just(2**64 - 1))
UINT32 = st.one_of(st.integers(0, 2_000), st.integers(0, 2**32 - 1))
INT32 = st.one_of(st.integers(-3, 5), st.integers(-(2**31), 2**31 - 1))


# -- request ids -----------------------------------------------------------------------------------
FRESH = "<fresh>"  # replaced by a new random id at send time


def request_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(FRESH),
        st.just(FRESH),
        texts(huge=False),
        st.text(ASCII_PRINTABLE, min_size=120, max_size=140),  # around the 128 limit
        huge_strings(129, 5_000),
    )


def fresh(value: str) -> str:
    return f"fuzz-{secrets.token_hex(8)}" if value == FRESH else value


# -- raw wire bytes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Raw:
    """Bytes sent as the request message instead of a serialized message."""

    data: bytes

    def __repr__(self) -> str:
        return f"Raw({self.data[:200]!r}{'...' if len(self.data) > 200 else ''} [{len(self.data)} bytes])"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def raw_messages(example: bytes) -> st.SearchStrategy[Raw]:
    """Malformed or odd protobuf: random bytes, a real message truncated or with bytes flipped,
    a string field (1..7) holding invalid UTF-8, lengths past the end, deep group nesting,
    unknown fields, and a wire-type mismatch."""

    def flipped(data: bytes, positions: list[int], values: list[int]) -> bytes:
        if not data:
            return data
        buf = bytearray(data)
        for p, v in zip(positions, values, strict=False):
            buf[p % len(buf)] = v
        return bytes(buf)

    return st.one_of(
        st.binary(max_size=64).map(Raw),
        st.integers(0, max(len(example) - 1, 0)).map(lambda n: Raw(example[:n])),
        st.builds(
            lambda p, v: Raw(flipped(example, p, v)),
            st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
            st.lists(st.integers(0, 255), min_size=1, max_size=4),
        ),
        st.builds(
            lambda number, junk: Raw(
                example + bytes([(number << 3) | 2]) + _varint(len(junk)) + junk
            ),
            st.integers(1, 7),
            st.sampled_from(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"abc\x80", b"\xf8\x88\x80\x80\x80"]
            ),
        ),
        st.builds(
            lambda number, claimed: Raw(bytes([(number << 3) | 2]) + _varint(claimed) + b"x"),
            st.integers(1, 7),
            st.integers(2, 2**35),
        ),
        st.integers(1, 200_000).map(lambda depth: Raw(b"\x0b" * depth + b"\x0c" * depth)),
        st.builds(
            lambda number, value: Raw(example + _varint(number << 3) + _varint(value)),
            st.integers(8, 2**29 - 1),
            st.integers(0, 2**64 - 1),
        ),
        st.integers(1, 7).map(lambda number: Raw(_varint((number << 3) | 5) + b"\x00\x00\x00\x00")),
    )


# -- authorization metadata ---------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    """A request token crafted at send time with the caller's region's real token key.

    claims_edit: claim -> value to set (the sentinel "<delete>" removes it).
    header_edit: header field -> value (None removes it).
    payload: when set, the JWS payload instead of the claims (any JSON value, or raw bytes).
    signature: "good", "empty", "random", "truncated", "other-region" (signed by another
    region's token key, with that kid).
    shape: post-processing of the compact form: "", "truncate:N", "append-part", "double-dot",
    "pad:N" (claims padded to about N bytes), "none" (alg none, no signature).
    """

    agency: str = "sc.hrss"
    claims_edit: dict[str, Any] = field(default_factory=dict)
    header_edit: dict[str, Any] = field(default_factory=dict)
    payload: Any = None
    signature: str = "good"
    shape: str = ""
    scheme: str = "Bearer "


@dataclass(frozen=True)
class Metadata:
    """The call's metadata: a token recipe (or None), and extra (key, value) pairs."""

    token: Token | None = None
    authorization: str | None = None  # a literal authorization value instead of a token
    extra: tuple[tuple[str, str | bytes], ...] = ()


DELETE = "<delete>"
CLAIMS = ("iss", "sub", "agency", "aud", "iat", "exp", "jti", "cnf", "nbf")


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Any JSON value: wrong types for every claim, NaN and infinities included."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(UNICODE, max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=max_leaves,
    )


@dataclass(frozen=True)
class Deep:
    """Deeply nested JSON, written as text (json.dumps would recurse too deep to make it)."""

    depth: int
    kind: str = "list"

    def text(self) -> str:
        if self.kind == "list":
            return "[" * self.depth + "]" * self.depth
        return '{"a":' * self.depth + "1" + "}" * self.depth


def deep_json(max_depth: int = 200_000) -> st.SearchStrategy[Deep]:
    return st.builds(Deep, st.integers(100, max_depth), st.sampled_from(["list", "object"]))


def tokens(agency: str = "sc.hrss") -> st.SearchStrategy[Token]:
    claim_values = st.one_of(
        json_values(),
        st.just(DELETE),
        st.sampled_from(["urn:tongban:gateway:510000", "urn:tongban:idp:510000", "sc.amr", ""]),
        st.integers(0, 2**41),  # times far in the future or the past
        deep_json(2_900),  # deep JSON in a claim, the token still under 8 KiB
    )
    header_values = st.one_of(
        json_values(4),
        st.none(),
        st.sampled_from(
            [
                "none",
                "None",
                "HS256",
                "ES384",
                "RS256",
                "EdDSA",
                "ES256",
                "PS256",
                "JWT",
                "jwt",
                "JOSE",
                ["b64"],
                False,
                "",
                "x" * 200,
            ]
        ),
    )
    return st.builds(
        Token,
        agency=st.sampled_from([agency, agency, "sc.amr", "zj.hrss"]),
        claims_edit=st.dictionaries(st.sampled_from(CLAIMS), claim_values, max_size=3),
        header_edit=st.dictionaries(
            st.sampled_from(["alg", "kid", "typ", "crit", "b64", "x5c", "jku", "cty"]),
            header_values,
            max_size=2,
        ),
        payload=st.one_of(
            st.none(),
            st.none(),
            st.none(),
            json_values(),
            st.binary(max_size=40),
            deep_json(2_900),
        ),
        signature=st.sampled_from(
            ["good", "good", "good", "empty", "random", "truncated", "other-region"]
        ),
        shape=st.one_of(
            st.just(""),
            st.just(""),
            st.integers(0, 600).map(lambda n: f"truncate:{n}"),
            st.sampled_from(["append-part", "double-dot", "none", "strip-signature"]),
            st.integers(1_000, 7_000).map(lambda n: f"pad:{n}"),
            st.integers(8_193, 12_000).map(lambda n: f"pad:{n}"),  # over the 8 KiB token limit
        ),
        scheme=st.sampled_from(
            ["Bearer ", "Bearer ", "bearer ", "BEARER  ", "Bearer", "Basic ", ""]
        ),
    )


def metadata(agency: str = "sc.hrss") -> st.SearchStrategy[Metadata]:
    """The authorization of a call: mostly a good token, else anything a client could send."""
    keys = st.text(string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=12).filter(
        lambda k: (
            not k.startswith("grpc-")
            and not k.endswith("-bin")
            and k[0] not in "-_."
            and k not in ("te", "host", "content-type", "user-agent")
        )
    )
    extra = st.lists(
        st.one_of(
            st.tuples(keys, st.text(ASCII_PRINTABLE, max_size=60).map(str.strip)),
            st.tuples(keys.map(lambda k: k + "-bin"), st.binary(max_size=60)),
            st.tuples(st.just("authorization-bin"), st.binary(max_size=60)),
            st.tuples(
                st.just("authorization"), st.text(ASCII_PRINTABLE, max_size=60).map(str.strip)
            ),
        ),
        max_size=3,
    )
    good = st.just(Metadata(token=Token(agency=agency)))
    bad = st.one_of(
        st.builds(Metadata, token=st.just(Token(agency=agency)), extra=extra),
        st.builds(Metadata, token=tokens(agency), extra=extra),
        st.builds(Metadata, token=tokens(agency)),
        st.builds(Metadata, authorization=st.text(ASCII_PRINTABLE, max_size=200).map(str.strip)),
        st.builds(
            Metadata,
            authorization=st.builds(
                lambda parts: "Bearer " + ".".join(parts),
                st.lists(
                    st.text(string.ascii_letters + string.digits + "-_", max_size=60), max_size=5
                ),
            ),
        ),
        st.builds(Metadata, extra=extra),
    )
    return mostly(bad, good, one_in=2)


# -- queries ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuerySpec:
    provider_region: str
    dataset: str
    purpose: str
    subject: str  # "<valid>" → a subject the provider holds, "<valid-licence>" a business
    fields: tuple[str, ...]
    case_id: str
    request_id: str

    def build(self, subjects: dict[tuple[str, str], str]) -> exchange_pb2.QueryRequest:
        subject = self.subject
        if subject in ("<valid>", "<valid-licence>"):
            dataset = (
                "market.business_licence" if subject == "<valid-licence>" else "si.participation"
            )
            subject = subjects.get((self.provider_region, dataset), "")
        return exchange_pb2.QueryRequest(
            provider_region=self.provider_region,
            dataset=self.dataset,
            purpose=self.purpose,
            subject_id=subject,
            fields=list(self.fields),
            case_id=self.case_id,
            request_id=fresh(self.request_id),
        )


def subjects_strategy() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just("<valid>"),
        st.just("<valid>"),
        st.just("<valid-licence>"),
        texts(huge=True),
        st.text("0123456789X", min_size=17, max_size=19),  # near a citizen id, wrong check
        st.text("0123456789ABCDEFGHJKLMNPQRTUWXY", min_size=18, max_size=18),  # near a USCC
    )


def mutated(
    base: dict[str, Any], options: dict[str, st.SearchStrategy[Any]], max_changes: int = 3
) -> st.SearchStrategy[dict[str, Any]]:
    """`base` (a request that would pass) with up to `max_changes` of its entries drawn from
    `options` instead: most examples get deep into the request path before something is wrong."""

    @st.composite
    def draw_one(draw: st.DrawFn) -> dict[str, Any]:
        out = dict(base)
        names = draw(st.sets(st.sampled_from(sorted(options)), max_size=max_changes))
        for name in sorted(names):
            out[name] = draw(options[name])
        return out

    return draw_one()


def mostly(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int = 5
) -> st.SearchStrategy[Any]:
    """`rare` in about one example of `one_in`, else `common`."""
    return st.integers(1, one_in).flatmap(lambda n: rare if n == 1 else common)


def query_options(*, huge: bool = True) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "provider_region": texts(*REGIONS, huge=huge),
        "dataset": texts(*DATASETS, huge=huge),
        "purpose": texts(*PURPOSES, huge=huge),
        "subject": subjects_strategy() if huge else texts(huge=False),
        "fields": st.one_of(
            st.lists(st.sampled_from(FIELDS), max_size=8).map(tuple),
            st.lists(texts(*FIELDS, huge=False), max_size=6).map(tuple),
            st.integers(60, 3_000).map(lambda n: tuple(f"f{i}" for i in range(n))),
        ),
        "case_id": texts("CASE-2026-0001", huge=huge),
        "request_id": request_ids(),
    }


def queries(
    regions: tuple[str, ...] = ("500000", "330000"), *, huge: bool = True
) -> st.SearchStrategy[QuerySpec]:
    """A query sc.hrss may make (to 重庆 or 浙江, SI-TRANSFER) with up to three fields changed."""
    return (
        st.sampled_from(regions)
        .flatmap(
            lambda region: mutated(
                {
                    "provider_region": region,
                    "dataset": "si.participation",
                    "purpose": "SI-TRANSFER",
                    "subject": "<valid>",
                    "fields": (),
                    "case_id": "CASE-2026-0001",
                    "request_id": FRESH,
                },
                query_options(huge=huge),
            )
        )
        .map(lambda d: QuerySpec(**d))
    )


# -- seals and JWS ------------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def json_header(value: Any) -> str:
    return b64url(json.dumps(value, allow_nan=True).encode())


B64URL = string.ascii_letters + string.digits + "-_"


@dataclass(frozen=True)
class HeaderEdit:
    """A genuine seal whose protected header is changed (the signature no longer covers it)."""

    genuine: int
    edits: dict[str, Any]


def _certificate_values(certificates: list[bytes]) -> st.SearchStrategy[Any]:
    import base64

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    def flip(der: bytes, positions: list[int]) -> bytes:
        buf = bytearray(der)
        for p in positions:
            buf[p % len(buf)] ^= 0xFF
        return bytes(buf)

    return st.one_of(
        st.lists(st.binary(max_size=300).map(b64), min_size=1, max_size=3),  # random "certificates"
        st.builds(
            lambda i, p: [b64(flip(certificates[i % len(certificates)], p))],
            st.integers(0, 100),
            st.lists(st.integers(0, 5_000), min_size=1, max_size=3),
        ),
        st.integers(0, 100).map(lambda i: [b64(certificates[i % len(certificates)])]),
        st.integers(0, 100).map(lambda i: [b64(certificates[i % len(certificates)])] * 50),
        st.lists(st.text(max_size=20), max_size=3),
        json_values(4),
    )


def header_edits(certificates: list[bytes], genuine_count: int) -> st.SearchStrategy[HeaderEdit]:
    value = st.one_of(
        json_values(4),
        st.sampled_from(["none", "HS256", "ES256", "EdDSA", "PS256", "RS256", "SM2", ""]),
        st.sampled_from([["sigD"], ["b64"], ["unknown"], [], "sigD"]),
        st.integers(-(2**64), 2**64),
        st.text(B64URL, min_size=43, max_size=43),  # a kid-shaped thumbprint
    )
    return st.builds(
        HeaderEdit,
        genuine=st.integers(0, max(genuine_count - 1, 0)),
        edits=st.dictionaries(
            st.sampled_from(
                ["alg", "x5t#S256", "iat", "typ", "crit", "sigD", "b64", "kid", "cty", "zip"]
            ),
            value,
            max_size=3,
        )
        | st.fixed_dictionaries({"x5c": _certificate_values(certificates)}),
    )


def apply_header_edit(edit: HeaderEdit, genuine: list[str]) -> str:
    import base64

    head, body, signature = genuine[edit.genuine % len(genuine)].split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    for name, value in edit.edits.items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return f"{json_header(header)}.{body}.{signature}"


@dataclass(frozen=True)
class Mutation:
    """A genuine seal truncated or with characters replaced."""

    genuine: int
    truncate: int | None
    replace: tuple[tuple[int, str], ...]

    def apply(self, genuine: list[str]) -> str:
        jws = genuine[self.genuine % len(genuine)]
        chars = list(jws)
        for position, char in self.replace:
            chars[position % len(chars)] = char
        out = "".join(chars)
        return out[: self.truncate] if self.truncate is not None else out


def jws_texts(certificates: list[bytes], genuine_count: int) -> st.SearchStrategy[Any]:
    """What a Verify request's jws may be: a str, or a recipe applied to the genuine seals."""
    part = st.text(B64URL, max_size=120)
    return st.one_of(
        st.integers(0, max(genuine_count - 1, 0)).map(lambda i: Mutation(i, None, ())),
        st.builds(
            Mutation,
            genuine=st.integers(0, 100),
            truncate=st.none() | st.integers(0, 3_000),
            replace=st.lists(
                st.tuples(st.integers(0, 10_000), st.sampled_from(list(B64URL + ".=+/ \n\x00é"))),
                max_size=3,
            ).map(tuple),
        ),
        header_edits(certificates, genuine_count),
        st.builds(
            lambda header, payload, signature: (
                f"{json_header(header)}.{b64url(payload)}.{signature}"
            ),
            st.dictionaries(st.text(max_size=10), json_values(4), max_size=6),
            st.binary(max_size=100),
            part,
        ),
        st.builds(
            lambda deep, signature: f"{b64url(deep.text().encode())}..{signature}",
            deep_json(100_000),
            part,
        ),
        st.lists(part, min_size=0, max_size=6).map(".".join),
        texts(huge=True),
        st.sampled_from(
            ["", ".", "..", "...", " . . ", "a.b.c", "e30.e30.", "e30..", "bnVsbA.e30."]
        ),
    )


def payloads() -> st.SearchStrategy[Any]:
    """Bytes to seal or to check a detached seal against: random, JSON, deeply nested JSON,
    invalid UTF-8, and large."""
    return st.one_of(
        st.binary(max_size=200),
        json_values().map(lambda v: json.dumps(v, allow_nan=True).encode()),
        deep_json().map(lambda d: d.text().encode()),
        st.sampled_from([b"", b"\xff\xfe\xfd", b"\xc3\x28", b"\xed\xa0\x80", b"\x00" * 64]),
        st.integers(1_000, 600_000).map(lambda n: b"\x89" * n),  # above the threaded-seal size
    )
