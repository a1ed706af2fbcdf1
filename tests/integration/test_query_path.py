"""The cross-region query path with three gateways, three demo data systems and real Redis on
loopback: an allowed query sealed by the provider and verified, a cache hit, every denial with
its reason, the provider deciding again, a bad seal refused, a batch across regions, audit on
both gateways and fail-closed when the audit store is down."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import secrets
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cli_support import Run
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from redis.asyncio import Redis
from support import (
    DEMO_SOURCE,
    Federation,
    RedisServer,
    credentials_as,
    error_info,
    free_port,
    make_federation,
)

from gateway.audit import AuditQuery, Outcome
from gateway.demo.pki import DEV_PSEUDONYM_KEY
from registry import KeyState, KeyUsage, RegistryTrust, SnapshotVerifier, load_trusted_root
from signer import FileKeyProvider, Indication, SealVerifier, SignatureKind, seal
from tongban.v1 import credentials_pb2, credentials_pb2_grpc, exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

REDIS = "redis://127.0.0.1:6379/0"
SI_TRANSFER_FIELDS = (
    "citizen_id",
    "contribution_months",
    "employer_name",
    "insurance_types",
    "insured_since",
    "name",
    "status",
)


def variant_source(
    tmp_path: Path, edits: dict[str, list[tuple[str, str]]], appended: dict[str, str] | None = None
) -> Path:
    folder = tmp_path / "source"
    shutil.copytree(DEMO_SOURCE, folder)
    for name, replacements in edits.items():
        text = (folder / name).read_text(encoding="utf-8")
        for old, new in replacements:
            assert old in text, old
            text = text.replace(old, new, 1)
        (folder / name).write_text(text, encoding="utf-8")
    for name, extra in (appended or {}).items():
        with (folder / name).open("a", encoding="utf-8") as handle:
            handle.write(extra)
    return folder


async def audited(cluster: Cluster, region: str) -> list[Any]:
    audit = cluster.gateways[region].audit
    assert audit is not None
    return [record for _, record in await audit.store.query(AuditQuery(limit=1000))]


async def test_allowed_query_is_sealed_verified_minimised_and_then_cached(
    federation: Federation, tmp_path: Path, run: Run
) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        subject = cluster.subject("330000", "si.participation")
        async with cluster.exchange("sc.hrss") as stub:
            token = cluster.token("sc.hrss")
            first = await stub.Query(
                request("330000", "si.participation", "SI-TRANSFER", subject),
                metadata=bearer(token),
                timeout=CALL_TIMEOUT,
            )
            second = await stub.Query(
                request("330000", "si.participation", "SI-TRANSFER", subject),
                metadata=bearer(token),
                timeout=CALL_TIMEOUT,
            )
        assert tuple(first.fields) == SI_TRANSFER_FIELDS
        assert (first.cache_hit, second.cache_hit) == (False, True)
        assert first.agreement_id == "ZJ-SC-SI-2026"
        record = first.record
        assert record.sealer_region == "330000"
        document = json.loads(record.payload)
        assert tuple(sorted(document)) == SI_TRANSFER_FIELDS  # exactly the purpose's fields
        assert document["citizen_id"] == subject
        # The client keeps the proof: it verifies on its own against the registry.
        registry = (
            SnapshotVerifier(load_trusted_root(federation.pki / "authority" / "root.json"))
            .verify(federation.current.read_bytes(), held_version=None, now=None)
            .registry
        )
        report = SealVerifier(RegistryTrust(registry)).validate(
            record.jws, expected_kind=SignatureKind.SEAL, expected_owner_region="330000"
        )
        assert report.indication is Indication.TOTAL_PASSED
        assert report.payload == record.payload
        assert second.record.jws == first.record.jws  # the cached answer stays sealed
        assert first.audit_id.startswith("audit.tongban/510000#")
        requester = [
            r for r in await audited(cluster, "510000") if r.rpc == "/tongban.v1.DataExchange/Query"
        ]
        provider = [
            r for r in await audited(cluster, "330000") if r.rpc == "/tongban.v1.Peer/Forward"
        ]
        assert [(r.outcome, r.cache_hit, r.caller_agency) for r in requester] == [
            (Outcome.ALLOWED, False, "sc.hrss"),
            (Outcome.ALLOWED, True, "sc.hrss"),
        ]
        assert [(r.outcome, r.cache_hit) for r in provider] == [
            (Outcome.ALLOWED, False),
            (Outcome.ALLOWED, True),
        ]
        assert requester[0].caller_operator == "经办人 张三"
        assert all(
            subject not in r.canonical.decode() for r in requester + provider
        )  # pseudonyms only
        # The owner keeps each request as the requesting gateway signed it (T26); oversight
        # opens it, verifies it against the registry and tells who asked for what, about whom.
        assert all(len(r.request_digest) == 64 and r.request_sealed for r in provider)
        assert not any(r.request_sealed for r in requester)
        code, out, err = await asyncio.to_thread(
            run,
            "audit",
            "show-request",
            "--sqlite",
            tmp_path / "audit-330000.db",
            "--request-id",
            provider[0].request_id,
            "--pseudonym-key-file",
            federation.pki / DEV_PSEUDONYM_KEY,
            "--snapshot",
            federation.current,
            "--pki",
            federation.pki,
            "--subject-id",
            subject,
            "--json",
            "--jws-out",
            tmp_path / "request.jws",
        )
        assert code == 0, err
        facts = json.loads(out)
        assert (facts["requesting_region"], facts["caller_agency"], facts["purpose"]) == (
            "510000",
            "sc.hrss",
            "SI-TRANSFER",
        )
        assert (facts["subject"], facts["subject_matches"]) == (provider[0].subject, True)
        assert subject not in out + err
        disclosed = (tmp_path / "request.jws").read_text().strip()
        assert hashlib.sha256(disclosed.encode()).hexdigest() == provider[0].request_digest


Make = Callable[[Cluster], tuple[str, exchange_pb2.QueryRequest, str]]


DENIALS: dict[str, tuple[Make, grpc.StatusCode, str]] = {
    "purpose the agreement does not cover": (
        lambda c: (
            "sc.amr",
            request(
                "330000", "si.participation", "SI-TRANSFER", c.subject("330000", "si.participation")
            ),
            "",
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PURPOSE_NOT_APPROVED",
    ),
    "purpose that does not cover the dataset": (
        lambda c: (
            "sc.hrss",
            request(
                "330000", "si.participation", "MED-REG", c.subject("330000", "si.participation")
            ),
            "",
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PURPOSE_NOT_APPROVED",
    ),
    "field outside the purpose": (
        lambda c: (
            "sc.hrss",
            request(
                "330000",
                "si.participation",
                "SI-TRANSFER",
                c.subject("330000", "si.participation"),
                fields=("name", "bank_account"),
            ),
            "",
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "FIELD_NOT_ALLOWED",
    ),
    "dataset never shared": (
        lambda c: (
            "sc.psb",
            request(
                "500000",
                "police.case_records",
                "HUKOU-TRANSFER",
                c.subject("500000", "hukou.household"),
            ),
            "",
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "DATASET_NOT_SHARED",
    ),
    "case id missing for conditional data": (
        lambda c: (
            "sc.hrss",
            request(
                "330000",
                "si.participation",
                "SI-TRANSFER",
                c.subject("330000", "si.participation"),
                case_id="",
            ),
            "",
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "CASE_ID_REQUIRED",
    ),
    "unknown region": (
        lambda c: (
            "sc.hrss",
            request(
                "320000", "si.participation", "SI-TRANSFER", c.subject("330000", "si.participation")
            ),
            "",
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_REGION",
    ),
    "bad subject id": (
        lambda c: (
            "sc.hrss",
            request(
                "330000",
                "si.participation",
                "SI-TRANSFER",
                c.subject("330000", "si.participation")[:-1]
                + ("0" if c.subject("330000", "si.participation")[-1] != "0" else "1"),
            ),
            "",
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SUBJECT_ID_INVALID",
    ),
    "token expired": (
        lambda c: (
            "sc.hrss",
            request(
                "330000", "si.participation", "SI-TRANSFER", c.subject("330000", "si.participation")
            ),
            c.token("sc.hrss", now=datetime.now(UTC) - timedelta(minutes=10)),
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
    ),
    "token bound to another client certificate": (
        lambda c: (
            "sc.hrss",
            request(
                "330000", "si.participation", "SI-TRANSFER", c.subject("330000", "si.participation")
            ),
            c.token("sc.hrss", thumbprint=c.thumbprint("sc.hsa")),
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_BINDING_MISMATCH",
    ),
    "no token": (
        lambda c: (
            "sc.hrss",
            request(
                "330000", "si.participation", "SI-TRANSFER", c.subject("330000", "si.participation")
            ),
            "-",
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
    ),
}


async def test_each_denial_carries_its_reason_and_is_audited(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        for name, (make, code, reason) in DENIALS.items():
            agency, query, token = make(cluster)
            async with cluster.exchange(agency) as stub:
                metadata = () if token == "-" else bearer(token or cluster.token(agency))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Query(query, metadata=metadata, timeout=CALL_TIMEOUT)
            assert (caught.value.code(), error_info(caught.value).reason) == (code, reason), name
            assert query.subject_id not in (caught.value.details() or ""), name
        records = await audited(cluster, "510000")
        assert {r.reason for r in records} == {reason for _, _, reason in DENIALS.values()}
        assert all(r.outcome is Outcome.DENIED for r in records)


async def test_a_replayed_request_id_is_refused(federation: Federation, tmp_path: Path) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        query = request(
            "330000",
            "si.participation",
            "SI-TRANSFER",
            cluster.subject("330000", "si.participation"),
        )
        async with cluster.exchange("sc.hrss") as stub:
            token = cluster.token("sc.hrss")
            await stub.Query(query, metadata=bearer(token), timeout=CALL_TIMEOUT)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(query, metadata=bearer(token), timeout=CALL_TIMEOUT)
        assert error_info(caught.value).reason == "REQUEST_REPLAYED"


@pytest.fixture
def variant(tmp_path: Path) -> Federation:
    """The demo registry with: an expired civil agreement, a tiny hukou quota, and a second
    purpose on si.participation that sees fewer fields."""
    source = variant_source(
        tmp_path,
        {
            "agreements.toml": [
                (
                    "valid_until = 2029-01-01T00:00:00+08:00\nquota_per_minute = 120",
                    "valid_until = 2026-01-02T00:00:00+08:00\nquota_per_minute = 120",
                ),
                ("quota_per_minute = 60\n", "quota_per_minute = 2\n"),
                # A fresh agreement id per run: quotas live in the machine's Redis per minute.
                (
                    "[agreements.ZJ-HUKOU-CQ-2026]",
                    f"[agreements.ZJ-HUKOU-CQ-{secrets.token_hex(4)}]",
                ),
                # Nothing links sc.amr (or region 510000) to 330000 any more: NO_AGREEMENT.
                (
                    'provider_region = "330000"\nrequester_regions = ["510000", "500000"]',
                    'provider_region = "330000"\nrequester_regions = ["500000"]',
                ),
                (
                    'purposes = ["SI-TRANSFER", "MED-REG"]\nvalid_from = 2026-01-01T00:00:00+08:00\nvalid_until = 2029-01-01T00:00:00+08:00\nquota_per_minute = 300',
                    'purposes = ["SI-TRANSFER", "MED-REG", "SI-CHECK"]\nvalid_from = 2026-01-01T00:00:00+08:00\nvalid_until = 2029-01-01T00:00:00+08:00\nquota_per_minute = 300',
                ),
            ]
        },
        {
            "purposes.toml": '\n[purposes.SI-CHECK]\nunified_code = "000112009000"\nname = "参保状态核验"\nlegal_basis = "测试用途"\n\n[purposes.SI-CHECK.datasets]\n"si.participation" = ["name", "status"]\n'
        },
    )
    fed = make_federation(tmp_path / "fed", source=source)
    fed.publish()
    return fed


async def test_no_agreement_expired_agreement_quota_and_purposes_that_never_share_a_cached_answer(
    variant: Federation, tmp_path: Path
) -> None:
    async with running_cluster(variant, tmp_path, redis_url=REDIS) as cluster:
        async with cluster.exchange("sc.amr") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    request(
                        "330000",
                        "market.business_licence",
                        "LICENCE-VERIFY",
                        cluster.subject("330000", "market.business_licence"),
                        case_id="",
                    ),
                    metadata=bearer(cluster.token("sc.amr")),
                    timeout=CALL_TIMEOUT,
                )
            assert (caught.value.code(), error_info(caught.value).reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "NO_AGREEMENT",
            )
        async with cluster.exchange("sc.mca") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    request(
                        "500000",
                        "civil.marriage",
                        "MARRIAGE-CHECK",
                        cluster.subject("500000", "civil.marriage"),
                    ),
                    metadata=bearer(cluster.token("sc.mca")),
                    timeout=CALL_TIMEOUT,
                )
            assert error_info(caught.value).reason == "AGREEMENT_EXPIRED"
        async with cluster.exchange("cq.psb") as stub:
            token = cluster.token("cq.psb")
            outcomes = []
            for n in range(3):
                try:
                    await stub.Query(
                        request(
                            "330000",
                            "hukou.household",
                            "HUKOU-TRANSFER",
                            cluster.subject("330000", "hukou.household", n=n),
                        ),
                        metadata=bearer(token),
                        timeout=CALL_TIMEOUT,
                    )
                    outcomes.append("ok")
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(error_info(exc).reason)
            assert outcomes == ["ok", "ok", "QUOTA_EXCEEDED"]
        subject = cluster.subject("330000", "si.participation")
        async with cluster.exchange("sc.hrss") as stub:
            token = cluster.token("sc.hrss")
            wide = await stub.Query(
                request("330000", "si.participation", "SI-TRANSFER", subject),
                metadata=bearer(token),
                timeout=CALL_TIMEOUT,
            )
            narrow = await stub.Query(
                request("330000", "si.participation", "SI-CHECK", subject),
                metadata=bearer(token),
                timeout=CALL_TIMEOUT,
            )
            narrow_again = await stub.Query(
                request("330000", "si.participation", "SI-CHECK", subject),
                metadata=bearer(token),
                timeout=CALL_TIMEOUT,
            )
        assert (wide.cache_hit, narrow.cache_hit, narrow_again.cache_hit) == (False, False, True)
        assert sorted(json.loads(narrow.record.payload)) == ["name", "status"]
        assert len(json.loads(wide.record.payload)) == len(SI_TRANSFER_FIELDS)


async def test_the_provider_decides_again_on_its_own_registry(tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    requester_copy = tmp_path / "requester-v1.jws"
    requester_copy.write_bytes(fed.current.read_bytes())
    # The next version drops the agreement: the provider gets it, the requester does not.
    narrower = variant_source(
        tmp_path,
        {
            "agreements.toml": [
                ('requester_agencies = ["sc.hrss", "sc.hsa"]', 'requester_agencies = ["sc.hsa"]')
            ]
        },
    )
    fed = dataclasses.replace(fed, source=narrower)
    fed.publish()
    async with running_cluster(
        fed, tmp_path, redis_url=REDIS, snapshots={"510000": requester_copy}
    ) as cluster:
        assert cluster.gateways["510000"].store.status().version == 1
        assert cluster.gateways["330000"].store.status().version == 2
        async with cluster.exchange("sc.hrss") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    request(
                        "330000",
                        "si.participation",
                        "SI-TRANSFER",
                        cluster.subject("330000", "si.participation"),
                    ),
                    metadata=bearer(cluster.token("sc.hrss")),
                    timeout=CALL_TIMEOUT,
                )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(caught.value).reason == "PURPOSE_NOT_APPROVED"
        provider = [
            r for r in await audited(cluster, "330000") if r.rpc == "/tongban.v1.Peer/Forward"
        ]
        assert [(r.outcome, r.caller_agency) for r in provider] == [(Outcome.DENIED, "sc.hrss")]


async def test_batch_across_two_regions_answers_item_by_item(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        items = [
            request(
                "330000",
                "market.business_licence",
                "LICENCE-VERIFY",
                cluster.subject("330000", "market.business_licence"),
                case_id="",
            ),
            request(
                "500000",
                "market.business_licence",
                "LICENCE-VERIFY",
                cluster.subject("500000", "market.business_licence"),
                case_id="",
            ),
            request(
                "500000",
                "market.business_licence",
                "LICENCE-VERIFY",
                cluster.subject("500000", "market.business_licence"),
                fields=("contact_phone",),
                case_id="",
            ),
        ]
        async with cluster.exchange("sc.amr") as stub:
            answer = await stub.BatchQuery(
                exchange_pb2.BatchQueryRequest(
                    items=items, request_id=f"batch-{secrets.token_hex(6)}"
                ),
                metadata=bearer(cluster.token("sc.amr")),
                timeout=CALL_TIMEOUT,
            )
        assert [item.index for item in answer.items] == [0, 1, 2]
        assert [item.status.code for item in answer.items] == [
            0,
            0,
            grpc.StatusCode.PERMISSION_DENIED.value[0],
        ]
        assert {
            answer.items[0].response.record.sealer_region,
            answer.items[1].response.record.sealer_region,
        } == {"330000", "500000"}
        assert not answer.items[2].HasField("response")


async def test_no_answer_is_released_without_a_durable_audit_record(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(
        federation, tmp_path, redis_url=REDIS, audit_on_disk=False
    ) as cluster:
        audit = cluster.gateways["510000"].audit
        assert audit is not None
        audit.store.available = False  # type: ignore[attr-defined]
        async with cluster.exchange("sc.hrss") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    request(
                        "330000",
                        "si.participation",
                        "SI-TRANSFER",
                        cluster.subject("330000", "si.participation"),
                    ),
                    metadata=bearer(cluster.token("sc.hrss")),
                    timeout=CALL_TIMEOUT,
                )
        assert (caught.value.code(), error_info(caught.value).reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "AUDIT_UNAVAILABLE",
        )
        audit.store.available = True  # type: ignore[attr-defined]


async def test_redis_killed_mid_traffic_then_back(federation: Federation, tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        async with running_cluster(federation, tmp_path, redis_url=server.url) as cluster:
            subject = cluster.subject("330000", "si.participation")
            token = cluster.token("sc.hrss")

            async def ask() -> exchange_pb2.QueryResponse:
                async with cluster.exchange("sc.hrss") as stub:
                    return await stub.Query(
                        request("330000", "si.participation", "SI-TRANSFER", subject),
                        metadata=bearer(token),
                        timeout=CALL_TIMEOUT,
                    )

            assert [(await ask()).cache_hit for _ in range(2)] == [False, True]
            async with Redis.from_url(server.url) as client:
                keys = [k.decode() async for k in client.scan_iter()]
            assert keys
            assert all(subject not in k for k in keys)  # no raw subject id in any Redis key
            server.kill()
            # Redis is down: the gateway keeps answering, uncached (the replay window and the
            # quotas fall back to this replica's memory meanwhile).
            down = [await ask() for _ in range(3)]
            assert [a.cache_hit for a in down] == [False, False, False]
            server.start()
            await eventually_hits(ask)
    finally:
        server.kill()


async def eventually_hits(ask: Callable[[], Any]) -> None:
    """Hits resume by themselves once Redis is back (after the breaker's open period)."""
    deadline = time.monotonic() + 10
    while not (await ask()).cache_hit:
        assert time.monotonic() < deadline, "the cache did not come back by itself"
        await asyncio.sleep(0.2)


class TamperingPeer(exchange_pb2_grpc.PeerServicer):
    """A provider gateway gone wrong: its answer is sealed by the real region key, then altered."""

    def __init__(self, provider: FileKeyProvider, how: str) -> None:
        self._provider = provider
        self._how = how

    async def Forward(
        self, request: exchange_pb2.ForwardRequest, context: Any
    ) -> exchange_pb2.ForwardResponse:
        payload = json.dumps(
            {"name": "张三", "status": "参保缴费"},
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        jws = seal(payload, self._provider)
        if self._how == "payload swapped":
            payload = payload.replace("参保缴费".encode(), "暂停缴费".encode())
            header, _, signature = jws.split(".")
            jws = ".".join(
                (header, base64.urlsafe_b64encode(payload).rstrip(b"=").decode(), signature)
            )
        elif self._how == "record payload differs from the seal":
            payload = payload.replace(b"name", b"nom")
        return exchange_pb2.ForwardResponse(
            record=credentials_pb2.SealedRecord(
                jws=jws,
                payload=payload,
                content_type="application/json",
                sealer_kid=self._provider.kid,
                sealer_region="330000",
            ),
            fields=["name", "status"],
            registry_version=1,
        )


@pytest.mark.parametrize("how", ["payload swapped", "record payload differs from the seal"])
async def test_a_tampered_seal_from_a_peer_is_refused(
    federation: Federation, tmp_path: Path, how: str
) -> None:
    (seal_record,) = federation.inventory().find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    provider = FileKeyProvider(
        federation.pki / seal_record.private_key, federation.pki / seal_record.certificate
    )
    chain, key = federation.tls_files("330000")
    fake = grpc.aio.server()
    exchange_pb2_grpc.add_PeerServicer_to_server(TamperingPeer(provider, how), fake)
    port = fake.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), chain.read_bytes())])
    )
    await fake.start()
    try:
        overrides = {"510000": {"330000": f"localhost:{port}"}}
        async with running_cluster(
            federation, tmp_path, redis_url=REDIS, peer_overrides=overrides
        ) as cluster:
            async with cluster.exchange("sc.hrss") as stub:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Query(
                        request(
                            "330000",
                            "si.participation",
                            "SI-TRANSFER",
                            cluster.subject("330000", "si.participation"),
                            fields=("name", "status"),
                        ),
                        metadata=bearer(cluster.token("sc.hrss")),
                        timeout=CALL_TIMEOUT,
                    )
            assert error_info(caught.value).reason == "SEAL_INVALID"
            assert "张三" not in (caught.value.details() or "")
            (record,) = [
                r
                for r in await audited(cluster, "510000")
                if r.rpc == "/tongban.v1.DataExchange/Query"
            ]
            assert (record.outcome, record.reason) == (Outcome.FAILED, "SEAL_INVALID")
    finally:
        await fake.stop(0)


