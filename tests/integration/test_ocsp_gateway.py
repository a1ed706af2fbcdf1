"""A region whose CA is made with the OpenSSL command line, with an OCSP responder (`openssl
ocsp` over the CA's index) named in its agencies' TLS certificates: a running gateway of another
region admits the agency while the responder says good, and refuses every call with
UNAUTHENTICATED / CERTIFICATE_REVOKED once `openssl ca -revoke` is run and the responder
restarted (it answers without nextUpdate here, so nothing is cached between the two calls)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from openssl_ca import make_openssl_ca
from revocation_support import Responder, free_port
from support import (
    CALL_TIMEOUT,
    channel,
    dev_config,
    error_info,
    make_federation,
    region_root,
    running,
)

from registry import import_ca, import_crl, publish
from registry._pki import ca_dir
from tongban.v1 import registry_pb2, registry_pb2_grpc

pytestmark = pytest.mark.integration

REGION = "500000"  # its dev CA is taken away: it brings its own, made with OpenSSL


async def test_an_agency_revoked_by_its_ocsp_responder_is_refused(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
    fed = make_federation(tmp_path / "fed", now=now - timedelta(hours=1))
    shutil.rmtree(ca_dir(fed.pki, REGION))
    ca = make_openssl_ca(tmp_path / "ca", "Chongqing")
    import_ca(fed.pki, REGION, ca.root, [ca.intermediate], now=now)
    import_crl(fed.pki, REGION, ca.crl("first.crl"), now=now)
    publish(fed.source, fed.pki, fed.published, now=now)

    port = free_port()
    ca.issue("responder", "ocsp")
    leaf, key = ca.issue(
        "cq-hrss-tls", "tls", ocsp_url=f"http://127.0.0.1:{port}/",
        san="URI:urn:tongban:agency:cq.hrss",
    )  # fmt: skip
    chain = leaf.read_bytes() + ca.intermediate.read_bytes()
    credentials = grpc.ssl_channel_credentials(region_root(fed, "330000"), key.read_bytes(), chain)
    responder = Responder(ca, port, minutes=None)
    responder.start()
    try:
        async with running(dev_config(fed)) as (gw, gw_port), channel(gw_port, credentials) as ch:
            stub = registry_pb2_grpc.RegistryStub(ch)
            answer = await stub.GetSnapshot(registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT)
            assert answer.snapshot.version >= 1
            ca.revoke_for(leaf, "keyCompromise")
            responder.restart()
            for _ in range(2):  # every call, on the same connection
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetSnapshot(registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT)
                assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
                assert error_info(caught.value).reason == "CERTIFICATE_REVOKED"
                assert "(key_compromise), by its OCSP" in (caught.value.details() or "")
            counted = gw.metrics.registry.get_sample_value(
                "tongban_revocation_checks_total", {"source": "ocsp", "result": "revoked"}
            )
            assert counted == 2
    finally:
        responder.stop()
