"""Signed forwarded requests (`gateway.forward_signing`) and their keeping in the audit record
(`gateway.audit.seal_kept_request`): signing, verification against a dev registry, each way a
signed request is refused, a cross-check of the signature with the OpenSSL command line, and
the owner flow's record of a signed request. No network."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import rfc8785
from cli_support import Run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flow_support import (
    CITIZEN,
    NOW,
    OWNER,
    REQUESTER,
    Backends,
    DataSystem,
    Store,
    audit_key,
    forward_document,
    gateway_caller,
    owner_flow,
    si_request,
    signed_call,
)
from support import Federation

from gateway.audit import (
    AuditRecord,
    KeptRequestError,
    Outcome,
    SqliteAuditStore,
    open_kept_request,
    request_digest,
    seal_kept_request,
)
from gateway.errors import Refusal
from gateway.flows import ForwardCall
from gateway.forward_signing import (
    MAX_REQUEST_JWS_BYTES,
    REQUEST_CLOCK_SKEW,
    ForwardDocument,
    RequestSigner,
    sign_forward,
    verify_forward,
)
from registry import KeyState, KeyUsage, Registry

PSEUDONYM_KEY = b"p" * 32


def plain_call(**changes: object) -> ForwardCall:
    made = ForwardCall(
        caller=gateway_caller(REQUESTER),
        requesting_region=REQUESTER,
        agency_id="sc.hrss",
        operator="经办人 张三",
        request=si_request(),
        time_remaining=lambda: None,
    )
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


def signed(fed: Federation, region: str = REQUESTER, **changes: object) -> str:
    key, kid = audit_key(fed, region)
    return sign_forward(forward_document(plain_call(), **changes), key, kid)


def verify(registry: Registry, jws: str, **options: object) -> object:
    arguments: dict[str, object] = {
        "registry": registry,
        "requesting_region": REQUESTER,
        "owner_region": OWNER,
        "now": NOW,
    }
    arguments.update(options)
    return verify_forward(jws, **arguments)  # type: ignore[arg-type]


def refused(registry: Registry, jws: str, **options: object) -> str:
    with pytest.raises(Refusal) as caught:
        verify(registry, jws, **options)
    return caught.value.reason


def with_key_state(
    registry: Registry, kid: str, state: KeyState, revoked_at: object = None
) -> Registry:
    keys = tuple(
        dataclasses.replace(k, state=state, revoked_at=revoked_at) if k.kid == kid else k
        for k in registry.keys
    )
    return dataclasses.replace(registry, keys=keys)


# -- sign and verify ----------------------------------------------------------------------------
def test_a_signed_request_verifies_with_the_registry_key_and_says_what_was_signed(
    fed: Federation, registry: Registry
) -> None:
    jws = signed(fed)
    found = verify_forward(
        jws, registry=registry, requesting_region=REQUESTER, owner_region=OWNER, now=NOW
    )
    assert found.kid == audit_key(fed, REQUESTER)[1]
    assert found.document == forward_document(plain_call())
    assert found.document.request.subject_id == CITIZEN
    assert found.digest == request_digest(jws)
    header = json.loads(base64.urlsafe_b64decode(jws.split(".")[0] + "=="))
    assert (header["alg"], header["typ"], header["x5t#S256"]) == (
        "EdDSA",
        "tongban.forward-request+jws",
        found.kid,
    )
    # the payload is exactly the canonical document's bytes
    payload = base64.urlsafe_b64decode(jws.split(".")[1] + "==")
    assert payload == forward_document(plain_call()).payload()
    assert ForwardDocument.from_document(json.loads(payload)) == found.document


def test_the_signer_finds_its_kid_in_the_registry_or_refuses(
    fed: Federation, registry: Registry
) -> None:
    key, kid = audit_key(fed, REQUESTER)
    assert RequestSigner(REQUESTER, key).kid(registry) == kid
    stranger = RequestSigner(REQUESTER, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(Refusal) as caught:
        stranger.sign(registry, forward_document(plain_call()))
    assert "no audit key of region 510000" in caught.value.message


def test_the_signature_checks_out_with_the_openssl_command_line(
    fed: Federation, tmp_path: Path
) -> None:
    jws = signed(fed)
    header, payload, signature = jws.split(".")
    key, _ = audit_key(fed, REQUESTER)
    (tmp_path / "pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "input").write_bytes(f"{header}.{payload}".encode())
    (tmp_path / "sig").write_bytes(base64.urlsafe_b64decode(signature + "=="))
    command = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(tmp_path / "pub.pem"),
        "-rawin",
        "-in",
        str(tmp_path / "input"),
        "-sigfile",
        str(tmp_path / "sig"),
    ]
    ok = subprocess.run(command, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "input").write_bytes(f"{header}.{payload}x".encode())
    bad = subprocess.run(command, capture_output=True, text=True, check=False)
    assert bad.returncode != 0


# -- refused ------------------------------------------------------------------------------------
def test_an_unsigned_request_is_refused(registry: Registry) -> None:
    with pytest.raises(Refusal) as caught:
        verify(registry, "")
    assert caught.value.reason == "REQUEST_SIGNATURE_INVALID"
    assert "not signed" in caught.value.message


def test_tampered_bytes_are_refused(fed: Federation, registry: Registry) -> None:
    header, payload, signature = signed(fed).split(".")
    document = json.loads(base64.urlsafe_b64decode(payload + "=="))
    document["query"]["purpose"] = "HOUSING-SUBSIDY"
    forged = base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()
    assert refused(registry, f"{header}.{forged}.{signature}") == "REQUEST_SIGNATURE_INVALID"
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert refused(registry, f"{header}.{payload}.{flipped}") == "REQUEST_SIGNATURE_INVALID"
    assert refused(registry, f"{header}.{payload}.") == "REQUEST_SIGNATURE_INVALID"


def test_a_request_signed_by_another_regions_key_is_refused(
    fed: Federation, registry: Registry
) -> None:
    # Chongqing's audit key, claiming to be Sichuan's request
    assert refused(registry, signed(fed, "500000")) == "REQUEST_SIGNATURE_INVALID"
    # Sichuan's key, but the peer certificate is Chongqing's gateway
    assert refused(registry, signed(fed), requesting_region="500000") in (
        "REQUEST_SIGNATURE_INVALID"
    )
    # signed as from another region than the key's
    key, kid = audit_key(fed, REQUESTER)
    other = sign_forward(forward_document(plain_call(), requesting_region="500000"), key, kid)
    assert refused(registry, other) == "REQUEST_PAYLOAD_MISMATCH"
    # signed for another owner
    assert refused(registry, signed(fed, owner_region="110000")) == "UNKNOWN_REGION"


def test_a_request_signed_with_a_key_of_another_usage_or_unknown_is_refused(
    fed: Federation, registry: Registry
) -> None:
    key, _ = audit_key(fed, REQUESTER)
    seal_kid = fed.active(REQUESTER, KeyUsage.SEAL)
    as_seal = sign_forward(forward_document(plain_call()), key, seal_kid)
    with pytest.raises(Refusal) as caught:
        verify(registry, as_seal)
    assert caught.value.reason == "REQUEST_SIGNATURE_INVALID"
    assert "not an audit key" in caught.value.message
    _, kid = audit_key(fed, REQUESTER)
    stranger = sign_forward(
        forward_document(plain_call()), ed25519.Ed25519PrivateKey.generate(), kid
    )
    assert refused(registry, stranger) == "REQUEST_SIGNATURE_INVALID"


def test_a_request_signed_with_a_revoked_key_is_refused_but_an_earlier_one_still_proves(
    fed: Federation, registry: Registry
) -> None:
    _, kid = audit_key(fed, REQUESTER)
    jws = signed(fed)
    revoked_later = with_key_state(registry, kid, KeyState.REVOKED, NOW + timedelta(hours=1))
    assert refused(revoked_later, jws) == "REQUEST_SIGNATURE_INVALID"  # never accepted now
    # oversight, later: it was signed before the revocation, so it still proves who asked
    verify(revoked_later, jws, now=NOW + timedelta(days=400), at_signing=True)
    revoked_before = with_key_state(registry, kid, KeyState.REVOKED, NOW - timedelta(hours=1))
    assert refused(revoked_before, jws, at_signing=True) == "REQUEST_SIGNATURE_INVALID"


def test_a_request_issued_outside_the_clock_skew_is_refused(
    fed: Federation, registry: Registry
) -> None:
    late = NOW - REQUEST_CLOCK_SKEW - timedelta(seconds=1)
    early = NOW + REQUEST_CLOCK_SKEW + timedelta(seconds=1)
    assert refused(registry, signed(fed, issued_at=late)) == "REQUEST_SIGNATURE_INVALID"
    assert refused(registry, signed(fed, issued_at=early)) == "REQUEST_SIGNATURE_INVALID"
    verify(registry, signed(fed, issued_at=NOW - REQUEST_CLOCK_SKEW))
    # a year later, oversight checks it at its signing time
    verify(registry, signed(fed), now=NOW + timedelta(days=30), at_signing=True)


def test_a_payload_not_in_the_format_is_refused(fed: Federation, registry: Registry) -> None:
    key, kid = audit_key(fed, REQUESTER)
    document = forward_document(plain_call()).document()
    from signer import canonical_json, sign_json

    def sign(body: bytes) -> str:
        return sign_json(
            body,
            key,
            typ="tongban.forward-request+jws",
            kid=kid,
            algorithms=("EdDSA",),
            headers={"x5t#S256": kid},
        )

    extra = dict(document, more="x")
    assert refused(registry, sign(json.dumps(extra).encode())) == "INVALID_ARGUMENT_FORMAT"
    for name, value in {
        "v": 2,
        "query": "a query",
        "caller": {"agency_id": "sc.hrss"},
        "credential_type": 7,
        "issued_at": "yesterday",
    }.items():
        changed = canonical_json(dict(document, **{name: value}))
        assert refused(registry, sign(changed)) == "INVALID_ARGUMENT_FORMAT", name
    huge = "x" * MAX_REQUEST_JWS_BYTES
    assert refused(registry, f"{huge}.{huge}.{huge}") == "REQUEST_TOO_LARGE"
    spaced = json.dumps(document, indent=1).encode()  # not canonical
    assert refused(registry, sign(spaced)) == "INVALID_ARGUMENT_FORMAT"
    assert refused(registry, sign(b"not json")) == "INVALID_ARGUMENT_FORMAT"


# -- kept with the audit record -----------------------------------------------------------------
def test_a_kept_request_opens_only_with_the_pseudonym_key_and_to_its_digest(
    fed: Federation,
) -> None:
    jws = signed(fed)
    digest, sealed = seal_kept_request(jws, PSEUDONYM_KEY)
    assert digest == request_digest(jws)
    assert CITIZEN not in sealed
    assert sealed.startswith("aes256gcm:")
    assert open_kept_request(sealed, digest, PSEUDONYM_KEY) == jws
    with pytest.raises(KeptRequestError):
        open_kept_request(sealed, digest, b"q" * 32)
    with pytest.raises(KeptRequestError):
        open_kept_request(sealed, "0" * 64, PSEUDONYM_KEY)
    with pytest.raises(KeptRequestError):
        open_kept_request(sealed[:-4] + "AAAA", digest, PSEUDONYM_KEY)


async def test_the_owners_record_keeps_the_verified_request_without_the_raw_subject(
    fed: Federation, registry: Registry
) -> None:
    backends = Backends(OWNER, Store(registry))
    flow = owner_flow(fed, backends, data_system=DataSystem())
    call = signed_call(fed, plain_call())
    answer = await flow.forward(call)
    (record,) = backends.records()
    assert record.outcome is Outcome.ALLOWED
    assert record.request_digest == request_digest(call.signed_request)
    assert CITIZEN not in record.canonical.decode()
    assert AuditRecord.from_canonical(record.canonical) == record
    # the two members sort in where RFC 8785 puts them (checked by an independent library)
    document = json.loads(record.canonical)
    assert record.canonical == rfc8785.dumps(document)
    keys = list(document)
    assert keys[keys.index("registry_version") :][:5] == [
        "registry_version",
        "request_digest",
        "request_id",
        "request_sealed",
        "rpc",
    ]
    kept = open_kept_request(record.request_sealed, record.request_digest, PSEUDONYM_KEY)
    assert kept == call.signed_request
    again = verify_forward(
        kept, registry=registry, requesting_region=REQUESTER, owner_region=OWNER, now=NOW
    )
    assert again.document.request.request_id == record.request_id
    assert backends.trail.pseudonym(again.document.request.subject_id) == record.subject
    assert answer.audit_id.endswith("#0")


async def test_the_owner_refuses_unsigned_and_mismatched_requests_and_audits_them(
    fed: Federation, registry: Registry
) -> None:
    backends = Backends(OWNER, Store(registry))
    data = DataSystem()
    flow = owner_flow(fed, backends, data_system=data)
    with pytest.raises(Refusal) as unsigned:
        await flow.forward(plain_call())
    assert unsigned.value.reason == "REQUEST_SIGNATURE_INVALID"
    good = signed_call(fed, plain_call())
    changed = {
        "request": dataclasses.replace(good.request, purpose="HOUSING-SUBSIDY"),
        "agency_id": "sc.hsa",
        "operator": "someone else",
        "credential_type": "hukou",
    }
    for name, value in changed.items():
        with pytest.raises(Refusal) as caught:
            await flow.forward(dataclasses.replace(good, **{name: value}))  # type: ignore[arg-type]
        assert caught.value.reason == "REQUEST_PAYLOAD_MISMATCH", name
    records = backends.records()
    assert [r.reason for r in records] == ["REQUEST_SIGNATURE_INVALID"] + [
        "REQUEST_PAYLOAD_MISMATCH"
    ] * len(changed)
    assert records[0].request_digest == ""  # nothing verified, nothing kept
    for record in records[1:]:  # what was signed is recorded, with the signature
        assert (record.purpose, record.caller_agency) == ("SI-TRANSFER", "sc.hrss")
        assert record.request_digest == request_digest(good.signed_request)
    assert not data.fetched  # nothing was asked of the data system


# -- tongban audit show-request -----------------------------------------------------------------
def _owner_log(fed: Federation, registry: Registry, path: Path) -> ForwardCall:
    """An owner's SQLite log holding one allowed Peer.Forward that keeps its signed request."""

    async def make() -> ForwardCall:
        backends = Backends(OWNER, Store(registry), audit_store=SqliteAuditStore(path))
        await backends.audit_store.open()
        try:
            call = signed_call(fed, plain_call())
            await owner_flow(fed, backends, data_system=DataSystem()).forward(call)
            return call
        finally:
            await backends.audit_store.close()

    return asyncio.run(make())


