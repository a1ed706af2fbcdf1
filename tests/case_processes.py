"""Three regions' gateways, each `tongban gateway serve` in its own process, for the case tests
(issue 19; importable as `case_processes`).

四川 510000 (the window of both demo matters), 重庆 500000 (handles them) and 浙江 330000 (assists
in 多地联办): each gateway a `python -m gateway.cli gateway serve --config FILE` process, its
configuration written by the fault suite's `faults.harness.gateway_toml` from the dev PKI's keys
(SQLite audit log in the work folder, the other two regions as peers, no Redis; queries bound to
cases, at most 4 MiB per material), and 四川's demo
data system (`tongban provider serve`) as a fourth process, for the queries a handling agency
makes under a case. `Regions` starts them, SIGKILLs and restarts one, and calls the `Cases`
service (and `Credentials.Seal`, `DataExchange.Query`, `Peer.Forward`) as an agency would: mutual
TLS with the agency's key, a request token of its region.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from faults.harness import (
    AuditPlace,
    Served,
    bad_codes,
    gateway_toml,
    scrape,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from query_support import Cluster, bearer
from support import (
    Federation,
    credentials_as,
    free_port,
    make_federation,
    start_processes_on_free_ports,
)

from gateway.demo.data import DemoData
from tongban.v1 import (
    cases_pb2,
    cases_pb2_grpc,
    credentials_pb2,
    credentials_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
)

__all__ = [
    "CALL_TIMEOUT",
    "CASES",
    "CHONGQING",
    "REGIONS",
    "SICHUAN",
    "ZHEJIANG",
    "Regions",
    "act",
    "applicants",
    "assert_recorded_once",
    "id_card",
    "ids",
    "kinds",
    "new_request_id",
    "three_regions",
]

SICHUAN, CHONGQING, ZHEJIANG = "510000", "500000", "330000"
REGIONS = (SICHUAN, CHONGQING, ZHEJIANG)
HEALTH_AGENCY = {SICHUAN: "sc.data", CHONGQING: "cq.data", ZHEJIANG: "zj.data"}
CALL_TIMEOUT = 10.0  # one call (a Query makes two hops; a Submit verifies every material)
START_SECONDS = 120.0  # a hang guard for a gateway to serve on a loaded 2-core machine
WAIT_SECONDS = 60.0  # a hang guard for what a test waits for (a delivery); never asserted
MAX_MATERIAL_BYTES = 4 * 1024 * 1024  # [cases] max_material_bytes of every gateway
CASES = "/tongban.v1.Cases/"
DELIVER = "/tongban.v1.Peer/DeliverCaseEvents"


@dataclass
class Regions:
    """The three gateways and 四川's data system (see the module docstring)."""

    fed: Federation
    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    gateways: dict[str, Served] = field(default_factory=dict)
    provider: Served | None = None
    provider_port: int = 0
    restarts: list[float] = field(default_factory=list)  # seconds each restart took to serve

    # processes ---------------------------------------------------------------------------------
    def audit_db(self, region: str) -> Path:
        return self.workdir / f"audit-{region}.db"

    def prepare(self) -> None:
        self.ports = {r: free_port() for r in REGIONS}
        self.metrics_ports = {r: free_port() for r in REGIONS}
        self.provider_port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        python = [sys.executable, "-m", "gateway.cli"]
        self.provider = Served(
            f"provider-{SICHUAN}",
            [*python, "provider", "serve", "--region", SICHUAN,
             "--listen", f"127.0.0.1:{self.provider_port}"],
            self.workdir, env,
        )  # fmt: skip
        for region in REGIONS:
            text = gateway_toml(
                self.fed,
                region,
                listen=f"127.0.0.1:{self.ports[region]}",
                metrics_listen=f"127.0.0.1:{self.metrics_ports[region]}",
                audit=AuditPlace(sqlite=self.audit_db(region)),
                provider=f"127.0.0.1:{self.provider_port}" if region == SICHUAN else "",
                peers={r: f"localhost:{self.ports[r]}" for r in REGIONS if r != region},
                redis=False,
                bind_queries=True,
                max_material_bytes=MAX_MATERIAL_BYTES,
            )
            config = self.workdir / f"gateway-{region}.toml"
            config.write_text(text, encoding="utf-8")
            self.gateways[region] = Served(
                f"gateway-{region}",
                [*python, "gateway", "serve", "--config", str(config)],
                self.workdir,
                env,
            )

    def start(self) -> None:
        """Every process at once; returns when every gateway serves."""
        assert self.provider is not None
        self.provider.start()
        for gateway in self.gateways.values():
            gateway.start()
        started = time.monotonic()
        while not _listens(self.provider_port):
            assert self.provider.alive(), f"the data system exited: {self.provider.stderr()}"
            assert time.monotonic() - started < START_SECONDS, "the data system does not listen"
            time.sleep(0.05)
        for region in REGIONS:
            self.wait_serving(region)

    def wait_serving(self, region: str) -> float:
        """Until `region`'s gateway answers its health check SERVING (it must not exit)."""
        started = time.monotonic()
        process = self.gateways[region]
        credentials = credentials_as(self.fed, HEALTH_AGENCY[region], region)
        while True:
            assert process.alive(), f"{process.name} exited: {process.stderr()[-3000:]}"
            with (
                contextlib.suppress(grpc.RpcError),
                grpc.secure_channel(f"localhost:{self.ports[region]}", credentials) as channel,
            ):
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2.0
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            assert time.monotonic() - started < START_SECONDS, (
                f"{process.name} not serving: {process.stderr()[-3000:]}"
            )
            time.sleep(0.05)

    def kill(self, region: str) -> None:
        """SIGKILL `region`'s gateway; returns once it is gone."""
        gateway = self.gateways[region]
        gateway.kill()
        assert gateway.process is not None
        assert gateway.process.returncode == -9

    def freeze(self, region: str) -> None:
        """SIGSTOP `region`'s gateway: its connections stay open, nothing is answered."""
        self.gateways[region].freeze()

    def thaw(self, region: str) -> None:
        self.gateways[region].thaw()

    async def restart(self, region: str) -> None:
        """A new process for a killed gateway (same configuration, port and audit log), once
        it serves."""
        self.gateways[region].start()
        self.restarts.append(await asyncio.to_thread(self.wait_serving, region))

    async def revive(self) -> None:
        """Thaw, or restart, any gateway a failed test left stopped or killed (the next test
        needs all three)."""
        for region in REGIONS:
            if self.gateways[region].alive():
                self.thaw(region)
            else:
                await self.restart(region)

    def bad_codes(self) -> dict[str, int]:
        """UNKNOWN / INTERNAL statuses each gateway ended calls with since it started."""
        return {r: bad_codes(scrape(self.metrics_ports[r])) for r in REGIONS}

    def stop(self) -> dict[str, int]:
        """Graceful stop (SIGINT) of every process still running; their exit codes."""
        running = [*self.gateways.values(), *([self.provider] if self.provider else [])]
        for process in running:
            process.interrupt()
        return {process.name: process.wait_stopped(10.0) for process in running}

    def kill_all(self) -> None:
        for process in [*self.gateways.values(), self.provider]:
            if process is not None:
                process.kill()

    def stderr(self, region: str) -> str:
        return self.gateways[region].stderr()

    # callers -----------------------------------------------------------------------------------
    def region_of(self, agency: str) -> str:
        return next(r.region for r in self.fed.inventory().records() if r.owner == agency)

    def token(self, agency: str, applicant: str = "") -> tuple[tuple[str, str], ...]:
        """`agency`'s request token (`applicant`: as its region's citizen portal for them)."""
        return bearer(Cluster(self.fed, self.ports).token(agency, applicant=applicant))

    @contextlib.asynccontextmanager
    async def channel(
        self, owner: str, region: str | None = None
    ) -> AsyncIterator[grpc.aio.Channel]:
        """A channel to `region`'s gateway (the owner's own by default) over mTLS as `owner` (an
        agency, or a region: its gateway's key)."""
        target = region or (owner if owner.isdigit() else self.region_of(owner))
        async with grpc.aio.secure_channel(
            f"localhost:{self.ports[target]}",
            credentials_as(self.fed, owner, target),
            # A new channel per call: gRPC's connect timeout and backoff as they are (the fault
            # suite's short reconnect options bound the TLS handshake too, which a loaded machine
            # does not always finish in time).
            options=(("grpc.max_send_message_length", 32 << 20),),
        ) as channel:
            yield channel

    async def cases(self, agency: str, method: str, request: Any, applicant: str = "") -> Any:
        """`Cases.<method>` on the agency's region's gateway, as the agency (for `applicant`:
        as a citizen portal)."""
        async with self.channel(agency) as channel:
            stub = cases_pb2_grpc.CasesStub(channel)
            return await getattr(stub, method)(
                request, metadata=self.token(agency, applicant), timeout=CALL_TIMEOUT
            )

    async def submit(
        self,
        agency: str,
        matter: str,
        applicant: str,
        materials: list[cases_pb2.Material],
        *,
        request_id: str = "",
        note: str = "",
    ) -> cases_pb2.Case:
        return await self.cases(
            agency,
            "Submit",
            cases_pb2.SubmitCaseRequest(
                request_id=request_id or new_request_id(),
                matter_code=matter,
                applicant_id=applicant,
                materials=materials,
                note=note,
            ),
        )

    async def act(self, agency: str, request: cases_pb2.ActRequest) -> cases_pb2.Case:
        if not request.request_id:
            request.request_id = new_request_id()
        return await self.cases(agency, "Act", request)

    async def get(
        self, agency: str, case_id: str, *, include_contents: bool = False, applicant: str = ""
    ) -> cases_pb2.Case:
        return await self.cases(
            agency,
            "Get",
            cases_pb2.GetCaseRequest(case_id=case_id, include_contents=include_contents),
            applicant,
        )

    async def listed(self, agency: str, **filters: Any) -> list[cases_pb2.Case]:
        """Every case `List` shows the agency (all pages)."""
        found: list[cases_pb2.Case] = []
        token = ""
        while True:
            page = await self.cases(
                agency, "List", cases_pb2.ListCasesRequest(page_token=token, **filters)
            )
            found.extend(page.cases)
            token = page.next_page_token
            if not token:
                return found

    async def until(
        self,
        agency: str,
        case_id: str,
        check: Callable[[cases_pb2.Case], bool],
        what: str,
        timeout: float = WAIT_SECONDS,
        applicant: str = "",
    ) -> cases_pb2.Case:
        """Poll `Get` as `agency` (for `applicant`) until `check(case)`; a case the caller may
        not see yet (CASE_NOT_FOUND) or a gateway not back yet (UNAVAILABLE) is "not yet"."""
        started = time.monotonic()
        last: object = None
        while True:
            try:
                case = await self.get(agency, case_id, applicant=applicant)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
                last = exc.code().name
            else:
                if check(case):
                    return case
                last = [f"{e.kind}@{e.region}" for e in case.history]
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what} at {agency}; last: {last}"
                )
            await asyncio.sleep(0.1)

    async def seal(self, agency: str, document: dict[str, Any]) -> str:
        """`document` (JSON) sealed by the agency's region (`Credentials.Seal` on its gateway):
        an attached compact JWS."""
        async with self.channel(agency) as channel:
            answer = await credentials_pb2_grpc.CredentialsStub(channel).Seal(
                credentials_pb2.SealRequest(
                    payload=json.dumps(document, ensure_ascii=False).encode(),
                    content_type="application/json",
                ),
                metadata=self.token(agency),
                timeout=CALL_TIMEOUT,
            )
        jws: str = answer.record.jws
        assert jws.count(".") == 2, "Credentials.Seal did not answer an attached compact JWS"
        return jws

    async def material(self, agency: str, material_id: str, document: dict[str, Any]) -> Any:
        """A `Material`: `document` sealed at the agency's region."""
        jws = await self.seal(agency, {"material": material_id, **document})
        return cases_pb2.Material(material_id=material_id, content=jws.encode())

    async def query(
        self, agency: str, request: exchange_pb2.QueryRequest
    ) -> exchange_pb2.QueryResponse:
        async with self.channel(agency) as channel:
            answer: exchange_pb2.QueryResponse = await exchange_pb2_grpc.DataExchangeStub(
                channel
            ).Query(request, metadata=self.token(agency), timeout=CALL_TIMEOUT)
            return answer

    async def forward(
        self, from_region: str, to_region: str, forward: exchange_pb2.ForwardRequest
    ) -> exchange_pb2.ForwardResponse:
        """`Peer.Forward` straight to `to_region`'s gateway, as `from_region`'s gateway."""
        async with self.channel(from_region, to_region) as channel:
            answer: exchange_pb2.ForwardResponse = await exchange_pb2_grpc.PeerStub(
                channel
            ).Forward(forward, timeout=CALL_TIMEOUT)
            return answer

    @contextlib.asynccontextmanager
    async def watching(
        self, agency: str, case_id: str
    ) -> AsyncIterator[list[cases_pb2.CaseUpdate]]:
        """`Watch` of one case as `agency` while the block runs: the updates received so far
        (the list grows as they arrive; the call is cancelled when the block ends)."""
        updates: list[cases_pb2.CaseUpdate] = []
        async with self.channel(agency) as channel:
            call = cases_pb2_grpc.CasesStub(channel).Watch(
                cases_pb2.WatchCasesRequest(case_id=case_id), metadata=self.token(agency)
            )

            async def read() -> None:
                async for update in call:
                    updates.append(update)

            reader = asyncio.create_task(read())
            try:
                yield updates
            finally:
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await reader

    # what was recorded -------------------------------------------------------------------------
    def audit(self, region: str) -> list[dict[str, Any]]:
        """Every record of the region's audit log, decoded (read-only: the gateway may be
        writing)."""
        conn = sqlite3.connect(f"file:{self.audit_db(region)}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT canonical FROM audit_records ORDER BY idx").fetchall()
        finally:
            conn.close()
        return [json.loads(canonical) for (canonical,) in rows]

    def audited(self, region: str, request_id: str) -> list[dict[str, Any]]:
        """The region's records of the call with this request id."""
        return [r for r in self.audit(region) if r["request_id"] == request_id]

    def event_records(self, region: str, case_id: str) -> Counter[str]:
        """How many times the region's audit log records each event of the case (by the
        SHA-256 of its JWS): made there (an allowed Submit or Act that made it) or received
        (an allowed Peer.DeliverCaseEvents)."""
        return Counter(
            r["sealed_digest"]
            for r in self.audit(region)
            if r["case_id"] == case_id
            and r["outcome"] == "allowed"
            and r["sealed_digest"]
            and r["rpc"] in (CASES + "Submit", CASES + "Act", DELIVER)
        )


