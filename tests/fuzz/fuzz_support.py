"""A fuzzing harness: one three-region cluster on its own event loop, driven by sync tests.

Hypothesis runs hundreds or thousands of examples per test, so the cluster (three in-process
gateways and three demo data systems, mutual TLS on loopback) is built once per test module and
kept on one event loop that the tests drive with `Harness.run`. Every RPC is sent over a real
channel with a deadline, and `Harness.run` bounds the whole await as well, so nothing can hang.

Importable as `fuzz.fuzz_support` (tests/ is on the path).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fuzz.strategies import DELETE, GRPC_SOFT_METADATA_LIMIT, Deep, Metadata, Raw, Token
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from query_support import Cluster, request, running_cluster
from support import Federation, credentials_as, make_federation

from gateway.tokens import audience_for, issuer_for
from registry import KeyState, KeyUsage
from signer import PrivateKey, load_private_key
from tongban.v1 import common_pb2, exchange_pb2, exchange_pb2_grpc

T = TypeVar("T")

# -- example counts ------------------------------------------------------------------------------
DEFAULT_EXAMPLES = 50  # per RPC in the default suite
EXAMPLES = int(os.environ.get("TONGBAN_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    """Hypothesis settings of one fuzzed RPC: `examples` examples, no timing deadline (the
    gRPC deadline and `Harness.run` bound each call), no example database (nothing written
    into the working tree), and the health checks that a network-bound test trips relaxed."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


