"""`tongban demo`: three provinces on loopback, scripted scenarios, a readable transcript.

The demo builds what a federation needs from the demo registry source shipped in the package
(`registry.DEMO_SOURCE`, `conf/registry/` in a clone) — a dev PKI, a signed registry — then starts, in this process, the gateways of 浙江 (330000), 四川
(510000) and 重庆 (500000) with their demo data systems on free loopback ports, and plays the
scenarios below as agency and oversight clients would: over mutual TLS, with request tokens,
through the public gRPC API only. Each scenario states what it expects and checks it; the exit
code is 0 only when every one behaved as expected.

Nothing here is specific to a demo but the choices: the gateways are the real `Gateway`, built
from `GatewayConfig.for_dev_pki` like `tongban gateway serve --pki`; the seal-key rotation is
what `tongban keys rotate` and two `tongban registry publish` do, with the gateway reloading its
seal keys as SIGHUP makes `tongban gateway serve` do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from rich.console import Console
from rich.table import Table

from gateway._errors import GatewayError
from gateway._tables import whole
from gateway.audit import CheckpointError, ProofError, verify_checkpoint, verify_inclusion
from gateway.config import GatewayConfig
from gateway.errors import error_info_of
from gateway.provider import DemoData, create_provider
from gateway.server import Gateway, create_gateway, freeze_startup_heap
from gateway.tokens import issue_agency_token
from registry import (
    CURRENT_SNAPSHOT,
    DEMO_SOURCE,
    Inventory,
    KeyRecord,
    KeyState,
    KeyUsage,
    init_dev_federation,
    load_source,
    publish,
)
from registry import _pki as pki
from tongban.v1 import (
    common_pb2,
    credentials_pb2,
    credentials_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
)

__all__ = ["REGIONS", "SCENARIOS", "DemoOptions", "run_demo"]

REGIONS = {"330000": "浙江", "510000": "四川", "500000": "重庆"}
CALL_TIMEOUT = 10.0  # seconds: one call, up to two gateway hops, on a loaded 2-core machine
VERSION_TIMEOUT = 15.0  # seconds for every gateway to apply a newly published registry
OPERATOR = "经办人 张三"
ROTATION_WORKERS = 3  # concurrent agency clients while 330000 rotates its seal key
ROTATION_PAUSE = 0.05  # seconds between one worker's requests (keeps within the agreement quota)
# The example agency client lives in a clone of Tongban, beside the package, not in an install.
EXAMPLE_CLIENT = Path(__file__).resolve().parents[1] / "examples" / "client.py"


class DemoError(GatewayError):
    """The demo cannot be set up (a folder, the registry source, a service); the message says why."""


@dataclass(frozen=True)
class DemoOptions:
    source: Path = DEMO_SOURCE
    folder: Path | None = None  # None: a temporary folder, removed at the end
    redis_url: str = ""
    postgres_dsn: str = ""
    serve: bool = False


@dataclass
class Result:
    """What a scenario observed; `ok` when it is what the scenario expects."""

    ok: bool
    summary: str
    table: Table | None = None


# the running federation ------------------------------------------------------------------------
@dataclass
class Federation:
    """The demo's PKI, registry and running gateways, and clients of them as any agency."""

    folder: Path
    source: Path
    gateways: dict[str, Gateway] = field(default_factory=dict)
    providers: dict[str, tuple[grpc.aio.Server, int]] = field(default_factory=dict)
    data: dict[str, DemoData] = field(default_factory=dict)
    pg_schemas: list[str] = field(default_factory=list)

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    @property
    def published(self) -> Path:
        return self.folder / "published"

    def inventory(self) -> Inventory:
        return Inventory.load(self.pki)

    def publish(self) -> int:
        result = publish(self.source, self.pki, self.published, now=datetime.now(UTC))
        return result.snapshot.registry.version

    async def wait_version(self, version: int) -> None:
        deadline = time.monotonic() + VERSION_TIMEOUT
        while behind := [
            r for r, g in self.gateways.items() if (g.store.status().version or 0) < version
        ]:
            if time.monotonic() > deadline:
                raise DemoError(f"gateways {', '.join(behind)} did not apply registry v{version}")
            await asyncio.sleep(0.05)

    def _tls(self, owner: str) -> tuple[bytes, bytes]:
        (record,) = self.inventory().find(owner, KeyUsage.TLS, KeyState.ACTIVE)
        return (self.pki / record.certificate).read_bytes(), (
            self.pki / record.private_key
        ).read_bytes()

    def region_of(self, agency: str) -> str:
        return next(r.region for r in self.inventory().records() if r.owner == agency)

    @contextlib.asynccontextmanager
    async def channel(self, agency: str) -> AsyncIterator[grpc.aio.Channel]:
        """A mutual-TLS channel as `agency` to its own region's gateway."""
        region = self.region_of(agency)
        chain, key = self._tls(agency)
        root = (self.pki / "regions" / region / "ca" / "root.pem").read_bytes()
        credentials = grpc.ssl_channel_credentials(root, key, chain)
        target = f"localhost:{self.gateways[region].port}"
        async with grpc.aio.secure_channel(target, credentials) as channel:
            yield channel

    def token(self, agency: str) -> tuple[tuple[str, str], ...]:
        """Call metadata with a fresh request token for `agency` (its region's token key)."""
        token = issue_agency_token(
            self.pki, agency, OPERATOR, lifetime_seconds=300, now=datetime.now(UTC)
        )
        return (("authorization", f"Bearer {token}"),)

    def citizens(self, region: str, dataset: str, n: int, skip: int = 0) -> list[str]:
        """Subjects that `region`'s data system holds a `dataset` record for."""
        data = self.data[region]
        pool = (
            data.businesses(skip + n * 3)
            if dataset == "market.business_licence"
            else data.population(skip + n * 3)
        )
        held = [s for s in pool if data.record(dataset, s) is not None]
        return held[skip : skip + n]

    def audit_public_key(self, region: str) -> ed25519.Ed25519PublicKey:
        (record,) = self.inventory().find(region, KeyUsage.AUDIT, KeyState.ACTIVE)
        chain = x509.load_pem_x509_certificates((self.pki / record.certificate).read_bytes())
        key = chain[0].public_key()
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise DemoError(f"the audit key of {region} is not Ed25519")
        return key


