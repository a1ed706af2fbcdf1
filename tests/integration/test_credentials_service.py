"""`tongban.v1.Credentials` over real mutual TLS on loopback: Verify for any caller (a bad seal is
a report, not an error), Seal for the region's own agencies with the key the registry names,
Fetch not built yet, and a seal-key rotation while the gateway serves."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sm2_support import SIGNING_USAGE, issue
from support import (
    CALL_TIMEOUT,
    SHARED,
    Federation,
    ManualClock,
    channel,
    credentials_as,
    dev_config,
    error_info,
    eventually,
    make_federation,
    running,
)

from gateway.errors import ConfigError
from gateway.sealing import SEAL_IN_THREAD_BYTES
from gateway.server import Gateway
from gateway.services.credentials import MAX_SEAL_PAYLOAD_BYTES
from registry import KeyState, KeyUsage, rotate_key
from signer import (
    MAX_DOCUMENT_BYTES,
    MAX_JWS_BYTES,
    FileKeyProvider,
    Sm2FileSigner,
    make_seal,
    seal,
    sign_with_seal,
)
from tongban.v1 import credentials_pb2, credentials_pb2_grpc

pytestmark = pytest.mark.integration

DOCUMENT = '{"certificate":"结婚证","number":"J330100-2026-000123"}'.encode()
SEAL_KIND = credentials_pb2.SIGNATURE_KIND_SEAL


def seal_provider(
    fed: Federation, owner: str, state: KeyState = KeyState.ACTIVE
) -> FileKeyProvider:
    (record,) = fed.inventory().find(owner, KeyUsage.SEAL, state)
    return FileKeyProvider(fed.pki / record.private_key, fed.pki / record.certificate)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def flip_payload_char(jws: str) -> str:
    header, payload, signature = jws.split(".")
    first = "B" if payload[0] == "A" else "A"
    return f"{header}.{first}{payload[1:]}.{signature}"


def stub_as(
    fed: Federation, owner: str, port: int
) -> tuple[grpc.aio.Channel, credentials_pb2_grpc.CredentialsAsyncStub]:
    ch = channel(port, credentials_as(fed, owner, "330000"))
    return ch, credentials_pb2_grpc.CredentialsStub(ch)


async def verify(
    stub: credentials_pb2_grpc.CredentialsAsyncStub, jws: str, payload: bytes = b""
) -> credentials_pb2.ValidationReport:
    return await stub.Verify(
        credentials_pb2.VerifyRequest(jws=jws, detached_payload=payload), timeout=CALL_TIMEOUT
    )


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# Verify ----------------------------------------------------------------------------------------
async def test_verify_by_an_agency_of_another_region(federation: Federation) -> None:
    provider = seal_provider(federation, "330000")
    good = seal(DOCUMENT, provider, content_type="application/json")
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "sc.hrss", port)
        async with ch:
            report = await verify(stub, good)
            assert report.indication == credentials_pb2.TOTAL_PASSED
            assert report.sub_indication == credentials_pb2.SUB_INDICATION_UNSPECIFIED
            assert report.signer_kid == provider.kid
            assert report.signer_subject.startswith("CN=浙江省")
            assert report.owner == "330000"
            assert report.owner_region == "330000"
            assert report.kind == SEAL_KIND
            assert report.algorithm == "ES256"
            assert report.registry_version == 1
            assert report.HasField("signing_time")
            signed = report.signing_time.ToDatetime(tzinfo=UTC)
            assert datetime.now(UTC) - timedelta(minutes=1) < signed <= datetime.now(UTC)
            assert "浙江省" in report.message
            assert [c.name for c in report.checks][:3] == ["format", "header", "algorithm"]
            assert all(c.passed and c.detail for c in report.checks)

            bad = await verify(stub, flip_payload_char(good))  # a report, not an RPC error
            assert bad.indication == credentials_pb2.TOTAL_FAILED
            assert bad.sub_indication == credentials_pb2.SIG_CRYPTO_FAILURE
            assert bad.signer_kid == provider.kid
            assert bad.owner == bad.owner_region == "330000"
            assert bad.algorithm == "ES256"
            assert bad.registry_version == 1
            assert bad.HasField("signing_time")
            assert bad.checks[-1].name == "signature"
            assert not bad.checks[-1].passed
            assert bad.message == bad.checks[-1].detail


async def test_verify_detached_payloads(federation: Federation) -> None:
    provider = seal_provider(federation, "sc.hrss")
    detached = seal(DOCUMENT, provider, detached=True)
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "zj.hrss", port)
        async with ch:
            passed = await verify(stub, detached, DOCUMENT)
            assert passed.indication == credentials_pb2.TOTAL_PASSED
            assert (passed.owner, passed.owner_region) == ("sc.hrss", "510000")
            wrong = await verify(stub, detached, DOCUMENT + b" ")
            assert wrong.sub_indication == credentials_pb2.HASH_FAILURE
            missing = await verify(stub, detached)  # empty bytes: no payload given
            assert missing.indication == credentials_pb2.INDETERMINATE
            assert missing.sub_indication == credentials_pb2.SIGNED_DATA_NOT_FOUND
            garbage = await verify(stub, "not a jws")
            assert garbage.sub_indication == credentials_pb2.FORMAT_FAILURE


async def test_verify_at_a_validation_time(federation: Federation) -> None:
    good = seal(DOCUMENT, seal_provider(federation, "330000"))
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "cq.hrss", port)
        async with ch:
            before = Timestamp()
            before.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
            report = await stub.Verify(
                credentials_pb2.VerifyRequest(jws=good, validation_time=before),
                timeout=CALL_TIMEOUT,
            )
            assert report.sub_indication == credentials_pb2.FORMAT_FAILURE  # signed "later"
            assert "in the future" in report.message


async def test_verify_at_the_last_valid_timestamp_is_a_report(federation: Federation) -> None:
    good = seal(DOCUMENT, seal_provider(federation, "330000"))
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "cq.hrss", port)
        async with ch:
            last = Timestamp(seconds=253402300799)  # 9999-12-31T23:59:59Z, a valid Timestamp
            report = await stub.Verify(
                credentials_pb2.VerifyRequest(jws=good, validation_time=last),
                timeout=CALL_TIMEOUT,
            )
            # A report, not UNKNOWN: by then the CRLs are out of date and the certificate has
            # long expired (B-level has no proof of existence).
            assert report.indication == credentials_pb2.INDETERMINATE
            assert report.sub_indication in {
                credentials_pb2.TRY_LATER,
                credentials_pb2.OUT_OF_BOUNDS_NO_POE,
            }


async def test_verify_an_attached_payload_that_sigd_does_not_name(federation: Federation) -> None:
    provider = seal_provider(federation, "330000")
    header = {
        "alg": "ES256",
        "typ": "JOSE",
        "cty": "application/json",
        "x5t#S256": provider.kid,
        "iat": int(datetime.now(UTC).timestamp()),
        "sigD": {
            "mId": "http://uri.etsi.org/19182/ObjectIdByURIHash",
            "pars": ["urn:tongban:payload"],
            "hashM": "S256",
            "hashV": [b64url(hashlib.sha256(b"another document").digest())],
        },
        "crit": ["sigD"],
    }
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(DOCUMENT)}"
    jws = f"{signing_input}.{b64url(provider.sign(signing_input.encode()))}"
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "sc.hrss", port)
        async with ch:
            report = await verify(stub, jws)
            assert report.indication == credentials_pb2.TOTAL_FAILED
            assert report.sub_indication == credentials_pb2.FORMAT_FAILURE


async def test_verify_refuses_an_oversized_jws(federation: Federation) -> None:
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "sc.hrss", port)
        async with ch:
            error = await rpc_error(verify(stub, "a" * (MAX_JWS_BYTES + 1)))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(error).reason == "REQUEST_TOO_LARGE"


async def test_verify_takes_a_jws_as_a_document_too(federation: Federation) -> None:
    good = seal(DOCUMENT, seal_provider(federation, "330000"))
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "sc.hrss", port)
        async with ch:
            report = await stub.Verify(
                credentials_pb2.VerifyRequest(document=good.encode() + b"\n"),
                timeout=CALL_TIMEOUT,
            )
            assert report.indication == credentials_pb2.TOTAL_PASSED
            assert report.format == "JAdES"
            assert not report.signatures
            unknown = await stub.Verify(
                credentials_pb2.VerifyRequest(document=b"%PDF-1.7 not a seal"),
                timeout=CALL_TIMEOUT,
            )
            assert unknown.indication == credentials_pb2.TOTAL_FAILED
            assert unknown.sub_indication == credentials_pb2.FORMAT_FAILURE
            assert "OFD" in unknown.message
            assert "SES_Signature" in unknown.message


def outside_sm2_signature() -> bytes:
    """A valid GB/T 38540 SES_Signature over DOCUMENT by an SM2 PKI no registry knows."""
    now = datetime.now(UTC)
    window = {"not_before": now - timedelta(days=30), "not_after": now + timedelta(days=365)}
    root = issue("Outside root CA", **window)  # type: ignore[arg-type]
    leaf = {"ca": False, "usage": SIGNING_USAGE, **window}
    maker = issue("Outside seal maker", root, **leaf)  # type: ignore[arg-type]
    signer = issue("Outside seal key", root, **leaf)  # type: ignore[arg-type]
    seal_der = make_seal(
        maker=Sm2FileSigner(maker.key, maker.certificate),
        es_id="99000000000000000001",
        name="外部测试章",
        seal_type=1,
        signer_certificates=[signer.certificate],
        picture=b"\x89PNG\r\n\x1a\n" + bytes(16),
        width_mm=40,
        height_mm=40,
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=30),
        created=now - timedelta(days=1),
    )
    return sign_with_seal(
        DOCUMENT,
        seal=seal_der,
        signer=Sm2FileSigner(signer.key, signer.certificate),
        at=now - timedelta(minutes=1),
        property_info="document",
    )


async def test_verify_documents_of_every_format(federation: Federation) -> None:
    """GB/T 38540 and OFD documents through a real gateway: reports, not RPC errors; one from
    outside the registry is INDETERMINATE / NO_CERTIFICATE_CHAIN_FOUND (the gateway has no
    other anchors); an OFD file's report carries one report per signature."""
    ses = outside_sm2_signature()
    ofd = (SHARED / "vectors" / "gm" / "ses-v4-signed.ofd").read_bytes()
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "sc.hrss", port)
        async with ch:
            report = await stub.Verify(
                credentials_pb2.VerifyRequest(document=ses, detached_payload=DOCUMENT),
                timeout=CALL_TIMEOUT,
            )
            assert report.indication == credentials_pb2.INDETERMINATE
            assert report.sub_indication == credentials_pb2.NO_CERTIFICATE_CHAIN_FOUND
            assert report.format == "GB/T 38540 SES_Signature v4"
            assert report.registry_version == 1
            assert report.kind == SEAL_KIND
            checks = {c.name: c.passed for c in report.checks}
            assert checks["signature"]
            assert checks["data hash"]
            assert not checks["signer chain"]

            container = await stub.Verify(
                credentials_pb2.VerifyRequest(document=ofd), timeout=CALL_TIMEOUT
            )
            assert container.format == "OFD"
            assert container.indication == credentials_pb2.TOTAL_FAILED
            (signature,) = container.signatures
            assert signature.format == "GB/T 38540 SES_Signature v4"
            assert signature.signer_subject.startswith("CN=Test Certificate")
            assert signature.HasField("signing_time")
            assert any(c.name == "data hash" and c.passed for c in signature.checks)