async def test_an_e_credential_is_fetched_from_the_issuing_region_and_verified(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        business = cluster.subject("330000", "market.business_licence")
        region = "510000"
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports[region]}", credentials_as(federation, "sc.amr", region)
        ) as channel:
            stub = credentials_pb2_grpc.CredentialsStub(channel)
            answer = await stub.Fetch(
                credentials_pb2.FetchCredentialRequest(
                    issuing_region="330000",
                    credential_type="business_licence",
                    subject_id=business,
                    request_id=f"cred-{secrets.token_hex(6)}",
                ),
                metadata=bearer(cluster.token("sc.amr")),
                timeout=CALL_TIMEOUT,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Fetch(
                    credentials_pb2.FetchCredentialRequest(
                        issuing_region="330000",
                        credential_type="passport",
                        subject_id=business,
                        request_id=f"cred-{secrets.token_hex(6)}",
                    ),
                    metadata=bearer(cluster.token("sc.amr")),
                    timeout=CALL_TIMEOUT,
                )
        assert answer.report.indication == credentials_pb2.TOTAL_PASSED
        assert answer.report.owner_region == "330000"
        assert answer.credential.sealer_region == "330000"
        assert json.loads(answer.credential.payload)["uscc"] == business
        assert (caught.value.code(), error_info(caught.value).reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_DATASET",
        )
        (record,) = [
            r for r in await audited(cluster, "510000") if r.rpc == "/tongban.v1.Credentials/Fetch"
        ]
        assert (record.outcome, record.dataset, record.purpose) == (
            Outcome.ALLOWED,
            "market.business_licence",
            "LICENCE-VERIFY",
        )
        # the token is read as every servicer reads it: a bare token (no Bearer scheme) is none
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports[region]}", credentials_as(federation, "sc.amr", region)
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as bare:
                await credentials_pb2_grpc.CredentialsStub(channel).Fetch(
                    credentials_pb2.FetchCredentialRequest(
                        issuing_region="330000",
                        credential_type="business_licence",
                        subject_id=business,
                        request_id=f"cred-{secrets.token_hex(6)}",
                    ),
                    metadata=(("authorization", cluster.token("sc.amr")),),
                    timeout=CALL_TIMEOUT,
                )
        assert error_info(bare.value).reason == "TOKEN_INVALID"
        assert "authorization: Bearer <token>" in (bare.value.details() or "")