def act(case_id: str, part: int, action: int, **fields: Any) -> cases_pb2.ActRequest:
    """An `ActRequest` (its request id set when it is sent, unless given)."""
    return cases_pb2.ActRequest(case_id=case_id, part=part, action=action, **fields)


def ids(case: cases_pb2.Case) -> list[str]:
    """The case's event ids in the order applied."""
    return [e.event_id for e in case.history]


def kinds(case: cases_pb2.Case) -> list[str]:
    return [e.kind for e in case.history]


async def id_card(regions: Regions, agency: str, applicant: str) -> cases_pb2.Material:
    """The applicant's identity card: a credential sealed by the agency's region."""
    document = {"credential_type": "id_card", "citizen_id": applicant, "name": "申请人"}
    return await regions.material(agency, "id-card", document)


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def assert_recorded_once(
    regions: Regions, case_id: str, holders: tuple[str, ...], events: int
) -> None:
    """Each of the case's `events` is in the audit log of every region holding the case, once
    (made or received there), the same events everywhere."""
    found = {region: regions.event_records(region, case_id) for region in holders}
    first = found[holders[0]]
    for region, counts in found.items():
        assert len(counts) == events, (region, counts)
        assert set(counts.values()) == {1}, f"an event is recorded twice at {region}: {counts}"
        assert set(counts) == set(first), region