@pytest.mark.parametrize(
    ("request_", "reason", "fragment"),
    [
        (credentials_pb2.VerifyRequest(), "INVALID_ARGUMENT_FORMAT", "nothing to verify"),
        (
            credentials_pb2.VerifyRequest(jws="a.b.c", document=b"a.b.c"),
            "INVALID_ARGUMENT_FORMAT",
            "not both",
        ),
        (
            credentials_pb2.VerifyRequest(document=b"0" * (MAX_DOCUMENT_BYTES + 1)),
            "REQUEST_TOO_LARGE",
            "document is larger",
        ),
    ],
    ids=["neither", "both", "document-too-large"],
)
async def test_verify_refuses_a_request_without_exactly_one_document(
    federation: Federation, request_: credentials_pb2.VerifyRequest, reason: str, fragment: str
) -> None:
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "sc.hrss", port)
        async with ch:
            error = await rpc_error(stub.Verify(request_, timeout=CALL_TIMEOUT))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(error).reason == reason
            assert fragment in (error.details() or "")


async def test_verify_with_a_stale_registry_is_unavailable(tmp_path: Path) -> None:
    fed = make_federation(tmp_path)
    fed.publish(lifetime_seconds=60)
    good = seal(DOCUMENT, seal_provider(fed, "330000"))
    clock = ManualClock()
    async with running(dev_config(fed), clock=clock) as (_, port):
        ch, stub = stub_as(fed, "sc.hrss", port)
        async with ch:
            assert (await verify(stub, good)).indication == credentials_pb2.TOTAL_PASSED
            clock.advance(120)
            error = await rpc_error(verify(stub, good))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(error).reason == "REGISTRY_STALE"