def test_show_request_verifies_and_tells_the_kept_request_and_refuses_what_does_not_hold(
    fed: Federation, registry: Registry, tmp_path: Path, run: Run
) -> None:
    log = tmp_path / "audit-330000.db"
    call = _owner_log(fed, registry, log)
    (tmp_path / "key").write_bytes(PSEUDONYM_KEY)
    common = (
        "audit",
        "show-request",
        "--sqlite",
        log,
        "--pseudonym-key-file",
        tmp_path / "key",
        "--snapshot",
        fed.current,
        "--pki",
        fed.pki,
    )
    code, out, err = run(*common, "--request-id", "req-0001", "--subject-id", CITIZEN)
    assert code == 0, err
    assert "region 510000, agency sc.hrss" in out
    assert "purpose SI-TRANSFER, case CASE-2026-0001, request req-0001" in out
    assert "the subject id given is this request's subject" in out
    assert CITIZEN not in out + err
    code, out, _ = run(*common, "--index", "0", "--json", "--jws-out", tmp_path / "r.jws")
    assert code == 0
    assert json.loads(out)["request_digest"] == request_digest(call.signed_request)
    assert (tmp_path / "r.jws").read_text().strip() == call.signed_request
    assert (tmp_path / "r.jws").stat().st_mode & 0o777 == 0o600
    # another citizen: exit 1, said without printing either id
    code, out, _ = run(*common, "--index", "0", "--subject-id", "110105194912310021")
    assert (code, "NOT this request's subject" in out) == (1, True)
    # what does not hold is one line, exit 1
    (tmp_path / "other").write_bytes(b"q" * 32)
    failures = {
        "no such request": (("--request-id", "req-9999"), "no Peer.Forward record"),
        "no such index": (("--index", "7"), "no record 7"),
    }
    for name, (more, words) in failures.items():
        code, _, err = run(*common, *more)
        assert (code, err.startswith("tongban: "), words in err) == (1, True, True), name
    wrong_key = [str(a) for a in common]
    wrong_key[wrong_key.index(str(tmp_path / "key"))] = str(tmp_path / "other")
    code, _, err = run(*wrong_key, "--index", "0")
    assert code == 1
    assert "does not open with this pseudonym key" in err
    code, _, err = run(*common)
    assert code == 2  # usage: which record
    assert "--request-id" in err


