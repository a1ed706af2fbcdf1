"""`gateway.peer_certificates`: before a peer gateway is called, the server certificate its
endpoint presents (read by a probe handshake with `ssl`, against a real TLS server on loopback
that asks for our client certificate and speaks h2) is checked with its own OCSP responder (a
real `openssl ocsp` over the index of an OpenSSL-made CA) and the registry, under the
`[revocation]` policy: good, the call goes ahead; revoked (`openssl ca -revoke`, responder
restarted), every call to that peer is refused at once; unreachable, refused under hard-fail and
called with a log line under soft-fail; a probe that cannot connect decides nothing."""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from openssl_ca import OpenSslCa, make_openssl_ca
from revocation_support import Responder, cert, free_port
from support import dev_config, make_federation, running

from gateway.config import RevocationConfig
from gateway.errors import status_code
from gateway.metrics import GatewayMetrics
from gateway.peer_certificates import PeerCertificateRefused, PeerCertificates, probe
from gateway.peers import PeerPool
from gateway.revocation import CallerRevocation, make_fetcher
from registry import KeyEntry, KeyState, KeyUsage, Region, Registry
from signer import x5t_s256_of_certificate

REGION = "500000"


class _TlsServer:
    """A TLS server on loopback presenting `chain`: it requires a client certificate from
    `client_root`, offers ALPN h2, and closes each connection after its handshake."""

    def __init__(self, chain: Path, key: Path, client_root: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(chain, key)
        self.context.load_verify_locations(client_root)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.alpn: list[str | None] = []
        self.errors: list[Exception] = []
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            try:
                conn.settimeout(2.0)
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.alpn.append(tls.selected_alpn_protocol())
            except (OSError, ssl.SSLError) as exc:
                self.errors.append(exc)
                conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()


@dataclass
class Pki:
    ca: OpenSslCa
    responder: Responder
    cached: Responder  # answers with a nextUpdate 5 minutes on
    servers: dict[str, _TlsServer]
    leaves: dict[str, Path]
    client_context: Callable[[str], ssl.SSLContext]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    ca = make_openssl_ca(tmp_path_factory.mktemp("peers") / "ca", "Chongqing")
    port = free_port()
    ca.issue("responder", "ocsp")
    san = "DNS:localhost,URI:urn:tongban:gateway:500000"
    cached_port = free_port()
    urls = {
        "peer": f"http://127.0.0.1:{port}/",
        "dead": f"http://127.0.0.1:{free_port()}/",
        "cached": f"http://127.0.0.1:{cached_port}/",
    }
    servers, leaves = {}, {}
    for name, url in urls.items():
        leaf, key = ca.issue(name, "tls", ocsp_url=url, san=san)
        chain = ca.dir / f"{name}.chain.pem"
        chain.write_bytes(leaf.read_bytes() + ca.intermediate.read_bytes())
        servers[name], leaves[name] = _TlsServer(chain, key, ca.root), leaf
    client, client_key = ca.issue("client", "tls", san="URI:urn:tongban:gateway:330000")
    client_chain = ca.dir / "client.chain.pem"
    client_chain.write_bytes(client.read_bytes() + ca.intermediate.read_bytes())

    def client_context(region: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca.root)
        context.load_cert_chain(client_chain, client_key)
        return context

    responder = Responder(ca, port, minutes=None)  # no nextUpdate: asked again on every call
    responder.start()
    cached = Responder(ca, cached_port, minutes=5)
    cached.start()
    yield Pki(ca, responder, cached, servers, leaves, client_context)
    responder.stop()
    cached.stop()
    for server in servers.values():
        server.stop()


def _registry(pki: Pki, endpoint: str, version: int = 1, **changes: Any) -> Registry:
    now = datetime.now(UTC)
    der = [cert(p).public_bytes(Encoding.DER) for p in (pki.ca.root, pki.ca.intermediate)]
    region = Region(REGION, "Chongqing", endpoint, ca_certificates=tuple(der))
    return Registry(
        name="test",
        version=version,
        issued_at=now - timedelta(hours=1),
        expires_at=now + timedelta(days=1),
        refresh_seconds=60,
        regions=(region,),
        **changes,
    )


class _Store:
    def __init__(self, registry: Registry) -> None:
        self.snapshot = type("Snapshot", (), {"registry": registry})()

    def current(self) -> Registry:
        registry: Registry = self.snapshot.registry
        return registry


def _checker(
    pki: Pki, policy: str = "hard-fail", clock: Callable[[], datetime] | None = None
) -> tuple[PeerCertificates, GatewayMetrics]:
    metrics = GatewayMetrics()
    now = clock or (lambda: datetime.now(UTC))
    fetcher = make_fetcher(RevocationConfig(timeout_seconds=2.0, unreachable=policy), metrics, now)
    assert fetcher is not None
    checks = PeerCertificates(
        pki.client_context,
        CallerRevocation(fetcher, unreachable=policy, clock=now),
        fetcher,
        timeout_seconds=2.0,
        metrics=metrics,
        clock=now,
    )
    return checks, metrics


def _count(metrics: GatewayMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "tongban_peer_certificate_checks_total", {"peer_region": REGION, "result": result}
    )
    return value or 0.0


async def _called(stub: Any) -> str:
    return "called"


def test_the_probe_reads_the_leaf_with_our_client_certificate_and_alpn_h2(pki: Pki) -> None:
    server = pki.servers["peer"]
    der = probe(f"localhost:{server.port}", pki.client_context(REGION), 2.0)
    assert der == cert(pki.leaves["peer"]).public_bytes(Encoding.DER)
    deadline = time.monotonic() + 2.0
    while not server.alpn and time.monotonic() < deadline:  # the server's side ends after ours
        time.sleep(0.01)
    assert server.alpn[-1] == "h2", server.errors
    with pytest.raises(ssl.SSLCertVerificationError):  # the host name is checked, as gRPC does
        probe(f"127.0.0.1:{server.port}", pki.client_context(REGION), 2.0)


async def test_good_then_revoked_through_the_pool(pki: Pki) -> None:
    """Good: the call goes ahead. Revoked with `openssl ca -revoke`, the responder restarted:
    every call to that peer is refused at once with PEER_CERTIFICATE_REVOKED (UNAVAILABLE), on
    the same channel, without a new probe."""
    checks, metrics = _checker(pki)
    store = _Store(_registry(pki, f"localhost:{pki.servers['peer'].port}"))
    pool = PeerPool(
        store,  # type: ignore[arg-type]
        lambda region: grpc.ssl_channel_credentials(pki.ca.root.read_bytes()),
        certificates=checks,
    )
    try:
        assert await pool.call(REGION, _called, timeout_seconds=1.0) == "called"
        assert await pool.call(REGION, _called, timeout_seconds=1.0) == "called"
        assert _count(metrics, "good") == 2
        pki.ca.revoke_for(pki.leaves["peer"], "keyCompromise")
        pki.responder.restart()
        for _ in range(2):
            with pytest.raises(PeerCertificateRefused, match=r"region 500000 was revoked at") as e:
                await pool.call(REGION, _called, timeout_seconds=1.0)
            assert e.value.reason == "PEER_CERTIFICATE_REVOKED"
            assert status_code(e.value.reason) is grpc.StatusCode.UNAVAILABLE
            assert "(key_compromise), by its OCSP" in str(e.value)
        assert _count(metrics, "revoked") == 2
        assert checks.probes == 1  # once per channel: the status is asked again, not the peer
        assert pool.breaker(REGION).state == "closed"  # the peer is not blamed
    finally:
        await pool.close()


@pytest.mark.parametrize("policy", ["hard-fail", "soft-fail"])
async def test_an_unreachable_responder_follows_the_policy(
    pki: Pki, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    checks, metrics = _checker(pki, policy)
    registry = _registry(pki, "")
    with caplog.at_level(logging.WARNING):
        if policy == "hard-fail":
            with pytest.raises(PeerCertificateRefused, match="cannot be learnt") as e:
                await checks.check(REGION, f"localhost:{pki.servers['dead'].port}", registry)
            assert e.value.reason == "REVOCATION_UNAVAILABLE"
            assert _count(metrics, "unavailable") == 1
            assert "not calling the gateway of region 500000" in caplog.text
        else:
            await checks.check(REGION, f"localhost:{pki.servers['dead'].port}", registry)
            assert _count(metrics, "unreachable") == 1
            assert (
                "accepted the gateway of region 500000 without a revocation status of its "
                "server certificate (soft-fail)"
            ) in caplog.text


async def test_a_key_the_registry_revokes_is_refused_without_asking_online(pki: Pki) -> None:
    checks, metrics = _checker(pki)
    leaf = cert(pki.leaves["dead"])  # its responder is down: only the registry can answer
    now = datetime.now(UTC)
    entry = KeyEntry(
        kid=x5t_s256_of_certificate(leaf),
        usage=KeyUsage.TLS,
        owner=REGION,
        region=REGION,
        algorithm="ES256",
        state=KeyState.REVOKED,
        certificate=leaf.public_bytes(Encoding.DER),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        published_at=now - timedelta(hours=1),
        revoked_at=now - timedelta(minutes=1),
        revocation_reason="key compromise",
    )
    registry = _registry(pki, "", keys=(entry,))
    with pytest.raises(PeerCertificateRefused, match=r"is revoked \(key compromise\)") as e:
        await checks.check(REGION, f"localhost:{pki.servers['dead'].port}", registry)
    assert e.value.reason == "PEER_CERTIFICATE_REVOKED"
    assert _count(metrics, "revoked") == 1


async def test_a_probe_that_cannot_connect_decides_nothing(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    checks, metrics = _checker(pki)
    target = f"localhost:{free_port()}"
    with caplog.at_level(logging.WARNING):
        await checks.check(REGION, target, _registry(pki, ""), budget_seconds=0.5)
        await checks.check(REGION, target, _registry(pki, ""))
    assert "could not be read for its revocation check" in caplog.text
    assert "the call goes ahead" in caplog.text
    assert _count(metrics, "probe_failed") == 2
    assert checks.probes == 1  # tried again 30 s later, not on every call


async def test_a_silent_endpoint_holds_the_first_call_no_longer_than_its_budget(pki: Pki) -> None:
    checks, metrics = _checker(pki)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers a hello
        started = time.monotonic()
        await checks.check(
            REGION, f"localhost:{silent.getsockname()[1]}", _registry(pki, ""), budget_seconds=0.3
        )
        assert time.monotonic() - started < 1.5
    assert _count(metrics, "probe_failed") == 1


async def test_probed_again_for_a_new_registry_version_and_after_next_update(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    offset = timedelta()

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    checks, metrics = _checker(pki, "soft-fail", clock)
    target = f"localhost:{pki.servers['cached'].port}"
    registry = _registry(pki, "")
    await checks.check(REGION, target, registry)
    await checks.check(REGION, target, registry)
    assert checks.probes == 1
    assert _count(metrics, "good") == 2
    # a new registry version: probed again in the background, the certificate held is checked
    await checks.check(REGION, target, dataclasses.replace(registry, version=2))
    await checks.close()
    assert checks.probes == 2
    assert _count(metrics, "good") == 3
    offset = timedelta(minutes=6)  # past the cached status's nextUpdate: probed and asked again
    with caplog.at_level(logging.WARNING):
        await checks.check(REGION, target, dataclasses.replace(registry, version=2))
        await checks.close()
    assert checks.probes == 3
    # the responder's new answer is not current by this clock: no status (soft-fail: called)
    assert _count(metrics, "unreachable") == 1


async def test_the_gateways_probe_context_puts_its_key_on_disk_encrypted_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GatewayTls.probe_context` (what a running gateway probes its peers with): our own
    certificate and key, handed to `ssl` through a temporary file that holds the key encrypted
    and is gone afterwards; the probe of a real gateway of another region reads its leaf."""
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    written: dict[Path, bytes] = {}
    real_write = Path.write_bytes

    def spy(self: Path, data: bytes) -> int:
        written[self] = data
        return real_write(self, data)

    async with (
        running(dev_config(fed, "330000")) as (_, port),
        running(dev_config(fed, "510000")) as (requester, _),
    ):
        monkeypatch.setattr(Path, "write_bytes", spy)
        context = requester._tls.probe_context("330000")
        monkeypatch.undo()
        der = probe(f"localhost:{port}", context, 2.0)
    key_files = [data for path, data in written.items() if path.name == "key.pem"]
    assert len(key_files) == 1
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key_files[0]
    assert not any(path.exists() for path in written)
    chain, _ = fed.tls_files("330000")
    assert der == cert(chain).public_bytes(Encoding.DER)
