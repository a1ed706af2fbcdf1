"""Attacks on who is calling, through real channels to three gateways: stolen and forged request
tokens, certificates that do not chain to the named party's own region, forged peer gateways on
either side of Peer.Forward, and revoked TLS certificates. docs/threats.md T1-T5, T7; the
The revocation tests were gap G1, now closed."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import Federation, error_info, eventually, make_federation

from gateway.audit import Outcome
from registry import KeyRecord, KeyState, KeyUsage
from registry._pki import issue_key
from signer import FileKeyProvider, seal, x5t_s256_of_certificate
from tongban.v1 import credentials_pb2, exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration


def si_query(cluster: Cluster, provider: str = "330000", **changes: Any) -> Any:
    return request(
        provider, "si.participation", "SI-TRANSFER", cluster.subject(provider, "si.participation"),
        **changes,
    )  # fmt: skip


async def query_as(
    cluster: Cluster, agency: str, token: str, query: Any = None
) -> grpc.aio.AioRpcError:
    """Send a query as `agency` (its own mTLS key) with `token`; return the refusal."""
    async with cluster.exchange(agency) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Query(
                query or si_query(cluster), metadata=bearer(token), timeout=CALL_TIMEOUT
            )
    return caught.value


# -- T1, T2: token theft, replay and binding -----------------------------------------------------


async def test_a_stolen_token_is_useless_over_another_clients_connection(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    """sc.hrss's token, taken by sc.hsa (same region, same agreement, its own valid mTLS key),
    is refused: the token names another agency and is bound to another certificate."""
    async with running_cluster(federation, tmp_path) as cluster:
        stolen = cluster.token("sc.hrss")
        refused = await query_as(cluster, "sc.hsa", stolen)
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(refused).reason == "TOKEN_BINDING_MISMATCH"
        # Even a token naming sc.hsa is refused when bound to sc.hrss's certificate.
        rebound = cluster.token("sc.hsa", thumbprint=cluster.thumbprint("sc.hrss"))
        refused = await query_as(cluster, "sc.hsa", rebound)
        assert error_info(refused).reason == "TOKEN_BINDING_MISMATCH"
        requester = await kit.audited(cluster, "510000")
        assert [(r.outcome, r.reason) for r in requester] == [
            (Outcome.DENIED, "TOKEN_BINDING_MISMATCH")
        ] * 2
        assert await kit.audited(cluster, "330000") == []  # nothing left the region


async def test_forged_tokens_are_refused_at_the_gateway(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    """Algorithm confusion and foreign keys, each presented over sc.hrss's own connection and
    bound to its certificate, so that only the forgery is wrong."""
    kid, certificate = kit.token_key(federation, "510000")
    public_pem = (
        x509.load_pem_x509_certificate(certificate.read_bytes())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    other_kid, _ = kit.token_key(federation, "330000")
    forgeries = {
        "alg none, empty signature": ({"alg": "none", "kid": kid}, lambda _: b""),
        "alg none, a signature": ({"alg": "none", "kid": kid}, lambda _: b"\x00" * 64),
        "HS256 keyed with the token key's public key": (
            {"alg": "HS256", "kid": kid, "typ": "JWT"},
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
        ),
        "ES256 on the Ed25519 token key": (
            {"alg": "ES256", "kid": kid, "typ": "JWT"},
            lambda _: b"\x01" * 64,
        ),
        "another region's token key": (
            {"alg": "EdDSA", "kid": other_kid, "typ": "JWT"},
            lambda _: b"\x01" * 64,
        ),
        "an unknown kid": (
            {"alg": "EdDSA", "kid": "A" * 43, "typ": "JWT"},
            lambda _: b"\x01" * 64,
        ),
    }
    async with running_cluster(federation, tmp_path) as cluster:
        for name, (header, sign) in forgeries.items():
            token = kit.forged_token(
                federation,
                "sc.hrss",
                "510000",
                header=header,
                sign=sign,
                thumbprint=cluster.thumbprint("sc.hrss"),
            )
            refused = await query_as(cluster, "sc.hrss", token)
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert error_info(refused).reason == "TOKEN_INVALID", name
            assert token.split(".")[1] not in (refused.details() or ""), name
        assert await kit.audited(cluster, "330000") == []


# -- T4, T7: certificates that do not chain to the named party's own region ----------------------

PARTIES = {
    # name: (SAN URI, issuing region or None for a rogue CA, gateway called, reason)
    "agency of 510000 issued by 330000's CA": (
        "urn:tongban:agency:sc.hrss",
        "330000",
        "510000",
        "CERTIFICATE_NOT_TRUSTED",
    ),
    "gateway of 510000 issued by 500000's CA": (
        "urn:tongban:gateway:510000",
        "500000",
        "330000",
        "CERTIFICATE_NOT_TRUSTED",
    ),
    "gateway of a region the registry does not know": (
        "urn:tongban:gateway:990000",
        "510000",
        "330000",
        "UNKNOWN_REGION",
    ),
    "agency the registry does not know": (
        "urn:tongban:agency:sc.rogue",
        "510000",
        "330000",
        "CERTIFICATE_NOT_TRUSTED",
    ),
}


@pytest.mark.parametrize("party", list(PARTIES))
async def test_a_certificate_not_anchored_in_the_named_partys_region_is_refused(
    federation: Federation, tmp_path: Path, kit: Any, party: str
) -> None:
    """The TLS handshake accepts any region's root; the per-call check then insists that the
    certificate chains to the CA of the region of the party it names."""
    uri, issuer, target, reason = PARTIES[party]
    material = kit.certificate(federation, uri, issued_by=issuer)
    async with running_cluster(federation, tmp_path) as cluster:
        forward = kit.forward_request(
            si_query(cluster),
            fed=cluster.fed,
            agency="sc.hrss",
            agency_region="510000",
            requesting_region="510000",
        )
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports[target]}", kit.credentials(federation, material, target)
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as query_refused:
                await exchange_pb2_grpc.DataExchangeStub(channel).Query(
                    si_query(cluster),
                    metadata=bearer(cluster.token("sc.hrss")),
                    timeout=CALL_TIMEOUT,
                )
            with pytest.raises(grpc.aio.AioRpcError) as forward_refused:
                await exchange_pb2_grpc.PeerStub(channel).Forward(forward, timeout=CALL_TIMEOUT)
        for refused in (query_refused.value, forward_refused.value):
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_info(refused).reason == reason
        for region in cluster.ports:
            assert await kit.audited(cluster, region) == []


async def test_a_certificate_of_a_rogue_ca_fails_the_handshake(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    material = kit.certificate(federation, "urn:tongban:gateway:510000", issued_by=None)
    async with running_cluster(federation, tmp_path) as cluster:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await kit.forward(
                cluster,
                "330000",
                kit.forward_request(
                    si_query(cluster),
                    fed=cluster.fed,
                    agency="sc.hrss",
                    agency_region="510000",
                    requesting_region="510000",
                ),
                credentials=kit.credentials(federation, material, "330000"),
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # no TLS session at all
        assert await kit.audited(cluster, "330000") == []


# -- T7: forged peer gateways --------------------------------------------------------------------


async def test_only_the_gateway_of_the_requesting_region_may_forward_for_its_own_agencies(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    """Three forgeries against 330000's Peer.Forward, each with a genuine federation key:
    an agency calling the peer API, 500000's gateway claiming to be 510000's, and 500000's
    gateway forwarding for an agency of 510000."""
    async with running_cluster(federation, tmp_path) as cluster:
        query = si_query(cluster)
        attempts = {
            "an agency certificate": (
                "sc.hrss",
                kit.forward_request(
                    query,
                    fed=cluster.fed,
                    agency="sc.hrss",
                    agency_region="510000",
                    requesting_region="510000",
                ),
            ),
            "500000's gateway claiming to be 510000's": (
                "500000",
                kit.forward_request(
                    query,
                    fed=cluster.fed,
                    agency="sc.hrss",
                    agency_region="510000",
                    requesting_region="510000",
                ),
            ),
            "500000's gateway forwarding for an agency of 510000": (
                "500000",
                kit.forward_request(
                    query,
                    fed=cluster.fed,
                    agency="sc.hrss",
                    agency_region="510000",
                    requesting_region="500000",
                ),
            ),
        }
        for name, (owner, forward) in attempts.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await kit.forward(cluster, "330000", forward, as_owner=owner)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert error_info(caught.value).reason == "NOT_AUTHORISED_ROLE", name
            assert query.subject_id not in (caught.value.details() or ""), name
        # The last one passed the caller check and was decided on: it is audited as a denial.
        provider = await kit.audited(cluster, "330000")
        assert [(r.outcome, r.reason, r.caller_region) for r in provider] == [
            (Outcome.DENIED, "NOT_AUTHORISED_ROLE", "500000")
        ]
        # The genuine gateway of 510000, for its own agency, is answered.
        answer = await kit.forward(
            cluster,
            "330000",
            kit.forward_request(
                query,
                fed=cluster.fed,
                agency="sc.hrss",
                agency_region="510000",
                requesting_region="510000",
            ),
            as_owner="510000",
        )
        assert answer.record.jws


class Impostor(exchange_pb2_grpc.PeerServicer):
    """Region 500000's gateway (its genuine TLS and seal keys) answering in place of 330000's,
    as a compromised region could after redirecting a peer endpoint: it keeps what it is sent
    and answers under its own seal, the only one it holds."""

    def __init__(self, seal_key: FileKeyProvider) -> None:
        self._seal_key = seal_key
        self.received: list[str] = []

    async def Forward(
        self, request: exchange_pb2.ForwardRequest, context: Any
    ) -> exchange_pb2.ForwardResponse:
        self.received.append(request.query.subject_id)
        payload = json.dumps({"name": "张三", "status": "参保缴费"}, ensure_ascii=False).encode()
        return exchange_pb2.ForwardResponse(
            record=credentials_pb2.SealedRecord(
                jws=seal(payload, self._seal_key),
                payload=payload,
                content_type="application/json",
                sealer_kid=self._seal_key.kid,
                sealer_region="330000",  # a claim; the seal says 500000
            ),
            fields=["name", "status"],
            registry_version=1,
        )


@contextlib.asynccontextmanager
async def impostor_of_330000(fed: Federation) -> AsyncIterator[tuple[Impostor, int]]:
    (seal_key,) = fed.inventory().find("500000", KeyUsage.SEAL, KeyState.ACTIVE)
    peer = Impostor(FileKeyProvider(fed.pki / seal_key.private_key, fed.pki / seal_key.certificate))
    chain, key = fed.tls_files("500000")
    server = grpc.aio.server()
    exchange_pb2_grpc.add_PeerServicer_to_server(peer, server)
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), chain.read_bytes())])
    )
    await server.start()
    try:
        yield peer, port
    finally:
        await server.stop(0)


async def query_330000_through(fed: Federation, tmp_path: Path, port: int) -> grpc.aio.AioRpcError:
    overrides = {"510000": {"330000": f"localhost:{port}"}}
    async with running_cluster(fed, tmp_path, peer_overrides=overrides) as cluster:
        return await query_as(
            cluster,
            "sc.hrss",
            cluster.token("sc.hrss"),
            si_query(cluster, fields=("name", "status")),
        )


async def test_a_query_is_not_sent_to_a_peer_that_is_not_the_provider_regions_gateway(
    federation: Federation, tmp_path: Path
) -> None:
    """Closed gap G4: the peer channel to region 330000 trusts only 330000's root CA, so another
    region's gateway at 330000's endpoint fails the handshake before the query is sent."""
    async with impostor_of_330000(federation) as (peer, port):
        refused = await query_330000_through(federation, tmp_path, port)
    assert peer.received == []
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(refused).reason == "PEER_UNAVAILABLE"
    assert "张三" not in (refused.details() or "")


# -- open gap G1: a revoked TLS certificate still authenticates ----------------------------------


def revoke_tls(fed: Federation, owner: str) -> tuple[bytes, bytes]:
    """Revoke `owner`'s TLS key (keyCompromise, a minute ago) and publish; a region gets a new
    active key first, so that its gateway can still start. Returns the revoked (chain, key)."""
    chain, key = fed.tls_files(owner)
    material = chain.read_bytes(), key.read_bytes()
    now = datetime.now(UTC)
    inventory = fed.inventory()
    if owner.isdigit():
        successor = issue_key(fed.pki, region=owner, owner=owner, usage="tls", now=now)
        inventory.add(KeyRecord.from_issued(fed.pki, successor, KeyState.ACTIVE, now))
    inventory.revoke(_kid_of(material[0]), at=now - timedelta(minutes=1), reason="keyCompromise")
    inventory.save()
    fed.publish()
    return material


def _kid_of(chain: bytes) -> str:
    return x5t_s256_of_certificate(x509.load_pem_x509_certificates(chain)[0])


async def test_a_revoked_agency_tls_certificate_is_refused(tmp_path: Path, kit: Any) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    material = revoke_tls(fed, "sc.hrss")
    async with running_cluster(fed, tmp_path) as cluster:
        registry = cluster.gateways["510000"].store.current()
        assert registry.key(_kid_of(material[0])).state is KeyState.REVOKED  # type: ignore[union-attr]
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports['510000']}", kit.credentials(fed, material, "510000")
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await exchange_pb2_grpc.DataExchangeStub(channel).Query(
                    si_query(cluster),
                    metadata=bearer(cluster.token("sc.hrss", thumbprint=_kid_of(material[0]))),
                    timeout=CALL_TIMEOUT,
                )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_revoked_gateway_tls_certificate_cannot_forward(tmp_path: Path, kit: Any) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    material = revoke_tls(fed, "510000")
    async with running_cluster(fed, tmp_path) as cluster:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await kit.forward(
                cluster,
                "330000",
                kit.forward_request(
                    si_query(cluster),
                    fed=cluster.fed,
                    agency="sc.hrss",
                    agency_region="510000",
                    requesting_region="510000",
                ),
                credentials=kit.credentials(fed, material, "330000"),
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_peer_serving_a_revoked_tls_certificate_is_not_called(
    tmp_path: Path, kit: Any
) -> None:
    """330000's gateway keeps serving its TLS certificate after the registry revokes it: 510000's
    gateway, which checked it before its first call to 330000, refuses its agency's next query to
    330000 at once with UNAVAILABLE / PEER_CERTIFICATE_REVOKED, without calling it."""
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    async with running_cluster(fed, tmp_path) as cluster:
        query = si_query(cluster)
        async with cluster.exchange("sc.hrss") as stub:
            token = bearer(cluster.token("sc.hrss"))
            await stub.Query(query, metadata=token, timeout=CALL_TIMEOUT)  # answered
            revoke_tls(fed, "330000")  # published: a successor is active, but not yet served
            requester = cluster.gateways["510000"]
            await eventually(lambda: requester.store.current().version == 2, "the revocation")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(si_query(cluster), metadata=token, timeout=CALL_TIMEOUT)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_info(caught.value).reason == "PEER_CERTIFICATE_REVOKED"
        assert "region 330000 is revoked (keyCompromise)" in (caught.value.details() or "")
