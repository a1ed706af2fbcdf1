"""Helpers shared by the tests (importable as `support`; pytest puts tests/ on the path)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from gateway._ports import free_loopback_port
from gateway.config import GatewayConfig
from gateway.demo.config import config_for_dev_pki
from gateway.demo.pki import init_dev_federation
from gateway.server import Gateway, create_gateway
from registry import (
    CURRENT_SNAPSHOT,
    Inventory,
    KeyState,
    KeyUsage,
    PublishResult,
    load_source,
    publish,
)

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent  # the virtualenv the tests run in


def shell_env() -> dict[str, str]:
    """The environment of a command run as the docs' reader runs it: the virtualenv's bin first
    on PATH, wide columns, unbuffered output."""
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(COLUMNS="200", PYTHONUNBUFFERED="1")
    return env


@contextlib.contextmanager
def interrupted_at_end(grace: float) -> Iterator[list[subprocess.Popen[str]]]:
    """A list to put started processes in; at the end, each still running gets SIGINT, then
    SIGKILL if it has not ended within `grace` seconds, and its pipes are closed."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in started:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


DEMO_SOURCE = REPO / "conf" / "registry"
SHARED = REPO.parent / "shared"
DEMO_REGIONS = ("330000", "510000", "500000")


@dataclass
class Federation:
    """A dev PKI for the demo regions, its inventory, and a publish folder."""

    root: Path
    source: Path
    pki: Path
    published: Path

    @property
    def current(self) -> Path:
        return self.published / CURRENT_SNAPSHOT

    def publish(
        self, *, now: datetime | None = None, lifetime_seconds: int | None = None
    ) -> PublishResult:
        return publish(
            self.source,
            self.pki,
            self.published,
            now=now or datetime.now(UTC),
            lifetime_seconds=lifetime_seconds,
        )

    def inventory(self) -> Inventory:
        return Inventory.load(self.pki)

    def active(self, owner: str, usage: KeyUsage) -> str:
        """The kid of the owner's active key for `usage`."""
        (record,) = self.inventory().find(owner, usage, KeyState.ACTIVE)
        return record.kid

    def tls_files(self, owner: str) -> tuple[Path, Path]:
        """(certificate chain, private key) of the owner's active TLS key."""
        (record,) = self.inventory().find(owner, KeyUsage.TLS, KeyState.ACTIVE)
        return self.pki / record.certificate, self.pki / record.private_key


def make_federation(
    root: Path,
    source: Path = DEMO_SOURCE,
    now: datetime | None = None,
    seal_algorithm: str = "ES256",
) -> Federation:
    """A dev PKI for the source's regions; `seal_algorithm` is their seal keys' (SM2: GB/T 38540
    seals, each with the region's SESeal)."""
    loaded = load_source(source)
    regions = [r.code for r in loaded.regions]
    init_dev_federation(
        root / "pki",
        loaded,
        regions,
        now=now or datetime.now(UTC),
        seal_algorithm=seal_algorithm,
    )
    return Federation(root=root, source=source, pki=root / "pki", published=root / "published")


def without_agency(fed: Federation, folder: Path, agency_id: str) -> Federation:
    """The same PKI and publish folder, publishing from a copy of the source without one agency
    (whose certificates the PKI still holds: a party the registry no longer knows)."""
    folder.mkdir(parents=True)
    for file in fed.source.glob("*.toml"):
        (folder / file.name).write_bytes(file.read_bytes())
    agencies = folder / "agencies.toml"
    text = agencies.read_text(encoding="utf-8")
    pattern = rf'\[agencies\."{re.escape(agency_id)}"\]\n(?:[^\[\n].*\n|\n)*'
    trimmed = re.sub(pattern, "", text)
    if trimmed == text:
        raise ValueError(f"agency {agency_id} is not in {agencies}")
    agencies.write_text(trimmed, encoding="utf-8")
    return dataclasses.replace(fed, source=folder)