def new_request_id() -> str:
    return f"req-{secrets.token_hex(8)}"


def applicants(region: str, dataset: str, count: int = 40) -> list[str]:
    """Citizens `region`'s demo data system holds a `dataset` record for."""
    data = DemoData(region)
    return [p for p in data.population(count) if data.record(dataset, p) is not None]


@contextlib.contextmanager
def three_regions(workdir: Path) -> Iterator[Regions]:
    """A fresh dev PKI and registry, the three gateways and 四川's data system, running; every
    process stopped (gracefully, then killed) at the end, and none may have ended a call with
    UNKNOWN or INTERNAL."""
    fed = make_federation(workdir / "fed")
    fed.publish()
    regions = Regions(fed, workdir)

    def launch() -> None:
        regions.prepare()
        try:
            regions.start()
        except BaseException:  # a port taken meanwhile: all again, on new ports
            regions.kill_all()
            for kept in workdir.glob("audit-*.db*"):
                kept.unlink()
            raise

    try:
        start_processes_on_free_ports(launch)
        yield regions
        assert regions.bad_codes() == dict.fromkeys(REGIONS, 0), "UNKNOWN/INTERNAL answered"
        codes = regions.stop()
        for region in REGIONS:
            assert "Traceback" not in regions.stderr(region), regions.stderr(region)[-3000:]
        assert all(code == 0 for code in codes.values()), codes
    finally:
        regions.kill_all()
