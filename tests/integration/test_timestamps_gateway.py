"""A running gateway with `[timestamp]` pointing at a real TSA on loopback (`openssl ts -reply`):
`Credentials.Seal` answers a baseline-T seal, `Credentials.Verify` over the wire reports its
proof of existence, and the audit checkpoint the gateway signs carries a token over its note
that `openssl ts -verify` accepts."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from support import CALL_TIMEOUT, Federation, channel, credentials_as, dev_config, running
from tsa_support import running_tsa

from gateway.config import TimestampConfig
from signer import parse_jws
from tongban.v1 import credentials_pb2, credentials_pb2_grpc

pytestmark = pytest.mark.integration


async def test_a_gateway_time_stamps_its_seals_and_checkpoints(
    federation: Federation, tmp_path: Path
) -> None:
    with running_tsa(tmp_path / "tsa") as tsa:
        anchors = tmp_path / "tsa-roots.pem"
        anchors.write_bytes(tsa.root.public_bytes(Encoding.PEM))
        config = dev_config(federation, timestamp=TimestampConfig(anchors, tsa.url))
        async with running(config) as (gw, port):
            ch = channel(port, credentials_as(federation, "zj.hrss", "330000"))
            async with ch:
                stub = credentials_pb2_grpc.CredentialsStub(ch)
                sealed = await stub.Seal(
                    credentials_pb2.SealRequest(
                        payload=b'{"a": 1}', content_type="application/json"
                    ),
                    timeout=CALL_TIMEOUT,
                )
                jws = sealed.record.jws
                assert len(parse_jws(jws)[1].time_stamps) == 1
                report = await stub.Verify(
                    credentials_pb2.VerifyRequest(jws=jws), timeout=CALL_TIMEOUT
                )
            assert report.indication == credentials_pb2.TOTAL_PASSED, report.message
            assert report.HasField("proof_of_existence")
            proof = report.proof_of_existence.ToDatetime(tzinfo=UTC)
            assert proof >= sealed.record.sealed_at.ToDatetime(tzinfo=UTC)
            assert report.time_stamp_authority == "CN=tsa,O=Region"
            assert gw.audit is not None
            checkpoint = await gw.audit.checkpoint()
            assert checkpoint.time_stamp is not None
            assert tsa.verify(checkpoint.time_stamp, checkpoint.note.encode()) == "Verification: OK"
            stored = (await gw.audit.store.checkpoints())[-1]
            assert stored.time_stamp == checkpoint.time_stamp
            ok = gw.metrics.registry.get_sample_value(
                "tongban_timestamp_requests_total", {"result": "ok"}
            )
            assert ok is not None
            assert ok >= 2