def build_pki(folder: Path, source: Path) -> None:
    """What `tongban pki init` and `tongban registry publish` do, for the three demo regions."""
    loaded = load_source(source)
    names = {r.code: r.name for r in loaded.regions}
    missing = [code for code in REGIONS if code not in names]
    if missing:
        raise DemoError(f"{source}: the registry source has no region {', '.join(missing)}")
    now = datetime.now(UTC)
    init_dev_federation(folder / "pki", loaded, list(REGIONS), now=now)
    publish(source, folder / "pki", folder / "published", now=now)


async def start_federation(fed: Federation, options: DemoOptions, run_id: str) -> None:
    """The demo data systems, then the gateways, each told its peers' loopback ports."""
    ports: dict[str, int] = {}
    for region in REGIONS:
        server, port = create_provider(region, "127.0.0.1:0")
        await server.start()
        fed.providers[region] = (server, port)
        fed.data[region] = DemoData(region)
    # Gateway ports are chosen by binding; peers learn them through overrides, so each gateway
    # is built once its peers' ports are known: reserve them first.
    for region in REGIONS:
        ports[region] = _free_port()
    for region in REGIONS:
        config = GatewayConfig.for_dev_pki(
            fed.pki,
            region,
            listen=f"127.0.0.1:{ports[region]}",
            snapshot_file=fed.published / CURRENT_SNAPSHOT,
            audit_db=fed.folder / f"audit-{region}.db",
            provider=f"127.0.0.1:{fed.providers[region][1]}",
            redis_url=options.redis_url,
            peers={o: f"localhost:{ports[o]}" for o in REGIONS if o != region},
        )
        if options.postgres_dsn and config.audit is not None:
            schema = f"tongban_demo_{run_id}_{region}"
            fed.pg_schemas.append(schema)
            config = dataclasses.replace(
                config,
                audit=dataclasses.replace(
                    config.audit,
                    store="postgres",
                    path=None,
                    dsn=options.postgres_dsn,
                    owner_dsn=options.postgres_dsn,
                    schema=schema,
                ),
            )
        config = dataclasses.replace(
            config, poll_seconds=0.2, grace_seconds=1.0, metrics_listen="127.0.0.1:0"
        )
        gateway, _ = await create_gateway(config)
        fed.gateways[region] = gateway
    freeze_startup_heap()