def test_show_request_refuses_a_signing_time_the_owner_would_not_have_accepted(
    fed: Federation, registry: Registry, tmp_path: Path, run: Run
) -> None:
    """A key revoked for compromise could sign a request dated before its revocation: the
    record's own time, in the owner's log, gives it away."""
    log = tmp_path / "audit-330000.db"
    _owner_log(fed, registry, log)
    backdated = signed_call(fed, plain_call(), issued_at=NOW - timedelta(hours=6)).signed_request
    digest, sealed = seal_kept_request(backdated, PSEUDONYM_KEY)

    async def append() -> None:
        store = SqliteAuditStore(log)
        await store.open()
        try:
            (row,) = await store.rows(0, 1)
            record = AuditRecord.from_canonical(row.canonical)
            await store.append(
                dataclasses.replace(record, request_digest=digest, request_sealed=sealed)
            )
            await store.append(dataclasses.replace(record, rpc="/tongban.v1.DataExchange/Query"))
            unsigned = dataclasses.replace(record, request_digest="", request_sealed="")
            await store.append(unsigned)  # as written before requests were signed
        finally:
            await store.close()

    asyncio.run(append())
    (tmp_path / "key").write_bytes(PSEUDONYM_KEY)
    common = (
        "audit",
        "show-request",
        "--sqlite",
        log,
        "--pseudonym-key-file",
        tmp_path / "key",
        "--snapshot",
        fed.current,
        "--pki",
        fed.pki,
        "--index",
    )
    code, _, err = run(*common, "1")
    assert code == 1
    assert "more than the owner would have accepted" in err
    # records that keep no signed request: said so, exit 1
    code, _, err = run(*common, "2")
    assert (code, "not a Peer.Forward one" in err) == (1, True)
    code, _, err = run(*common, "3")
    assert (code, "keeps no signed request" in err) == (1, True)