# -- the error contract --------------------------------------------------------------------------
CALL_TIMEOUT = 5.0  # seconds: the gRPC deadline of every fuzzed call (a query makes two hops)
RUN_TIMEOUT = 20.0  # seconds: the bound on any one await driven by the harness
REASONS = frozenset(common_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
NEVER = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
DOMAIN = "tongban"


@dataclass(frozen=True)
class Result:
    """How one call ended: its status code, and for an error its ErrorInfo and message."""

    code: grpc.StatusCode
    response: Any = None
    reason: str = ""
    domain: str = ""
    details: str = ""
    status_code_matches: bool = True
    has_error_info: bool = False

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


def result_of_error(exc: grpc.aio.AioRpcError) -> Result:
    reason = domain = ""
    matches = True
    found = False
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            matches = status.code == exc.code().value[0]
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, domain, found = info.reason, info.domain, True
                    break
    return Result(
        exc.code(),
        reason=reason,
        domain=domain,
        details=exc.details() or "",
        status_code_matches=matches,
        has_error_info=found,
    )


def check_contract(result: Result, what: str = "") -> None:
    """The properties every fuzzed call must keep: never UNKNOWN or INTERNAL, never a hang
    (DEADLINE_EXCEEDED under a 5 s deadline), and every error a rich status whose ErrorInfo
    has domain "tongban" and one of the contract's reasons."""
    where = f" ({what})" if what else ""
    assert result.code not in NEVER, f"{result.code.name}{where}: {result.details}"
    assert result.code is not grpc.StatusCode.DEADLINE_EXCEEDED, (
        f"no answer within {CALL_TIMEOUT} s{where}: {result.details}"
    )
    if result.ok:
        return
    assert result.has_error_info, f"{result.code.name} without ErrorInfo{where}: {result.details}"
    assert result.domain == DOMAIN, f"ErrorInfo domain {result.domain!r}{where}"
    assert result.reason in REASONS, f"unknown reason {result.reason!r}{where}"
    assert result.status_code_matches, f"status detail code differs from {result.code.name}"


def check(result: Result, pairs: tuple[tuple[str, str | bytes], ...], what: str) -> None:
    """`check_contract`, unless gRPC itself refused metadata `pairs` over its soft limit."""
    if over_transport_limit(result, pairs):
        return
    check_contract(result, what)


def check_item_status(status: status_pb2.Status, what: str = "") -> None:
    """The same properties for one BatchQuery item's google.rpc.Status."""
    codes = {c.value[0]: c for c in grpc.StatusCode}
    code = codes.get(status.code)
    assert code is not None, f"item status {status.code} is not a gRPC code ({what})"
    assert code not in NEVER, f"item {code.name} ({what}): {status.message}"
    if status.code == 0:
        return
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert infos, f"item {code.name} without ErrorInfo ({what}): {status.message}"
    assert infos[0].domain == DOMAIN
    assert infos[0].reason in REASONS, f"unknown item reason {infos[0].reason!r}"


# -- the harness ---------------------------------------------------------------------------------
HEALTH_AGENCY = "cq.hrss"  # health query: 重庆人社 asks 四川 (agreement YC-SI-2026), never fuzzed
HEALTH_PROVIDER = "510000"


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    cluster: Cluster
    fed: Federation
    channels: dict[tuple[str, str], grpc.aio.Channel] = field(default_factory=dict)
    _keys: dict[str, tuple[PrivateKey, str, str]] = field(default_factory=dict)
    _regions: dict[str, str] = field(default_factory=dict)
    _thumbprints: dict[str, str] = field(default_factory=dict)
    loop_errors: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    # driving the loop
    def run(self, work: Coroutine[Any, Any, T], timeout: float = RUN_TIMEOUT) -> T:
        """Run `work` on the cluster's loop, bounded by `timeout` seconds."""
        return self.loop.run_until_complete(asyncio.wait_for(work, timeout))

    def call(self, make: Callable[[], Awaitable[Any]]) -> Result:
        """Make one RPC (a unary call, or a unary-stream call drained to a list) and return
        how it ended. Errors other than gRPC statuses propagate (a bug in the test)."""

        async def go() -> Result:
            try:
                response = await make()
            except grpc.aio.AioRpcError as exc:
                return result_of_error(exc)
            return Result(grpc.StatusCode.OK, response=response)

        self.calls += 1
        result = self.run(go())
        self.outcomes[f"{result.code.name} {result.reason}".strip()] += 1
        return result

    # identities
    def region_of(self, owner: str) -> str:
        """The region of an agency, or a region code as it is."""
        if owner.isdigit():
            return owner
        if owner not in self._regions:
            records = self.fed.inventory().records()
            self._regions[owner] = next(r.region for r in records if r.owner == owner)
        return self._regions[owner]

    def thumbprint(self, agency: str) -> str:
        """x5t#S256 of the agency's TLS client certificate."""
        if agency not in self._thumbprints:
            self._thumbprints[agency] = self.cluster.thumbprint(agency)
        return self._thumbprints[agency]

    def channel(self, owner: str, region: str) -> grpc.aio.Channel:
        """A long-lived mTLS channel as `owner` (an agency id or a region code for its gateway
        certificate) to the gateway of `region`."""
        key = (owner, region)
        if key not in self.channels:

            def make_now() -> grpc.aio.Channel:
                return grpc.aio.secure_channel(
                    f"localhost:{self.cluster.ports[region]}",
                    credentials_as(self.fed, owner, region),
                    options=[
                        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                        ("grpc.max_send_message_length", -1),
                    ],
                )

            async def make() -> grpc.aio.Channel:
                return make_now()

            try:
                asyncio.get_running_loop()
            except RuntimeError:  # driven from a test: create it on the cluster's loop
                self.channels[key] = self.run(make())
            else:  # already on the loop
                self.channels[key] = make_now()
        return self.channels[key]

    def exchange(self, agency: str) -> exchange_pb2_grpc.DataExchangeAsyncStub:
        return exchange_pb2_grpc.DataExchangeStub(self.channel(agency, self.region_of(agency)))

    # generic calls: any message (or Raw bytes) to any method
    def unary(
        self,
        owner: str,
        region: str,
        method: str,
        response: Any,
        message: Any,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
        timeout: float = CALL_TIMEOUT,
    ) -> Result:
        call = self.channel(owner, region).unary_unary(
            method, request_serializer=serialize, response_deserializer=response.FromString
        )
        return self.call(lambda: call(message, metadata=metadata, timeout=timeout))

    def stream(
        self,
        owner: str,
        region: str,
        method: str,
        response: Any,
        message: Any,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
        timeout: float = CALL_TIMEOUT,
    ) -> Result:
        call = self.channel(owner, region).unary_stream(
            method, request_serializer=serialize, response_deserializer=response.FromString
        )

        async def drain() -> list[Any]:
            return [item async for item in call(message, metadata=metadata, timeout=timeout)]

        return self.call(drain)

    def render(self, md: Metadata) -> tuple[tuple[str, str | bytes], ...]:
        """The metadata pairs of a recipe, with any token made now."""
        pairs: list[tuple[str, str | bytes]] = []
        if md.token is not None:
            pairs.append(("authorization", self.render_token(md.token)))
        if md.authorization is not None:
            pairs.append(("authorization", md.authorization))
        pairs.extend(md.extra)
        return tuple(pairs)

    def render_token(self, t: Token) -> str:
        region = self.region_of(t.agency)
        claims: dict[str, Any] = self.claims(t.agency)
        deep: dict[str, str] = {}
        for name, value in t.claims_edit.items():
            if value == DELETE:
                claims.pop(name, None)
            elif isinstance(value, Deep):
                claims[name] = f"__deep_{name}__"
                deep[f'"__deep_{name}__"'] = value.text()
            else:
                claims[name] = value
        if t.shape.startswith("pad:"):
            claims["pad"] = "x" * int(t.shape.removeprefix("pad:"))
        if t.payload is None:
            text = json.dumps(claims)
            for placeholder, replacement in deep.items():
                text = text.replace(placeholder, replacement)
            payload: Any = text.encode()
        elif isinstance(t.payload, Deep):
            payload = t.payload.text().encode()
        else:
            payload = t.payload
        signer = region
        if t.signature == "other-region":
            signer = "330000" if region != "330000" else "510000"
        headers = dict(t.header_edit)
        if t.shape == "none":
            headers["alg"] = "none"
        token = self.sign(payload, region=signer, headers=headers)
        head, body, signature = token.split(".")
        if t.signature == "empty" or t.shape == "none":
            signature = ""
        elif t.signature == "random":
            signature = b64url(secrets.token_bytes(64))
        elif t.signature == "truncated":
            signature = signature[: len(signature) // 2]
        token = f"{head}.{body}.{signature}"
        if t.shape.startswith("truncate:"):
            token = token[: int(t.shape.removeprefix("truncate:"))]
        elif t.shape == "append-part":
            token += ".AAAA"
        elif t.shape == "double-dot":
            token = f"{head}..{signature}"
        elif t.shape == "strip-signature":
            token = f"{head}.{body}"
        return t.scheme + token

    # tokens
    def token_key(self, region: str) -> tuple[PrivateKey, str, str]:
        """(private key, kid, JWS alg) of `region`'s active token key."""
        if region not in self._keys:
            (record,) = self.fed.inventory().find(region, KeyUsage.TOKEN, KeyState.ACTIVE)
            key = load_private_key(self.fed.pki / record.private_key)
            self._keys[region] = (key, record.kid, record.algorithm)
        return self._keys[region]

    def claims(self, agency: str, *, now: datetime | None = None) -> dict[str, Any]:
        """The claims of a good token for `agency`, bound to its TLS certificate."""
        region = self.region_of(agency)
        issued = int((now or datetime.now(UTC)).timestamp())
        return {
            "iss": issuer_for(region),
            "sub": "经办人 张三",
            "agency": agency,
            "aud": audience_for(region),
            "iat": issued,
            "exp": issued + 300,
            "jti": secrets.token_urlsafe(16),
            "cnf": {"x5t#S256": self.thumbprint(agency)},
        }

    def sign(self, claims: Any, *, region: str, headers: dict[str, Any] | None = None) -> str:
        """A compact JWS over `claims` (any JSON value, or raw bytes) signed with `region`'s real
        token key. The header is {"alg", "kid", "typ": "JWT"} updated with `headers` (a None
        value removes a field), so it may carry any JSON at all (a wrong `alg` only changes
        what the header says: the signature is always the real key's)."""
        key, kid, alg = self.token_key(region)
        header: dict[str, Any] = {"alg": alg, "kid": kid, "typ": "JWT"}
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}
        payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}".encode()
        return f"{signing_input.decode()}.{b64url(sign_with(key, signing_input))}"

    def token(self, agency: str) -> str:
        return self.sign(self.claims(agency), region=self.region_of(agency))

    # health
    def assert_healthy(self) -> None:
        """Every gateway answers SERVING on the gRPC health service, and a valid query (one
        no fuzzed call can reach: its own agency and agreement) is answered and sealed."""

        async def check() -> None:
            for region in self.cluster.ports:
                stub = health_pb2_grpc.HealthStub(self.channel(HEALTH_AGENCY, region))
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, region
            subject = self.cluster.subject(HEALTH_PROVIDER, "si.participation")
            answer = await self.exchange(HEALTH_AGENCY).Query(
                request(HEALTH_PROVIDER, "si.participation", "SI-TRANSFER", subject),
                metadata=bearer(self.token(HEALTH_AGENCY)),
                timeout=CALL_TIMEOUT,
            )
            assert answer.record.sealer_region == HEALTH_PROVIDER
            assert answer.record.jws
            assert answer.audit_id

        self.run(check())
        assert not self.loop_errors, f"the event loop reported errors: {self.loop_errors}"