async def stop_federation(fed: Federation, options: DemoOptions) -> None:
    for gateway in fed.gateways.values():
        await gateway.stop(0.5)
    for server, _ in fed.providers.values():
        await server.stop(0.5)
    if fed.pg_schemas:
        await _drop_schemas(options.postgres_dsn, fed.pg_schemas)


async def _drop_schemas(dsn: str, schemas: Sequence[str]) -> None:
    """The demo's own audit schemas (named with this run's id) go with the demo."""
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for schema in schemas:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# helpers for the scenarios ---------------------------------------------------------------------
def mask(subject_id: str) -> str:
    """A citizen id as a transcript shows it: region and check character only."""
    return subject_id[:6] + "*" * (len(subject_id) - 7) + subject_id[-1:]


def rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    """The `google.rpc.ErrorInfo` reason of a failed call ("" when it carries none)."""
    info, _ = error_info_of(exc)
    return info.reason if info is not None else ""


def query(
    provider_region: str,
    dataset: str,
    purpose: str,
    subject_id: str,
    *,
    fields: Sequence[str] = (),
    case_id: str = "",
) -> exchange_pb2.QueryRequest:
    return exchange_pb2.QueryRequest(
        provider_region=provider_region,
        dataset=dataset,
        purpose=purpose,
        subject_id=subject_id,
        fields=list(fields),
        case_id=case_id or f"CASE-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3).upper()}",
        request_id=f"demo-{secrets.token_hex(8)}",
    )


def record_table(title: str, payload: bytes) -> Table:
    """The fields of a sealed record, ids masked."""
    table = Table(title=title, title_justify="left", show_header=True)
    table.add_column("field")
    table.add_column("value")
    for name, value in json.loads(payload).items():
        shown = mask(value) if name == "citizen_id" and isinstance(value, str) else value
        text = json.dumps(shown, ensure_ascii=False) if not isinstance(shown, str) else shown
        table.add_row(name, text if len(text) <= 60 else text[:57] + "…")
    return table


@dataclass
class Story:
    """What earlier scenarios leave for later ones."""

    citizen: str = ""  # the 重庆 citizen whose social insurance 四川 asks for
    first_jws: str = ""
    audit_ids: list[str] = field(default_factory=list)


Scenario = Callable[[Federation, Story], Awaitable[Result]]


# the scenarios ---------------------------------------------------------------------------------
async def si_transfer(fed: Federation, story: Story) -> Result:
    """川渝通办: 四川人社 (510000) asks 重庆 (500000) for a citizen's social-insurance record."""
    story.citizen = fed.citizens("500000", "si.participation", 1)[0]
    async with fed.channel("sc.hrss") as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        answer = await exchange.Query(
            query("500000", "si.participation", "SI-TRANSFER", story.citizen),
            metadata=fed.token("sc.hrss"),
            timeout=CALL_TIMEOUT,
        )
        credentials = credentials_pb2_grpc.CredentialsStub(channel)
        report = await credentials.Verify(
            credentials_pb2.VerifyRequest(jws=answer.record.jws), timeout=CALL_TIMEOUT
        )
    story.first_jws = answer.record.jws
    story.audit_ids.append(answer.audit_id)
    passed = report.indication == credentials_pb2.TOTAL_PASSED
    ok = answer.record.sealer_region == "500000" and passed and not answer.cache_hit
    return Result(
        ok,
        f"allowed under {answer.agreement_id}: {len(answer.fields)} fields, sealed by "
        f"{answer.record.sealer_region} (key {answer.record.sealer_kid[:12]}…), seal "
        f"{credentials_pb2.Indication.Name(report.indication)}, audit id {answer.audit_id}",
        record_table(f"si.participation of {mask(story.citizen)} from 重庆", answer.record.payload),
    )


