"""Attacks on what a caller may see, through real channels to three gateways: purpose and field
escalation (the provider decides again, the requester re-checks the answer), probing the
provider's answer cache from another purpose or agency, and quota exhaustion by one agency.
docs/threats.md T8-T11."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import Federation, error_info, make_federation

from gateway.audit import Outcome
from registry import KeyState, KeyUsage
from signer import FileKeyProvider, seal
from tongban.v1 import credentials_pb2, exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration


async def refusal(work: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await work
    return caught.value


async def ask(
    cluster: Cluster, agency: str, query: exchange_pb2.QueryRequest
) -> exchange_pb2.QueryResponse:
    async with cluster.exchange(agency) as stub:
        response: exchange_pb2.QueryResponse = await stub.Query(
            query, metadata=bearer(cluster.token(agency)), timeout=CALL_TIMEOUT
        )
        return response


# -- T8, T9: purpose and field escalation, decided again by the provider ----------------------


async def test_the_provider_decides_again_when_a_gateway_forwards_an_escalated_query(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    """510000's genuine gateway key, used as a compromised or buggy requesting gateway would,
    skipping its own decision: 330000 refuses every escalation on its own registry, before its
    cache or its data system, and audits each refusal."""
    async with running_cluster(federation, tmp_path) as cluster:
        subject = cluster.subject("330000", "si.participation")
        hukou = cluster.subject("330000", "hukou.household")
        escalations = {
            "a purpose no agreement names for the agency": (
                "sc.amr",
                request("330000", "si.participation", "SI-TRANSFER", subject),
                "PURPOSE_NOT_APPROVED",
            ),
            "a purpose the agency's agreement does not name": (
                "sc.hrss",
                request("330000", "hukou.household", "HUKOU-TRANSFER", hukou),
                "PURPOSE_NOT_APPROVED",
            ),
            "a purpose that does not cover the dataset": (
                "sc.hrss",
                request("330000", "si.participation", "MED-REG", subject),
                "PURPOSE_NOT_APPROVED",
            ),
            "an agency without the requester role": (
                "sc.data",
                request("330000", "si.participation", "SI-TRANSFER", subject),
                "NOT_AUTHORISED_ROLE",
            ),
            "fields outside the purpose": (
                "sc.hrss",
                request(
                    "330000",
                    "si.participation",
                    "SI-TRANSFER",
                    subject,
                    fields=("name", "monthly_base", "bank_account"),
                ),
                "FIELD_NOT_ALLOWED",
            ),
        }
        for name, (agency, query, reason) in escalations.items():
            refused = await refusal(
                kit.forward(
                    cluster,
                    "330000",
                    kit.forward_request(
                        query,
                        fed=cluster.fed,
                        agency=agency,
                        agency_region="510000",
                        requesting_region="510000",
                    ),
                    as_owner="510000",
                )
            )
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert error_info(refused).reason == reason, name
        provider = await kit.audited(cluster, "330000")
        assert [(r.outcome, r.reason, r.cache_hit) for r in provider] == [
            (Outcome.DENIED, reason, False) for _, _, reason in escalations.values()
        ]
        assert all(r.fields == () for r in provider)  # nothing was returned


class OverSharingPeer(exchange_pb2_grpc.PeerServicer):
    """A provider gateway that returns more than was asked, under a valid seal of its region."""

    def __init__(self, provider: FileKeyProvider) -> None:
        self._provider = provider

    async def Forward(
        self, request: exchange_pb2.ForwardRequest, context: Any
    ) -> exchange_pb2.ForwardResponse:
        payload = json.dumps(
            {"name": "张三", "status": "参保缴费", "bank_account": "6222020200112233445"},
            ensure_ascii=False,
            sort_keys=True,
        ).encode()
        return exchange_pb2.ForwardResponse(
            record=credentials_pb2.SealedRecord(
                jws=seal(payload, self._provider),
                payload=payload,
                content_type="application/json",
                sealer_kid=self._provider.kid,
                sealer_region="330000",
            ),
            fields=["name", "status"],
            registry_version=1,
        )


async def test_the_requester_withholds_a_sealed_answer_with_fields_outside_the_purpose(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    (seal_key,) = federation.inventory().find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    provider = FileKeyProvider(
        federation.pki / seal_key.private_key, federation.pki / seal_key.certificate
    )
    chain, key = federation.tls_files("330000")
    fake = grpc.aio.server()
    exchange_pb2_grpc.add_PeerServicer_to_server(OverSharingPeer(provider), fake)
    port = fake.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), chain.read_bytes())])
    )
    await fake.start()
    try:
        overrides = {"510000": {"330000": f"localhost:{port}"}}
        async with running_cluster(federation, tmp_path, peer_overrides=overrides) as cluster:
            refused = await refusal(
                ask(
                    cluster,
                    "sc.hrss",
                    request(
                        "330000",
                        "si.participation",
                        "SI-TRANSFER",
                        cluster.subject("330000", "si.participation"),
                        fields=("name", "status"),
                    ),
                )
            )
            assert refused.code() == grpc.StatusCode.DATA_LOSS
            assert error_info(refused).reason == "FIELD_NOT_ALLOWED"
            assert "6222020200112233445" not in (refused.details() or "")
            (record,) = await kit.audited(cluster, "510000")
            assert (record.outcome, record.reason, record.fields) == (
                Outcome.FAILED,
                "FIELD_NOT_ALLOWED",
                (),
            )
    finally:
        await fake.stop(0)


# -- T10: cross-purpose and cross-agency cache probing ---------------------------------------


async def test_a_cached_answer_is_served_only_to_the_same_question_after_a_fresh_decision(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    """The provider caches sc.hrss's SI-TRANSFER answer about S. It is not served to an agency
    no agreement allows (through its gateway or forwarded straight to the provider), nor for
    a purpose that does not cover the dataset, nor for another field set; it is served to
    another agency the same agreement allows for the same purpose and fields."""
    async with running_cluster(federation, tmp_path) as cluster:
        subject = cluster.subject("330000", "si.participation")
        first = await ask(
            cluster, "sc.hrss", request("330000", "si.participation", "SI-TRANSFER", subject)
        )
        again = await ask(
            cluster, "sc.hrss", request("330000", "si.participation", "SI-TRANSFER", subject)
        )
        assert (first.cache_hit, again.cache_hit) == (False, True)

        refused = await refusal(
            ask(cluster, "sc.amr", request("330000", "si.participation", "SI-TRANSFER", subject))
        )
        assert error_info(refused).reason == "PURPOSE_NOT_APPROVED"
        for agency, purpose in (("sc.amr", "SI-TRANSFER"), ("sc.hrss", "MED-REG")):
            refused = await refusal(
                kit.forward(
                    cluster,
                    "330000",
                    kit.forward_request(
                        request("330000", "si.participation", purpose, subject),
                        fed=cluster.fed,
                        agency=agency,
                        agency_region="510000",
                        requesting_region="510000",
                    ),
                    as_owner="510000",
                )
            )
            assert error_info(refused).reason == "PURPOSE_NOT_APPROVED", (agency, purpose)

        narrower = await ask(
            cluster,
            "sc.hrss",
            request("330000", "si.participation", "SI-TRANSFER", subject, fields=("status",)),
        )
        assert narrower.cache_hit is False
        assert sorted(json.loads(narrower.record.payload)) == ["status"]
        shared = await ask(
            cluster, "sc.hsa", request("330000", "si.participation", "SI-TRANSFER", subject)
        )
        assert shared.cache_hit is True
        assert shared.record.jws == first.record.jws

        provider = await kit.audited(cluster, "330000")
        assert [(r.caller_agency, r.outcome, r.cache_hit) for r in provider] == [
            ("sc.hrss", Outcome.ALLOWED, False),
            ("sc.hrss", Outcome.ALLOWED, True),
            ("sc.amr", Outcome.DENIED, False),
            ("sc.hrss", Outcome.DENIED, False),
            ("sc.hrss", Outcome.ALLOWED, False),
            ("sc.hsa", Outcome.ALLOWED, True),
        ]


# -- T11: quota exhaustion by one agency -------------------------------------------------------

TINY_QUOTA = 2  # queries a minute on CY-SI-2026, which names the whole of region 510000


@pytest.fixture
def tiny_quota(tmp_path: Path, kit: Any) -> Federation:
    source = kit.variant_source(
        tmp_path / "source",
        {"agreements.toml": [("quota_per_minute = 600", f"quota_per_minute = {TINY_QUOTA}")]},
    )
    fed = make_federation(tmp_path / "fed", source=source)
    fed.publish()
    return fed


async def early_in_a_minute() -> None:
    """Quotas count in fixed minutes of Unix time: start a burst well inside one."""
    into = time.time() % 60
    if into > 45:
        await asyncio.sleep(60 - into + 0.1)


async def test_quota_is_counted_per_agreement_so_one_agency_can_use_up_a_shared_one(
    tiny_quota: Federation, tmp_path: Path
) -> None:
    """What the code does (gateway/quota.py): one counter per agreement and minute. sc.hrss
    uses up CY-SI-2026, which names all of 510000, and sc.hsa is refused under it for the rest
    of the minute (open gap G2: no per-agency share); sc.mca, under another agreement with the
    same provider, is not affected."""
    async with running_cluster(tiny_quota, tmp_path) as cluster:

        def si(n: int) -> exchange_pb2.QueryRequest:
            return request(
                "500000",
                "si.participation",
                "SI-TRANSFER",
                cluster.subject("500000", "si.participation", n=n),
            )

        await early_in_a_minute()
        for n in range(TINY_QUOTA):
            assert (await ask(cluster, "sc.hrss", si(n))).agreement_id == "CY-SI-2026"
        starved = await refusal(ask(cluster, "sc.hsa", si(TINY_QUOTA)))
        assert starved.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(starved).reason == "QUOTA_EXCEEDED"
        other = await ask(
            cluster,
            "sc.mca",
            request(
                "500000",
                "civil.marriage",
                "MARRIAGE-CHECK",
                cluster.subject("500000", "civil.marriage"),
            ),
        )
        assert other.agreement_id == "CY-CIVIL-2026"


async def test_the_provider_holds_a_forwarding_gateway_to_the_agreements_quota(
    tiny_quota: Federation, tmp_path: Path, kit: Any
) -> None:
    async with running_cluster(tiny_quota, tmp_path) as cluster:
        await early_in_a_minute()
        outcomes = []
        for n in range(TINY_QUOTA + 1):
            query = request(
                "500000",
                "si.participation",
                "SI-TRANSFER",
                cluster.subject("500000", "si.participation", n=n),
            )
            forward = kit.forward_request(
                query,
                fed=cluster.fed,
                agency="sc.hrss",
                agency_region="510000",
                requesting_region="510000",
            )
            try:
                await kit.forward(cluster, "500000", forward, as_owner="510000")
                outcomes.append("ok")
            except grpc.aio.AioRpcError as exc:
                outcomes.append(error_info(exc).reason)
        assert outcomes == ["ok"] * TINY_QUOTA + ["QUOTA_EXCEEDED"]
