"""A registry with an SM2 region on a running gateway: the other regions keep their mutual TLS
(the trust bundle carries the SM2 root too, which BoringSSL loads without using it), and the
gateway's parties are served as before. (The SM2 region's own gateway would need a P-256 CA for
its TLS keys: TLS keys are always ES256.)"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sm2_support import add_sm2_key, make_region_sm2
from support import CALL_TIMEOUT, channel, credentials_as, dev_config, make_federation, running

from gateway._tls import trust_bundle
from tongban.v1 import registry_pb2, registry_pb2_grpc

pytestmark = pytest.mark.integration

SM2_REGION = "510000"


async def test_a_gateway_serves_with_an_sm2_region_in_its_registry(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    fed = make_federation(tmp_path, now=now)
    root, issuing = make_region_sm2(fed.pki, SM2_REGION, now)
    add_sm2_key(fed.pki, issuing, region=SM2_REGION, usage="seal", now=now)
    fed.publish(now=now)

    async with (
        running(dev_config(fed)) as (gw, port),
        channel(port, credentials_as(fed, "cq.hrss", "330000")) as ch,
    ):
        snapshot = gw.store.snapshot
        assert snapshot is not None
        region = snapshot.registry.region(SM2_REGION)
        assert region is not None
        assert region.ca_certificates[0] == root.certificate.public_bytes(Encoding.DER)
        assert root.pem in trust_bundle(snapshot.registry)
        response = await registry_pb2_grpc.RegistryStub(ch).GetSnapshot(
            registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT
        )
        assert response.snapshot.version == 1
        # a party of the SM2 region holds a TLS certificate of its former P-256 CA, whose root
        # the registry no longer carries: the handshake fails
        async with channel(port, credentials_as(fed, "sc.hrss", "330000")) as refused:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await registry_pb2_grpc.RegistryStub(refused).GetSnapshot(
                    registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT
                )
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