# Seal ------------------------------------------------------------------------------------------
async def test_seal_by_an_agency_of_the_region(federation: Federation) -> None:
    async with running(dev_config(federation)) as (gw, port):
        ch, stub = stub_as(federation, "zj.hrss", port)
        async with ch:
            response = await stub.Seal(
                credentials_pb2.SealRequest(payload=DOCUMENT, content_type="application/json"),
                timeout=CALL_TIMEOUT,
            )
            record = response.record
            assert record.payload == DOCUMENT
            assert record.content_type == "application/json"
            assert record.sealer_region == "330000"
            assert record.sealer_kid == federation.active("330000", KeyUsage.SEAL)
            sealed_at = record.sealed_at.ToDatetime(tzinfo=UTC)
            header = record.jws.split(".")[0]
            iat = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
            assert f'"iat":{int(sealed_at.timestamp())}'.encode() in iat

            own = gw.verifier.validate(record.jws)
            assert own.passed, own.message
            assert own.payload == DOCUMENT
            report = await verify(stub, record.jws)  # and over the wire
            assert report.indication == credentials_pb2.TOTAL_PASSED
            assert report.signer_kid == record.sealer_kid
            assert report.kind == SEAL_KIND
            assert report.signing_time == record.sealed_at

            detached = await stub.Seal(
                credentials_pb2.SealRequest(payload=DOCUMENT, detached=True), timeout=CALL_TIMEOUT
            )
            assert detached.record.jws.split(".")[1] == ""
            assert detached.record.content_type == "application/octet-stream"
            assert gw.verifier.validate(detached.record.jws, detached_payload=DOCUMENT).passed


