"""The acceptance fault suite of issue 14: real processes, real faults, under load.

Each scenario runs a `harness.Deployment` (四川's and 浙江's gateways and 浙江's data system as
processes; the test's own redis-server and private PostgreSQL where the scenario needs them),
closed-loop clients of 四川's agencies asking for 浙江's data (business licences, which 四川
answers from its own cache after the first time and reports to 浙江; social-insurance records,
each forwarded to 浙江), breaks one part for FAULT_SECONDS, repairs it, and asserts:

- every answer a client received has its durable record on 四川 (DataExchange/Query) and on
  浙江 (Peer/Forward or Peer/ReportAccess), by request id, within RECORD_WAIT of recovery;
- every refusal is UNAVAILABLE with the reason of the dependency that failed (a call that
  outlived the client's deadline would be DEADLINE_EXCEEDED); never UNKNOWN or INTERNAL
  (neither at a client nor in a gateway's grpc_server_handled_total);
- service comes back by itself: an answer on every stream after the fault ended (the time to
  it is printed, about 0.2-1.3 s here with breakers open 1 s, never asserted); after a Redis
  fault, 四川's own cache answers again;
- nothing is recorded as answered that was refused; the gateways stop gracefully.

| scenario | fault | refusals expected |
| --- | --- | --- |
| Redis kill -9 | SIGKILL of redis-server, a new empty one on the port after FAULT_SECONDS | none |
| Redis frozen | SIGSTOP / SIGCONT of redis-server | none |
| PostgreSQL stop | `pg_ctl stop -m immediate`, then start | AUDIT_UNAVAILABLE |
| PostgreSQL frozen | SIGSTOP of the postmaster and every backend | AUDIT_UNAVAILABLE |
| packets dropped | a TCP proxy in front of PostgreSQL stops forwarding | AUDIT_UNAVAILABLE |
| data system frozen | SIGSTOP of `tongban provider serve` | PROVIDER_UNAVAILABLE |
| peer frozen | SIGSTOP of 浙江's gateway | PEER_UNAVAILABLE |
| requester kill -9 | SIGKILL of 四川's gateway (with Redis, without), restarted | the connection lost |
| requester kill -9, delivery in flight | 浙江 frozen, so a report batch hangs; 四川 killed | PEER_UNAVAILABLE, the connection lost |
| audit file immutable | `chattr +i` on 四川's SQLite log (and its WAL) | AUDIT_UNAVAILABLE |

`make faults` (TONGBAN_FAULTS_LONG=1) runs the same scenarios with longer faults, more clients
and several rounds each.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_support import TcpProxy
from faults.harness import (
    BOUNDS,
    REQUESTER,
    Deployment,
    Fault,
    PrivatePostgres,
    deployment,
    judge,
    private_postgres,
    run_scenario,
)
from support import Federation, RedisServer, make_federation

from gateway.reports import FLUSH_SECONDS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    made = make_federation(tmp_path_factory.mktemp("fed"))
    made.publish()
    return made


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


def redis_of(dep: Deployment) -> RedisServer:
    assert dep.redis is not None
    return dep.redis


# Redis ----------------------------------------------------------------------------------------
async def test_redis_killed_and_restarted(fed: Federation, tmp_path: Path) -> None:
    """kill -9 of the Redis both gateways use (cache, replay window, quotas) right after a hit
    of 四川's own cache, a new empty one on the port after the fault: nothing is refused, every
    access 四川 answered from its cache reaches 浙江's log all the same, and 四川's cache
    answers again by itself."""
    async with deployment(fed, tmp_path, redis=True) as dep:
        redis = redis_of(dep)

        async def begin() -> None:
            await until_hit(dep, time.monotonic())  # its report maybe not yet acknowledged
            redis.kill()

        fault = Fault("redis kill -9", begin, redis.start, frozenset(), own_cache_again=True)
        judge(await run_scenario(dep, fault), fault)


async def test_peer_gateway_frozen(fed: Federation, tmp_path: Path) -> None:
    """SIGSTOP of 浙江's gateway: its connections stay open and nothing answers. 四川 refuses
    what needs 浙江 with PEER_UNAVAILABLE within its peer bound, then at once (breaker), keeps
    answering repeats from its cache and reports them once 浙江 is back."""
    async with deployment(fed, tmp_path, redis=True) as dep:
        fault = Fault(
            "peer frozen", dep.owner.freeze, dep.owner.thaw, frozenset({"PEER_UNAVAILABLE"})
        )
        judge(await run_scenario(dep, fault), fault)


async def test_redis_frozen(fed: Federation, tmp_path: Path) -> None:
    """SIGSTOP of redis-server: connections open, nothing answered. Each use of Redis gives up
    within its bound, its breaker opens and Redis is left alone until it answers again: nothing
    is refused and nothing is lost."""
    async with deployment(fed, tmp_path, redis=True) as dep:
        redis = redis_of(dep)
        fault = Fault("redis frozen", redis.freeze, redis.thaw, frozenset(), own_cache_again=True)
        judge(await run_scenario(dep, fault), fault)


# PostgreSQL (both audit logs, each in its own schema of the private instance) -----------------
AUDIT = frozenset({"AUDIT_UNAVAILABLE"})


async def test_postgres_stopped_immediately(
    fed: Federation, tmp_path: Path, pg: PrivatePostgres
) -> None:
    """`pg_ctl stop -m immediate` (a crash: no shutdown checkpoint), then start: queries are
    refused AUDIT_UNAVAILABLE while it is down, nothing is released unrecorded, and both
    gateways reconnect by themselves."""
    async with deployment(fed, tmp_path, redis=True, pg=pg) as dep:
        fault = Fault(
            "postgres stop -m immediate",
            lambda: asyncio.to_thread(pg.stop_immediate),
            lambda: asyncio.to_thread(pg.start),
            AUDIT,
        )
        judge(await run_scenario(dep, fault), fault)


async def test_postgres_frozen(fed: Federation, tmp_path: Path, pg: PrivatePostgres) -> None:
    """SIGSTOP of the postmaster and every backend: connections open, no answer. Appends give
    up within their bound (AUDIT_UNAVAILABLE, not the client's deadline), the breaker refuses
    at once after that; SIGCONT: service resumes."""
    async with deployment(fed, tmp_path, redis=True, pg=pg) as dep:
        fault = Fault("postgres frozen", pg.freeze, pg.thaw, AUDIT)
        judge(await run_scenario(dep, fault), fault)


async def test_postgres_connection_drops_packets(
    fed: Federation, tmp_path: Path, pg: PrivatePostgres
) -> None:
    """Both gateways reach PostgreSQL through a TCP proxy that stops forwarding (connections
    stay open, new ones are accepted, no byte goes through either way): what a silently
    dropping network looks like. Refused AUDIT_UNAVAILABLE within the bound; forwarding again:
    service resumes."""
    proxy = TcpProxy("127.0.0.1", pg.port)
    await proxy.start()
    try:
        async with deployment(fed, tmp_path, redis=True, pg=pg, pg_port=proxy.port) as dep:
            fault = Fault("postgres packets dropped", proxy.freeze, proxy.thaw, AUDIT)
            judge(await run_scenario(dep, fault), fault)
    finally:
        await proxy.close()


# the data system and the peer -----------------------------------------------------------------
async def test_data_system_frozen(fed: Federation, tmp_path: Path) -> None:
    """SIGSTOP of 浙江's data system: what needs it is refused PROVIDER_UNAVAILABLE (浙江's
    refusal, its reason carried across to 四川's client) within the bound, then at once;
    licences 四川 holds are still answered; SIGCONT: service resumes."""
    async with deployment(fed, tmp_path, redis=True) as dep:
        assert dep.provider is not None
        fault = Fault(
            "data system frozen",
            dep.provider.freeze,
            dep.provider.thaw,
            frozenset({"PROVIDER_UNAVAILABLE"}),
        )
        judge(await run_scenario(dep, fault), fault)


# the requester's own process ------------------------------------------------------------------
@pytest.mark.parametrize("redis", [True, False], ids=["with-redis", "without-redis"])
async def test_requester_killed(fed: Federation, tmp_path: Path, redis: bool) -> None:
    """kill -9 of 四川's gateway under load, a new process on the same port and audit log
    after the fault. Its clients lose their connection while it is down; every answer they had
    received is in 四川's log and reaches 浙江's, including the accesses 四川 answered from its
    cache and had not reported yet when it died."""
    async with deployment(fed, tmp_path, redis=redis) as dep:

        async def begin() -> None:
            await until_hit(dep, time.monotonic())  # its report maybe not yet acknowledged
            dep.requester.kill()

        fault = Fault(
            f"requester kill -9 ({'with' if redis else 'without'} Redis)",
            begin,
            lambda: dep.restart(REQUESTER),
            frozenset(),
            lost_connection=True,
        )
        judge(await run_scenario(dep, fault), fault)


async def test_requester_killed_while_a_report_is_in_flight(
    fed: Federation, tmp_path: Path
) -> None:
    """浙江's gateway is frozen, so the batch of access reports 四川 sends it hangs; 四川 is
    killed while it is in flight (a report flush period after a hit from its cache, within the
    peer bound), then 浙江 is thawed and 四川 restarted: 浙江 still learns of every access."""
    async with deployment(fed, tmp_path, redis=True) as dep:

        async def begin() -> None:
            dep.owner.freeze()
            frozen = time.monotonic()
            await until_hit(dep, frozen)
            await asyncio.sleep(FLUSH_SECONDS + 0.3)  # sent, and not yet given up (peer bound)
            assert time.monotonic() - frozen < FLUSH_SECONDS + BOUNDS.peer + 2.0
            dep.requester.kill()

        async def end() -> None:
            dep.owner.thaw()
            await dep.restart(REQUESTER)

        fault = Fault(
            "requester kill -9, report in flight",
            begin,
            end,
            frozenset({"PEER_UNAVAILABLE"}),
            lost_connection=True,
        )
        judge(await run_scenario(dep, fault), fault)


async def until_hit(dep: Deployment, since: float) -> None:
    """Until a call sent after `since` was answered from 四川's own cache."""
    started = time.monotonic()
    while not any(
        s.ok and s.sent >= since and s.response is not None and s.response.cache_hit
        for s in dep.tally.shots
    ):
        assert time.monotonic() - started < 30, "no answer from 四川's cache"
        await asyncio.sleep(0.02)


# the audit file ---------------------------------------------------------------------------------
def chattr(flag: str, files: list[Path], *, check: bool = True) -> None:
    if files:
        subprocess.run(["chattr", flag, *map(str, files)], check=check, capture_output=True)


def sqlite_files(path: Path) -> list[Path]:
    """The log and its write-ahead log. Not the shared-memory file: SQLite maps it, and a
    write to a mapped immutable file is SIGBUS, a crash rather than a file that cannot be
    written."""
    return [f for f in (path, Path(f"{path}-wal")) if f.exists()]


async def test_audit_file_immutable(fed: Federation, tmp_path: Path) -> None:
    """四川's SQLite audit log (the file and its WAL) made immutable
    (`chattr +i`: even root cannot write it): queries are refused AUDIT_UNAVAILABLE, with a
    repeated error logged once per interval, not a traceback each; `chattr -i`: service
    resumes and nothing answered is missing."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    if (
        subprocess.run(["chattr", "+i", str(probe)], check=False, capture_output=True).returncode
        != 0
    ):
        pytest.skip("this file system or user cannot make a file immutable (chattr +i)")
    chattr("-i", [probe])
    async with deployment(fed, tmp_path, redis=True) as dep:
        log = dep.audit[REQUESTER].sqlite
        assert log is not None
        made: list[Path] = []

        def begin() -> None:
            made[:] = sqlite_files(log)
            chattr("+i", made)

        def end() -> None:
            chattr("-i", made)
            made.clear()

        try:
            fault = Fault("audit file immutable", begin, end, AUDIT)
            outcome = await run_scenario(dep, fault)
        finally:  # a file left immutable could not even be deleted
            chattr("-i", [f for f in made if f.exists()], check=False)
        judge(outcome, fault)
        # A repeated error is logged once per interval with a count, a traceback the first time.
        assert outcome.tracebacks[REQUESTER] <= 3, dep.requester.stderr()[-4000:]