async def cached(fed: Federation, story: Story) -> Result:
    """The same question again, for a new case: answered from 重庆's cache, still audited."""
    async with fed.channel("sc.hrss") as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        started = time.perf_counter()
        answer = await exchange.Query(
            query("500000", "si.participation", "SI-TRANSFER", story.citizen),
            metadata=fed.token("sc.hrss"),
            timeout=CALL_TIMEOUT,
        )
        elapsed = (time.perf_counter() - started) * 1000
    story.audit_ids.append(answer.audit_id)
    same = answer.record.jws == story.first_jws
    return Result(
        answer.cache_hit and same,
        f"cache hit: {answer.cache_hit}, the same sealed bytes: {same}, {elapsed:.1f} ms, "
        f"audit id {answer.audit_id}",
    )


async def licence(fed: Federation, story: Story) -> Result:
    """A business licence e-credential issued in 浙江, fetched and verified in 四川."""
    business = fed.citizens("330000", "market.business_licence", 1)[0]
    async with fed.channel("sc.amr") as channel:
        credentials = credentials_pb2_grpc.CredentialsStub(channel)
        answer = await credentials.Fetch(
            credentials_pb2.FetchCredentialRequest(
                issuing_region="330000",
                credential_type="business_licence",
                subject_id=business,
                purpose="LICENCE-VERIFY",
                case_id=f"CASE-{datetime.now(UTC):%Y%m%d}-LIC",
                request_id=f"demo-{secrets.token_hex(8)}",
            ),
            metadata=fed.token("sc.amr"),
            timeout=CALL_TIMEOUT,
        )
        again = await credentials.Verify(
            credentials_pb2.VerifyRequest(jws=answer.credential.jws), timeout=CALL_TIMEOUT
        )
    table = Table(title="validation report (ETSI EN 319 102-1)", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for check in again.checks:
        table.add_row(check.name, "pass" if check.passed else "FAIL", check.detail[:70])
    name = credentials_pb2.Indication.Name
    ok = (
        answer.credential.sealer_region == "330000"
        and answer.report.indication == credentials_pb2.TOTAL_PASSED
        and again.indication == credentials_pb2.TOTAL_PASSED
    )
    company = json.loads(answer.credential.payload).get("company_name", "?")
    return Result(
        ok,
        f"{company}: sealed by 330000, verified by 510000's gateway on fetch "
        f"({name(answer.report.indication)}) and again on request ({name(again.indication)})",
        table,
    )


async def over_broad(fed: Federation, story: Story) -> Result:
    """A query asking for a field the purpose does not allow is refused before it leaves 四川."""
    request = query(
        "500000",
        "si.participation",
        "SI-TRANSFER",
        story.citizen,
        fields=("name", "citizen_id", "gender"),
    )
    async with fed.channel("sc.hrss") as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        try:
            await exchange.Query(request, metadata=fed.token("sc.hrss"), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            reason = rpc_reason(exc)
            ok = exc.code() == grpc.StatusCode.PERMISSION_DENIED and reason == "FIELD_NOT_ALLOWED"
            return Result(ok, f"denied: {exc.code().name} {reason}: {exc.details()}")
    return Result(False, "the query was answered: expected PERMISSION_DENIED FIELD_NOT_ALLOWED")


async def batch(fed: Federation, story: Story) -> Result:
    """One BatchQuery from 四川 to 重庆 and 浙江 at once; each item stands on its own."""
    zj = fed.citizens("330000", "si.participation", 1)[0]
    cq_med = fed.citizens("500000", "medical.insurance", 1)[0]
    items = [
        query("500000", "si.participation", "SI-TRANSFER", story.citizen),
        query("330000", "si.participation", "SI-TRANSFER", zj),
        query("500000", "medical.insurance", "MED-REG", cq_med),
    ]
    async with fed.channel("sc.hrss") as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        answer = await exchange.BatchQuery(
            exchange_pb2.BatchQueryRequest(items=items, request_id=f"demo-{secrets.token_hex(8)}"),
            metadata=fed.token("sc.hrss"),
            timeout=CALL_TIMEOUT,
        )
    table = Table(title="BatchQuery items", title_justify="left")
    for column in ("#", "provider", "dataset", "subject", "status", "sealed by", "cache"):
        table.add_column(column)
    for result in answer.items:
        item = items[result.index]
        status = "OK" if result.status.code == 0 else grpc.StatusCode(result.status.code).name
        table.add_row(
            str(result.index),
            item.provider_region,
            item.dataset,
            mask(item.subject_id),
            status,
            result.response.record.sealer_region,
            "hit" if result.response.cache_hit else "",
        )
    sealers = {r.response.record.sealer_region for r in answer.items if r.status.code == 0}
    ok = len(answer.items) == len(items) and all(r.status.code == 0 for r in answer.items)
    return Result(
        ok and sealers == {"330000", "500000"},
        f"{sum(r.status.code == 0 for r in answer.items)}/{len(items)} items answered, sealed by "
        f"{', '.join(sorted(sealers))}",
        table,
    )


async def rotation(fed: Federation, story: Story) -> Result:
    """浙江 rotates its e-seal key while 四川 and 重庆 keep asking it for business licences."""
    gateway = fed.gateways["330000"]
    (old,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    businesses = fed.citizens("330000", "market.business_licence", 400, skip=1)
    stop = asyncio.Event()
    seen: dict[str, int] = {}
    failures: list[str] = []
    served = 0

    async def traffic(agency: str, offset: int) -> None:
        nonlocal served
        async with fed.channel(agency) as channel:
            exchange = exchange_pb2_grpc.DataExchangeStub(channel)
            n = offset
            while not stop.is_set():
                subject = businesses[n % len(businesses)]
                n += ROTATION_WORKERS
                try:
                    answer = await exchange.Query(
                        query("330000", "market.business_licence", "LICENCE-VERIFY", subject),
                        metadata=fed.token(agency),
                        timeout=CALL_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name} {rpc_reason(exc)}")
                else:
                    served += 1
                    kid = answer.record.sealer_kid
                    seen[kid] = seen.get(kid, 0) + 1
                await asyncio.sleep(ROTATION_PAUSE)

    agencies = ("sc.amr", "cq.amr", "sc.amr")
    workers = [asyncio.create_task(traffic(a, i)) for i, a in enumerate(agencies)]
    try:
        await asyncio.sleep(0.5)
        # `tongban keys rotate --owner 330000 --usage seal`: a pending successor.
        now = datetime.now(UTC)
        inventory = fed.inventory()
        issued = pki.issue_key(fed.pki, region="330000", owner="330000", usage="seal", now=now)
        inventory.add(KeyRecord.from_issued(fed.pki, issued, KeyState.PENDING, now))
        inventory.save()
        # The gateway holding the key takes it (what SIGHUP does to `tongban gateway serve`).
        reread = GatewayConfig.for_dev_pki(
            fed.pki,
            "330000",
            listen=gateway.config.listen,
            snapshot_file=fed.published / CURRENT_SNAPSHOT,
        )
        gateway.reload_seal_keys(reread.seal_keys)
        pending_version = fed.publish()  # every gateway learns the successor, still pending
        await fed.wait_version(pending_version)
        await asyncio.sleep(0.5)
        active_version = fed.publish()  # the successor signs, the old key retires
        await fed.wait_version(active_version)
        deadline = time.monotonic() + 5
        while seen.get(issued.kid, 0) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    table = Table(title="answers from 330000 by sealing key", title_justify="left")
    table.add_column("key")
    table.add_column("state now")
    table.add_column("answers", justify="right")
    states = {r.kid: r.state.value for r in fed.inventory().find("330000", KeyUsage.SEAL)}
    for kid, count in seen.items():
        table.add_row(kid[:16] + "…", states.get(kid, "?"), str(count))
    ok = not failures and seen.get(old.kid, 0) > 0 and seen.get(issued.kid, 0) > 0
    detail = f"; failures: {', '.join(sorted(set(failures)))}" if failures else ""
    return Result(
        ok,
        f"{served} answers during the rotation, {len(failures)} failed; registry v"
        f"{pending_version} published the successor (pending), v{active_version} activated it; "
        f"{seen.get(old.kid, 0)} sealed by the old key, {seen.get(issued.kid, 0)} by the new{detail}",
        table,
    )


async def subject_access(fed: Federation, story: Story) -> Result:
    """Oversight: who saw this 重庆 citizen's data, when and why — on both gateways."""
    rows: list[tuple[str, oversight_pb2.SubjectAccessEntry]] = []
    for region, agency in (("500000", "cq.data"), ("510000", "sc.data")):
        async with fed.channel(agency) as channel:
            oversight = oversight_pb2_grpc.OversightStub(channel)
            token = ""
            while True:  # one page at a time, as a data tracker reads a long trail
                answer = await oversight.SubjectAccess(
                    oversight_pb2.SubjectAccessRequest(subject_id=story.citizen, page_token=token),
                    timeout=CALL_TIMEOUT,
                )
                rows.extend((region, entry) for entry in answer.entries)
                token = answer.next_page_token
                if not token:
                    break
    table = Table(title=f"accesses to the data of {mask(story.citizen)}", title_justify="left")
    for column in (
        "time (UTC)",
        "recorded by",
        "requester",
        "purpose",
        "case",
        "fields",
        "outcome",
    ):
        table.add_column(column)
    for region, entry in rows:
        table.add_row(
            entry.time.ToDatetime().strftime("%H:%M:%S.%f")[:-3],
            region,
            f"{entry.requester_agency} {entry.requester_agency_name}",
            f"{entry.purpose} {entry.purpose_name}",
            entry.case_id,
            str(len(entry.fields)),
            common_pb2.Outcome.Name(entry.outcome).removeprefix("OUTCOME_").lower(),
        )
    provider = [e for r, e in rows if r == "500000"]
    requester = [e for r, e in rows if r == "510000"]
    allowed = common_pb2.OUTCOME_ALLOWED
    denied = common_pb2.OUTCOME_DENIED
    ok = (
        sum(e.outcome == allowed for e in provider) >= 3  # query, cached query, batch item
        and sum(e.outcome == allowed for e in requester) >= 3
        and sum(e.outcome == denied for e in requester) == 1  # the over-broad query
        and not any(e.outcome == denied for e in provider)  # it never left 四川
    )
    return Result(
        ok,
        f"{len(provider)} accesses recorded by 重庆 (the data owner), {len(requester)} by 四川 "
        f"(the requester), {sum(e.outcome == denied for e in requester)} of them denied",
        table,
    )


async def audit_proof(fed: Federation, story: Story) -> Result:
    """Oversight checks 重庆's log against a signed checkpoint, as an outsider would."""
    gateway = fed.gateways["500000"]
    if gateway.audit is None:
        return Result(False, "the 500000 gateway has no audit log")
    async with fed.channel("cq.data") as channel:
        oversight = oversight_pb2_grpc.OversightStub(channel)
        # The log signs its head every N records or seconds; oversight may ask for one now.
        await oversight.SignCheckpoint(oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT)
        records = [
            r
            async for r in oversight.QueryAudit(
                oversight_pb2.QueryAuditRequest(subject_id=story.citizen, page_size=100),
                timeout=CALL_TIMEOUT,
            )
        ]
        if not records:
            return Result(False, "no audit record of the citizen on 500000")
        proof = await oversight.GetProof(
            oversight_pb2.GetProofRequest(
                inclusion=oversight_pb2.InclusionProofRequest(index=records[0].index)
            ),
            timeout=CALL_TIMEOUT,
        )
        checkpoint = proof.checkpoint
        try:
            # The checkpoint's signature, checked with the audit key the registry certifies.
            signed = verify_checkpoint(
                checkpoint.note,
                fed.audit_public_key("500000"),
                checkpoint.key_name,
                origin=checkpoint.origin,
            )
            verify_inclusion(
                proof.leaf_hash, records[0].index, signed.size, list(proof.hashes), signed.root
            )
        except (CheckpointError, ProofError) as exc:
            return Result(False, f"the evidence does not hold: {exc}")
        verified = await oversight.VerifyAudit(
            oversight_pb2.VerifyAuditRequest(trusted_checkpoint=checkpoint),
            timeout=CALL_TIMEOUT,
        )
    ok = verified.intact and proof.leaf_hash == records[0].leaf_hash
    return Result(
        ok,
        f"checkpoint {signed.origin} size {signed.size} signed by {signed.key_name}: signature "
        f"valid; record #{records[0].index} included (proof of {len(proof.hashes)} hashes); "
        f"whole log {'intact' if verified.intact else 'NOT intact: ' + verified.problem} "
        f"({verified.records_checked} records, {verified.checkpoints_checked} checkpoints)",
    )


SCENARIOS: tuple[tuple[str, str, Scenario], ...] = (
    ("si-transfer", "川渝通办 social-insurance transfer: 四川 asks 重庆", si_transfer),
    ("cache", "the same query again, for a new case: served from 重庆's cache", cached),
    ("licence", "business licence e-credential from 浙江, verified in 四川", licence),
    ("over-broad", "over-broad query (a field outside the purpose)", over_broad),
    ("batch", "multi-region BatchQuery: 四川 asks 重庆 and 浙江 at once", batch),
    ("rotation", "浙江 rotates its seal key in the middle of traffic", rotation),
    ("subject-access", "SubjectAccess: the audit trail of one citizen", subject_access),
    ("audit-proof", "audit verified against 重庆's signed checkpoint", audit_proof),
)


# the run ---------------------------------------------------------------------------------------
async def play(fed: Federation, out: Console) -> bool:
    story = Story()
    passed = 0
    total = len(SCENARIOS)
    for number, (name, title, scenario) in enumerate(SCENARIOS, 1):
        out.print(f"[bold]\\[{number}/{total}] {name}[/]  {title} …", soft_wrap=True)
        started = time.perf_counter()
        try:
            result = await scenario(fed, story)
        except grpc.aio.AioRpcError as exc:
            result = Result(False, f"{exc.code().name} {rpc_reason(exc)}: {exc.details()}")
        except DemoError as exc:
            result = Result(False, str(exc))
        seconds = time.perf_counter() - started
        if result.table is not None:
            out.print(whole(result.table))
        verdict = "[green]OK[/]" if result.ok else "[red]UNEXPECTED[/]"
        out.print(
            f"\\[{number}/{total}] {name}  {verdict}  {result.summary} ({seconds:.2f} s)",
            soft_wrap=True,
            markup=True,
        )
        passed += result.ok
    colour = "green" if passed == total else "red"
    out.print(f"[bold {colour}]{passed} of {total} scenarios behaved as expected.[/]")
    return passed == total


def describe(fed: Federation, out: Console, options: DemoOptions) -> None:
    table = Table(title="three regions on loopback", title_justify="left")
    for column in ("region", "gateway (mTLS)", "metrics", "data system", "audit log"):
        table.add_column(column, no_wrap=True)
    for region, name in REGIONS.items():
        gateway = fed.gateways[region]
        audit = gateway.config.audit
        where = (
            f"postgres schema {audit.schema}"
            if audit is not None and audit.store == "postgres"
            else f"sqlite {audit.path.name}"
            if audit is not None and audit.path is not None
            else "memory"
        )
        table.add_row(
            f"{region} {name}",
            f"localhost:{gateway.port}",
            f"http://127.0.0.1:{gateway.metrics_port}/metrics",
            f"127.0.0.1:{fed.providers[region][1]}",
            where,
        )
    out.print(whole(table))
    cache = f"Redis at {options.redis_url}" if options.redis_url else "in memory (one per gateway)"
    out.print(f"Answer cache, replay window and quotas: {cache}.", soft_wrap=True)


def client_command(fed: Federation) -> str:
    """A ready-to-paste `examples/client.py` call as 四川人社 (sc.hrss) to its own gateway."""
    citizen = fed.citizens("500000", "si.participation", 2)[1]
    (tls,) = fed.inventory().find("sc.hrss", KeyUsage.TLS, KeyState.ACTIVE)
    python = Path(sys.executable)
    tongban = python.parent / "tongban"
    token = f"$({shlex.quote(str(tongban))} token issue --pki {shlex.quote(str(fed.pki))} --agency sc.hrss --operator 张三)"
    arguments = [
        ("--gateway", f"localhost:{fed.gateways['510000'].port}"),
        ("--cert", str(fed.pki / tls.certificate)),
        ("--key", str(fed.pki / tls.private_key)),
        ("--ca", str(fed.pki / "regions" / "510000" / "ca" / "root.pem")),
        ("--provider-region", "500000"),
        ("--dataset", "si.participation"),
        ("--purpose", "SI-TRANSFER"),
        ("--subject", citizen),
        ("--case-id", f"CASE-{datetime.now(UTC):%Y%m%d}-0001"),
    ]
    # Named wholly, so that the command works from any folder; without a clone, the path in one.
    client = str(EXAMPLE_CLIENT) if EXAMPLE_CLIENT.is_file() else "examples/client.py"
    lines = [f"{shlex.quote(str(python))} {shlex.quote(client)}"]
    lines += [f"{flag} {shlex.quote(value)}" for flag, value in arguments]
    lines.append(f'--token "{token}"')
    return " \\\n    ".join(lines)


async def _serve_until_interrupted(fed: Federation, out: Console, options: DemoOptions) -> None:
    out.print()
    describe(fed, out, options)
    out.print("[bold]The three gateways keep running.[/] Try an agency client (mutual TLS, token):")
    out.print(client_command(fed), soft_wrap=True, markup=False, highlight=False)
    out.print(f"Registry: {fed.published / CURRENT_SNAPSHOT}; PKI: {fed.pki}", soft_wrap=True)
    out.print("Ctrl-C stops them.", soft_wrap=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    out.print("Stopping the gateways.")


async def _run(options: DemoOptions, out: Console, folder: Path) -> int:
    run_id = secrets.token_hex(3)
    out.print(f"[bold]Tongban demo[/] in {folder}", soft_wrap=True)
    out.print("Dev PKI for 330000 浙江, 510000 四川, 500000 重庆 and a signed registry …")
    await asyncio.to_thread(build_pki, folder, options.source)
    fed = Federation(folder=folder, source=options.source)
    try:
        await start_federation(fed, options, run_id)
        describe(fed, out, options)
        ok = await play(fed, out)
        if options.serve:
            await _serve_until_interrupted(fed, out, options)
    finally:
        await stop_federation(fed, options)
    return 0 if ok else 1


def run_demo(options: DemoOptions, out: Console) -> int:
    """Play the demo; 0 when every scenario behaved as expected, 1 otherwise."""
    if not (options.source / "regions.toml").is_file():
        raise DemoError(
            f"{options.source}: no registry source here (regions.toml); give the folder of "
            "one with --source, or leave it out for the demo's own"
        )
    if options.folder is not None:
        if options.folder.exists() and not options.folder.is_dir():
            raise DemoError(f"{options.folder}: not a folder")
        if options.folder.exists() and any(options.folder.iterdir()):
            raise DemoError(f"{options.folder}: not empty; give a new or empty folder")
        options.folder.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(options, out, options.folder))
    folder = Path(tempfile.mkdtemp(prefix="tongban-demo-"))
    try:
        return asyncio.run(_run(options, out, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