async def test_seal_by_an_agency_of_an_sm2_region_is_gbt38540(tmp_path: Path) -> None:
    """A region that seals with SM2: Credentials.Seal answers with a GB/T 38540 SES_Signature
    over the payload (format says so, no JWS), which the gateway's own verifier passes."""
    fed = make_federation(tmp_path, seal_algorithm="SM2")
    fed.publish()
    async with running(dev_config(fed)) as (gw, port):
        ch, stub = stub_as(fed, "zj.hrss", port)
        async with ch:
            response = await stub.Seal(
                credentials_pb2.SealRequest(payload=DOCUMENT, content_type="application/json"),
                timeout=CALL_TIMEOUT,
            )
    record = response.record
    assert record.format == credentials_pb2.SEAL_FORMAT_GBT38540
    assert (record.jws, record.payload) == ("", DOCUMENT)
    assert record.sealer_kid == fed.active("330000", KeyUsage.SEAL)
    report = gw.documents.gm.validate_signature(record.ses_signature, DOCUMENT)
    assert report.passed, report.message
    assert (report.signer_kid, report.owner_region) == (record.sealer_kid, "330000")
    assert report.signing_time == record.sealed_at.ToDatetime(tzinfo=UTC)
    assert not gw.documents.gm.validate_signature(record.ses_signature, DOCUMENT + b" ").passed