async def eventually(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Wait until `predicate()` is true, polling; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


# in-process gateways and mTLS clients ----------------------------------------------------------
CALL_TIMEOUT = 5.0  # seconds: any single RPC in the tests


def region_root(fed: Federation, region: str) -> bytes:
    return (fed.pki / "regions" / region / "ca" / "root.pem").read_bytes()


def credentials_as(fed: Federation, owner: str, target_region: str) -> grpc.ChannelCredentials:
    """mTLS credentials of `owner`'s TLS key, trusting `target_region`'s root CA."""
    chain, key = fed.tls_files(owner)
    return grpc.ssl_channel_credentials(
        region_root(fed, target_region), key.read_bytes(), chain.read_bytes()
    )


def channel(port: int, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The `google.rpc.ErrorInfo` carried in a rich status's trailing metadata."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            status = status_pb2.Status.FromString(value)
            assert status.code == exc.code().value[0]
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError(f"no ErrorInfo in the status of {exc.code().name}: {exc.details()}")


def dev_config(fed: Federation, region: str = "330000", **changes: Any) -> GatewayConfig:
    """A dev PKI gateway's configuration, whose queries for conditional datasets may name any
    case id (`[cases] bind_queries = false`): the suites using it test other things."""
    config = config_for_dev_pki(
        fed.pki, region, listen="127.0.0.1:0", snapshot_file=fed.current, bind_queries=False
    )
    return dataclasses.replace(config, grace_seconds=0.5, **changes)


@contextlib.asynccontextmanager
async def running(
    config: GatewayConfig, **kwargs: Callable[[], datetime]
) -> AsyncIterator[tuple[Gateway, int]]:
    gw, port = await create_gateway(config, **kwargs)
    try:
        yield gw, port
    finally:
        await gw.stop(0)


class ManualClock:
    """A clock the test advances instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# Ports handed to servers the tests start are taken below the kernel's ephemeral range: a port
# picked by bind(0) is an ephemeral one, and an outgoing connection (to Redis, to a peer) may take
# it as its local port before the server binds it; a gateway then refuses it as "in use".
_T = TypeVar("_T")


def free_port() -> int:
    """A loopback port no socket holds now, outside the ephemeral range where possible (the
    gateway's own picker, `gateway._ports.free_loopback_port`, which the demo uses too)."""
    return free_loopback_port()


def port_taken(error: BaseException) -> bool:
    """Did a server fail to start because its port, free when `free_port` picked it, was
    bound by someone else before the server bound it (EADDRINUSE, whatever wraps it)?"""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return True
        if "already in use" in str(seen) or "Failed to bind" in str(seen):
            return True  # the gateway's check (gateway._ports), gRPC's bind
        seen = seen.__cause__ or seen.__context__
    return False


async def start_on_free_ports(start: Callable[[], Awaitable[_T]], *, attempts: int = 5) -> _T:
    """`start()`, which picks its ports with `free_port` each time it runs, run again with new
    ones when a port was taken meanwhile (`port_taken`): a picked port is only free when it is
    picked. For servers that must know their ports before they start (gateways told each
    other's); a lone server binds port 0 and reports its port instead. `start` undoes what it
    started when it fails."""
    for attempt in range(1, attempts + 1):
        try:
            return await start()
        except Exception as exc:
            if attempt == attempts or not port_taken(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def start_processes_on_free_ports(start: Callable[[], _T], *, attempts: int = 5) -> _T:
    """`start_on_free_ports` for servers started as processes, from synchronous code: `start`
    fails with the server's own words (its stderr) when one exits at start-up."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as exc:
            if attempt == attempts or not port_taken(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class RedisServer:
    """A throw-away redis-server on a loopback port: start, SIGKILL, start again."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "redis-server exited at start"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("redis-server did not start within 5 s")

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process is killed all the same
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)
            self.process = None


def refusal_event(stderr: str) -> str:
    """The one refusal a serving command (`gateway serve`, `provider serve`, `demo`) wrote to
    a stderr that is not a terminal: one JSON log line (docs/logging.md), its event text."""
    import json

    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    event = json.loads(lines[0])
    assert (event["logger"], event["level"]) == ("tongban.cli", "error"), event
    text: str = event["event"]
    return text


def sign_forward_message(
    fed: Federation,
    message: Any,
    *,
    signer: str | None = None,
    now: datetime | None = None,
    owner: str | None = None,
) -> Any:
    """The `exchange_pb2.ForwardRequest` `message` with the signed request its requesting
    gateway makes of it (`gateway.forward_signing`), by the audit key of `signer` (default:
    the requesting region; a region without one signs as 510000, which the owner refuses)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gateway.forward_signing import ForwardDocument, sign_forward
    from gateway.policy import DataRequest
    from signer import load_private_key

    region = signer or message.requesting_region
    found = fed.inventory().find(region, KeyUsage.AUDIT, KeyState.ACTIVE) or (
        fed.inventory().find("510000", KeyUsage.AUDIT, KeyState.ACTIVE)
    )
    record = found[0]
    key = load_private_key(fed.pki / record.private_key)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    query = message.query
    document = ForwardDocument(
        requesting_region=message.requesting_region,
        owner_region=owner or query.provider_region,
        request=DataRequest(
            provider_region=query.provider_region,
            dataset=query.dataset,
            purpose=query.purpose,
            subject_id=query.subject_id,
            fields=tuple(query.fields),
            case_id=query.case_id,
            request_id=query.request_id,
            consent=query.consent,
        ),
        caller_agency=message.caller.agency_id,
        caller_region=message.caller.region,
        caller_operator=message.caller.operator,
        caller_thumbprint=message.caller.certificate_thumbprint,
        credential_type=message.credential_type,
        requesting_gateway_audit_id=message.requesting_gateway_audit_id,
        issued_at=now or datetime.now(UTC),
    )
    signed = type(message)()
    signed.CopyFrom(message)
    signed.signed_request = sign_forward(document, key, record.kid)
    return signed