def serialize(message: Any) -> bytes:
    """A request message's bytes, or the bytes of a `Raw` request as they are."""
    if isinstance(message, Raw):
        return message.data
    data: bytes = message.SerializeToString()
    return data


def metadata_size(pairs: tuple[tuple[str, str | bytes], ...]) -> int:
    return sum(len(k) + len(v) + 32 for k, v in pairs)


def over_transport_limit(result: Result, pairs: tuple[tuple[str, str | bytes], ...]) -> bool:
    """True when gRPC itself refused metadata over its 8 KiB soft limit (no ErrorInfo: the
    gateway never saw the call)."""
    return (
        result.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        and not result.has_error_info
        and metadata_size(pairs) > GRPC_SOFT_METADATA_LIMIT - 1024
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_with(key: PrivateKey, data: bytes) -> bytes:
    """A JWS signature (raw r||s for ES256) of `data` with `key`."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise TypeError(f"a token key is P-256 or Ed25519, not {type(key).__name__}")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def valid_query(h: Harness, *, provider: str = "500000") -> exchange_pb2.QueryRequest:
    """A query sc.hrss may make (agreement CY-SI-2026, 四川 asks 重庆), with a fresh id."""
    return request(
        provider, "si.participation", "SI-TRANSFER", h.cluster.subject(provider, "si.participation")
    )


@contextlib.contextmanager
def harness_for(
    tmp: Path, *, peer_overrides: Mapping[str, Mapping[str, str]] | None = None
) -> Iterator[Harness]:
    """Build a federation and a cluster in `tmp` on a new event loop; yield the harness;
    close everything at the end. `peer_overrides` as `running_cluster`'s."""
    fed = make_federation(tmp)
    fed.publish()
    loop = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    @contextlib.asynccontextmanager
    async def cluster() -> AsyncIterator[Cluster]:
        async with running_cluster(
            fed, tmp / "cluster", audit_on_disk=True, peer_overrides=peer_overrides
        ) as c:
            yield c

    (tmp / "cluster").mkdir()
    manager = cluster()
    started = loop.run_until_complete(manager.__aenter__())
    harness = Harness(loop=loop, cluster=started, fed=fed, loop_errors=errors)
    try:
        yield harness
    finally:

        async def close() -> None:
            for ch in harness.channels.values():
                await ch.close()
            await manager.__aexit__(None, None, None)

        loop.run_until_complete(close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