async def test_seal_a_large_document(federation: Federation) -> None:
    document = bytes(range(256)) * (4 * SEAL_IN_THREAD_BYTES // 256)  # sealed in a thread
    async with running(dev_config(federation)) as (gw, port):
        ch, stub = stub_as(federation, "zj.hsa", port)
        async with ch:
            response = await stub.Seal(
                credentials_pb2.SealRequest(payload=document, content_type="application/pdf"),
                timeout=CALL_TIMEOUT,
            )
            assert gw.verifier.validate(response.record.jws).payload == document
            report = await verify(stub, response.record.jws)
            assert report.indication == credentials_pb2.TOTAL_PASSED


@pytest.mark.parametrize("owner", ["sc.hrss", "cq.data"])
async def test_seal_by_an_agency_of_another_region_is_denied(
    federation: Federation, owner: str
) -> None:
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, owner, port)
        async with ch:
            error = await rpc_error(
                stub.Seal(credentials_pb2.SealRequest(payload=DOCUMENT), timeout=CALL_TIMEOUT)
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            info = error_info(error)
            assert (info.reason, info.domain) == ("NOT_AUTHORISED_ROLE", "tongban")
            assert "only agencies of region 330000 may seal" in (error.details() or "")


async def test_seal_by_a_peer_gateway_is_denied(federation: Federation) -> None:
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "510000", port)  # a region gateway's TLS certificate
        async with ch:
            error = await rpc_error(
                stub.Seal(credentials_pb2.SealRequest(payload=DOCUMENT), timeout=CALL_TIMEOUT)
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error_info(error).reason == "NOT_AUTHORISED_ROLE"


@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        pytest.param({"payload": b""}, "INVALID_ARGUMENT_FORMAT", id="empty"),
        pytest.param(
            {"payload": b"x" * (MAX_SEAL_PAYLOAD_BYTES + 1)}, "REQUEST_TOO_LARGE", id="too-large"
        ),
        pytest.param(
            {"payload": b"x", "content_type": "pdf"}, "INVALID_ARGUMENT_FORMAT", id="bad-type"
        ),
        pytest.param(
            {"payload": b"x", "content_type": "text/plain\r\nX: y"},
            "INVALID_ARGUMENT_FORMAT",
            id="type-with-newline",
        ),
    ],
)
async def test_seal_refuses_bad_requests(
    federation: Federation, request_fields: dict[str, object], reason: str
) -> None:
    async with running(dev_config(federation)) as (_, port):
        ch, stub = stub_as(federation, "zj.hrss", port)
        async with ch:
            error = await rpc_error(
                stub.Seal(credentials_pb2.SealRequest(**request_fields), timeout=CALL_TIMEOUT)  # type: ignore[arg-type]
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(error).reason == reason


async def test_seal_without_the_private_key_is_unavailable(federation: Federation) -> None:
    config = dataclasses.replace(dev_config(federation), seal_keys=())
    async with running(config) as (_, port):
        ch, stub = stub_as(federation, "zj.hrss", port)
        async with ch:
            error = await rpc_error(
                stub.Seal(credentials_pb2.SealRequest(payload=DOCUMENT), timeout=CALL_TIMEOUT)
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(error).reason == "SEAL_KEY_UNAVAILABLE"
            assert federation.active("330000", KeyUsage.SEAL) in (error.details() or "")
            # Verify does not need seal keys.
            good = seal(DOCUMENT, seal_provider(federation, "330000"))
            assert (await verify(stub, good)).indication == credentials_pb2.TOTAL_PASSED


# Fetch -----------------------------------------------------------------------------------------
async def test_fetch_needs_the_query_path(federation: Federation) -> None:
    async with running(dev_config(federation, exchange=None)) as (_, port):
        ch, stub = stub_as(federation, "zj.hrss", port)
        async with ch:
            error = await rpc_error(
                stub.Fetch(
                    credentials_pb2.FetchCredentialRequest(issuing_region="510000"),
                    timeout=CALL_TIMEOUT,
                )
            )
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            assert error_info(error).reason == "NOT_IMPLEMENTED"
            assert "[exchange] is not configured" in (error.details() or "")


# rotation while serving ------------------------------------------------------------------------
async def test_seal_key_rotation_while_serving(federation: Federation) -> None:
    old_kid = federation.active("330000", KeyUsage.SEAL)
    # What `tongban keys rotate` does: a pending successor from the region CA.
    key = rotate_key(federation.pki, "330000", KeyUsage.SEAL, now=datetime.now(UTC)).successor
    config = dev_config(federation, poll_seconds=0.05)  # after the rotation: both keys held
    assert len(config.seal_keys) == 2

    async def sealed_kid(stub: credentials_pb2_grpc.CredentialsAsyncStub) -> tuple[str, str]:
        response = await stub.Seal(
            credentials_pb2.SealRequest(payload=DOCUMENT), timeout=CALL_TIMEOUT
        )
        return response.record.sealer_kid, response.record.jws

    async with running(config) as (gw, port):
        ch, stub = stub_as(federation, "zj.hrss", port)
        async with ch:
            kid, before = await sealed_kid(stub)
            assert kid == old_kid

            federation.publish()  # version 2: the successor is published, pending
            await eventually(lambda: gw.store.status().version == 2, "registry version 2")
            kid, pending = await sealed_kid(stub)
            assert kid == old_kid
            assert gw.verifier.trust.version == 2

            federation.publish()  # version 3: the successor signs, the old key retires
            await eventually(lambda: gw.store.status().version == 3, "registry version 3")
            kid, after = await sealed_kid(stub)
            assert kid == key.kid != old_kid
            assert gw.verifier.trust.version == 3

            for jws, signer in ((before, old_kid), (pending, old_kid), (after, key.kid)):
                report = await verify(stub, jws)
                assert report.indication == credentials_pb2.TOTAL_PASSED, report.message
                assert report.signer_kid == signer
                assert report.registry_version == 3
            retiring = await verify(stub, before)
            assert any("retiring" in c.detail for c in retiring.checks)


async def test_a_successor_issued_while_serving_is_taken_by_a_reload(
    federation: Federation,
) -> None:
    """The gateway started before the rotation: it holds only the old key until its seal keys
    are reloaded (SIGHUP in `tongban gateway serve`), then signs with the successor as soon as
    the registry activates it. A reload that fails keeps the keys held."""
    old_kid = federation.active("330000", KeyUsage.SEAL)
    async with running(dev_config(federation, poll_seconds=0.05)) as (gw, port):
        assert set(gw.seal_keys) == {old_kid}
        now = datetime.now(UTC)
        key = rotate_key(federation.pki, "330000", KeyUsage.SEAL, now=now).successor
        federation.publish()  # pending
        federation.publish()  # active: this gateway does not hold it yet
        await eventually(lambda: gw.store.status().version == 3, "registry version 3")
        ch, stub = stub_as(federation, "zj.hrss", port)
        async with ch:
            error = await rpc_error(
                stub.Seal(credentials_pb2.SealRequest(payload=DOCUMENT), timeout=CALL_TIMEOUT)
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(error).reason == "SEAL_KEY_UNAVAILABLE"

            fresh = dev_config(federation).seal_keys
            broken = ((fresh[0][0], federation.tls_files("330000")[1]),)
            with pytest.raises(ConfigError, match="seal key"):
                gw.reload_seal_keys(broken)
            assert set(gw.seal_keys) == {old_kid}

            assert set(gw.reload_seal_keys(fresh)) == {old_kid, key.kid}
            response = await stub.Seal(
                credentials_pb2.SealRequest(payload=DOCUMENT), timeout=CALL_TIMEOUT
            )
            assert response.record.sealer_kid == key.kid
            report = await verify(stub, response.record.jws)
            assert report.indication == credentials_pb2.TOTAL_PASSED, report.message


def test_a_seal_key_that_does_not_open_stops_the_gateway(federation: Federation) -> None:
    config = dev_config(federation)
    ((certificate, _),) = config.seal_keys
    tls_certificate, tls_key = federation.tls_files("330000")
    for pair in ((certificate, tls_key), (tls_certificate, certificate)):
        with pytest.raises(ConfigError, match="seal key"):
            Gateway(dataclasses.replace(config, seal_keys=(pair,)))
