"""The load: subjects to ask about, and the client side (channels, tokens, a call factory per
target)."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from gateway.demo.data import DemoData
from gateway.demo.federation import Federation
from tongban.v1 import credentials_pb2, credentials_pb2_grpc, exchange_pb2, exchange_pb2_grpc

from .common import (
    AGENCY,
    BALANCE_ATTEMPTS,
    CALL_TIMEOUT,
    DATASET,
    ECHO_METHOD,
    LICENCE_AGENCY,
    LICENCE_DATASET,
    LICENCE_PURPOSE,
    PROVIDER,
    PURPOSE,
    REQUESTER,
    SOURCE,
)
from .cpu import connections_by_pid
from .environment import region_root, tls_pair
from .measure import Call, CallFailed


class DemoSubjects:
    """Ids that a demo region's data system holds a `dataset` record of (citizens, or businesses
    for market.business_licence), in the order of `DemoData.population` / `businesses` (the
    same list in every process: the data is deterministic). `take(n)` hands out the next n,
    never one twice."""

    def __init__(self, region: str, dataset: str = DATASET) -> None:
        self._data = DemoData(region)
        self._dataset = dataset
        self._held: list[str] = []
        self._scanned = 0
        self._next = 0

    def take(self, n: int) -> list[str]:
        while len(self._held) < self._next + n:
            want = self._next + n - len(self._held)
            size = self._scanned + want * 2 + 16
            pool = (
                self._data.businesses(size)
                if self._dataset == LICENCE_DATASET
                else self._data.population(size)
            )
            for subject in pool[self._scanned :]:
                if self._data.record(self._dataset, subject) is not None:
                    self._held.append(subject)
            self._scanned = len(pool)
        taken = self._held[self._next : self._next + n]
        self._next += n
        return taken


class MissPool:
    """Distinct subjects for (b), made outside the windows (~40 µs each); topped up inside a
    window only when more were needed than `ensure` foresaw (counted)."""

    def __init__(self, subjects: DemoSubjects) -> None:
        self._subjects = subjects
        self._pool: deque[str] = deque()
        self.top_ups = 0

    def ensure(self, n: int) -> None:
        if len(self._pool) < n:
            self._pool.extend(self._subjects.take(n - len(self._pool)))

    def __call__(self) -> str:
        if not self._pool:
            self.top_ups += 1
            self._pool.extend(self._subjects.take(1000))
        return self._pool.popleft()


class Load:
    """The client side: channels as sc.hrss (and sc.amr for (e)) to the echo server and to the
    gateway 510000 of the topology being measured, request tokens, and a call factory per
    target. Every Query carries a fresh request_id (the replay window refuses a repeat), made
    unique across runs by this run's id."""

    def __init__(self, pki: Path, channels: int, run_id: str) -> None:
        self.fed = Federation(folder=pki.parent, source=SOURCE)  # for its `token()` only
        self.channels = channels
        # A local subchannel pool: otherwise channels with the same target share one connection.
        self._options = [("grpc.use_local_subchannel_pool", 1)]
        self._credentials = {}
        for agency in (AGENCY, LICENCE_AGENCY):
            chain, key = tls_pair(pki, agency)
            self._credentials[agency] = grpc.ssl_channel_credentials(
                region_root(pki, REQUESTER), key, chain
            )
        self.echo_channels: list[grpc.aio.Channel] = []
        self.gateway_channels: list[grpc.aio.Channel] = []
        self.licence_channels: list[grpc.aio.Channel] = []
        self._ids = itertools.count()
        self._run_id = run_id
        self.case_id = f"CASE-{datetime.now(UTC):%Y%m%d}-B{run_id.upper()}"
        self.tokens: list[tuple[tuple[str, str], ...]] = []
        self.licence_tokens: list[tuple[tuple[str, str], ...]] = []

    def _channel(self, port: int, agency: str = AGENCY) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            f"localhost:{port}", self._credentials[agency], self._options
        )

    def open_echo(self, port: int) -> None:
        self.echo_channels = [self._channel(port) for _ in range(self.channels)]

    async def open_gateway(self, port: int, workers: list[int] | None = None) -> dict[int, int]:
        """Channels to a gateway 510000 (closing those to the previous one). With `workers`
        (the pids of processes sharing the port), a connection that lands on a worker already
        holding its share is opened again, up to BALANCE_ATTEMPTS times: a few connections
        hashed by the kernel can all land on one worker, where a balancer in front of many
        clients spreads them evenly. Returns the connections by worker pid."""
        await self.close_gateway()
        if not workers or len(workers) == 1:
            self.gateway_channels = [self._channel(port) for _ in range(self.channels)]
            if not workers:
                self.licence_channels = [
                    self._channel(port, LICENCE_AGENCY) for _ in range(self.channels)
                ]
                return {}
            for channel in self.gateway_channels:
                await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT)
            return await _settled(
                lambda: connections_by_pid(workers, port), dict.fromkeys(workers, 0), self.channels
            )
        share = math.ceil(self.channels / len(workers))
        attempts = 0
        for _ in range(self.channels):
            while True:
                before = connections_by_pid(workers, port)
                channel = self._channel(port)
                await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT)
                after = await _settled(lambda: connections_by_pid(workers, port), before, +1)
                landed = [pid for pid in workers if after[pid] > before[pid]]
                if not landed or after[landed[0]] <= share or attempts >= BALANCE_ATTEMPTS:
                    self.gateway_channels.append(channel)
                    break
                attempts += 1
                await channel.close()
                await _settled(lambda: connections_by_pid(workers, port), after, -1)
        return connections_by_pid(workers, port)

    async def close_gateway(self) -> None:
        for channel in (*self.gateway_channels, *self.licence_channels):
            await channel.close()
        self.gateway_channels, self.licence_channels = [], []

    def refresh_tokens(self) -> None:
        """One token per channel, issued now: a token lives 5 minutes; each phase takes new."""
        self.tokens = [self.fed.token(AGENCY) for _ in range(self.channels)]
        self.licence_tokens = [self.fed.token(LICENCE_AGENCY) for _ in self.licence_channels]

    async def close(self) -> None:
        await self.close_gateway()
        for channel in self.echo_channels:
            await channel.close()

    def request_id(self) -> str:
        return f"bench-{self._run_id}-{next(self._ids)}"

    def query(
        self,
        subject: str,
        region: str = PROVIDER,
        dataset: str = DATASET,
        purpose: str = PURPOSE,
    ) -> exchange_pb2.QueryRequest:
        return exchange_pb2.QueryRequest(
            provider_region=region,
            dataset=dataset,
            purpose=purpose,
            subject_id=subject,
            case_id=self.case_id,
            request_id=self.request_id(),
        )

    def echo_calls(self, subject: str) -> list[Call]:
        """The same request message and metadata as (a), to a server that does nothing."""
        calls: list[Call] = []
        for channel, token in zip(self.echo_channels, self.tokens, strict=True):
            method = channel.unary_unary(
                ECHO_METHOD,
                request_serializer=exchange_pb2.QueryRequest.SerializeToString,
                response_deserializer=exchange_pb2.QueryResponse.FromString,
            )

            async def call(method: Any = method, token: Any = token) -> object:
                return await method(self.query(subject), metadata=token, timeout=CALL_TIMEOUT)

            calls.append(call)
        return calls

    def query_calls(self, subjects: Callable[[], str]) -> list[Call]:
        calls: list[Call] = []
        for channel, token in zip(self.gateway_channels, self.tokens, strict=True):
            stub = exchange_pb2_grpc.DataExchangeStub(channel)

            async def call(stub: Any = stub, token: Any = token) -> object:
                return await stub.Query(
                    self.query(subjects()), metadata=token, timeout=CALL_TIMEOUT
                )

            calls.append(call)
        return calls

    def licence_calls(self, business: str) -> list[Call]:
        """(e): sc.amr asks 500000 for one business licence (cache_scope "requester")."""
        calls: list[Call] = []
        for channel, token in zip(self.licence_channels, self.licence_tokens, strict=True):
            stub = exchange_pb2_grpc.DataExchangeStub(channel)

            async def call(stub: Any = stub, token: Any = token) -> object:
                request = self.query(business, PROVIDER, LICENCE_DATASET, LICENCE_PURPOSE)
                return await stub.Query(request, metadata=token, timeout=CALL_TIMEOUT)

            calls.append(call)
        return calls

    def batch_calls(self, items: list[tuple[str, str]]) -> list[Call]:
        calls: list[Call] = []
        for channel, token in zip(self.gateway_channels, self.tokens, strict=True):
            stub = exchange_pb2_grpc.DataExchangeStub(channel)

            async def call(stub: Any = stub, token: Any = token) -> object:
                request = exchange_pb2.BatchQueryRequest(
                    items=[self.query(subject, region) for region, subject in items],
                    request_id=self.request_id(),
                )
                answer = await stub.BatchQuery(request, metadata=token, timeout=CALL_TIMEOUT)
                failed = [r for r in answer.items if r.status.code != 0]
                if failed:  # an item's refusal travels inside an OK answer: count it as one
                    status = failed[0].status
                    raise CallFailed(f"batch item: code {status.code} {status.message[:60]}")
                return answer

            calls.append(call)
        return calls

    def verify_calls(self, jws: str) -> list[Call]:
        calls: list[Call] = []
        for channel in self.gateway_channels:
            stub = credentials_pb2_grpc.CredentialsStub(channel)
            request = credentials_pb2.VerifyRequest(jws=jws)

            async def call(stub: Any = stub, request: Any = request) -> object:
                report = await stub.Verify(request, timeout=CALL_TIMEOUT)
                if report.indication != credentials_pb2.TOTAL_PASSED:
                    raise CallFailed(f"Verify: {report.indication} {report.sub_indication}")
                return report

            calls.append(call)
        return calls


async def _settled(
    count: Callable[[], dict[int, int]], before: dict[int, int], change: int
) -> dict[int, int]:
    """The connection counts once they moved by `change` in total (at most ~1 s)."""
    now = count()
    for _ in range(100):
        if sum(now.values()) - sum(before.values()) == change:
            break
        await asyncio.sleep(0.01)
        now = count()
    return now
