"""Cases bind data queries, on real gateways (issue 19): a query for a conditional dataset that
names no open case of the asking agency for that applicant is refused CASE_NOT_OPEN by the
requesting gateway, or, when only the owner binds queries, by the owner on its own copy of the
case; each audits it. Queries for unconditional data name no case. (No gateway holds a case
here: opening one is the Cases service's.)"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import Federation, error_info

from gateway.audit import AuditQuery, Outcome
from tongban.v1 import exchange_pb2

pytestmark = pytest.mark.integration

PENSION_FIELDS = ("citizen_id", "contribution_months", "name", "status")


async def _records(cluster: Cluster, region: str) -> list[tuple[str, str, str]]:
    audit = cluster.gateways[region].audit
    assert audit is not None
    found = await audit.store.query(AuditQuery(limit=100))
    return [(r.outcome.value, r.reason, r.case_id) for _, r in found]


async def _refused(cluster: Cluster, query: object) -> grpc.aio.AioRpcError:
    async with cluster.exchange("sc.hrss") as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Query(query, metadata=bearer(cluster.token("sc.hrss")), timeout=CALL_TIMEOUT)
    return caught.value


async def test_the_requesting_gateway_refuses_a_query_naming_no_open_case(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(federation, tmp_path, binding=("510000", "330000")) as cluster:
        subject = cluster.subject("330000", "si.participation")
        query = request("330000", "si.participation", "SI-TRANSFER", subject, fields=PENSION_FIELDS)
        error = await _refused(cluster, query)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert error_info(error).reason == "CASE_NOT_OPEN"
        assert subject not in (error.details() or "")
        assert await _records(cluster, "510000") == [
            (Outcome.DENIED.value, "CASE_NOT_OPEN", "CASE-2026-0001")
        ]
        assert await _records(cluster, "330000") == []  # refused before the owner was asked
        # Each item of a batch is bound alike, and answered with its own status.
        item_query = request(
            "330000", "si.participation", "SI-TRANSFER", subject, fields=PENSION_FIELDS
        )
        async with cluster.exchange("sc.hrss") as stub:
            batch = await stub.BatchQuery(
                exchange_pb2.BatchQueryRequest(items=[item_query], request_id="batch-cases-1"),
                metadata=bearer(cluster.token("sc.hrss")),
                timeout=CALL_TIMEOUT,
            )
        (item,) = batch.items
        assert item.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        info = error_details_pb2.ErrorInfo()
        assert item.status.details[0].Unpack(info)
        assert info.reason == "CASE_NOT_OPEN"
        # Unconditional data names no case: answered as before.
        licence = cluster.subject("330000", "market.business_licence")
        async with cluster.exchange("sc.amr") as stub:
            answer = await stub.Query(
                request("330000", "market.business_licence", "LICENCE-VERIFY", licence, case_id=""),
                metadata=bearer(cluster.token("sc.amr")),
                timeout=CALL_TIMEOUT,
            )
        assert answer.record.sealer_region == "330000"


async def test_the_owner_decides_again_on_its_own_copy_of_the_case(
    federation: Federation, tmp_path: Path
) -> None:
    # Sichuan's gateway does not bind queries; Zhejiang's, the data owner's, does.
    async with running_cluster(federation, tmp_path, binding=("330000",)) as cluster:
        subject = cluster.subject("330000", "si.participation")
        query = request("330000", "si.participation", "SI-TRANSFER", subject, fields=PENSION_FIELDS)
        error = await _refused(cluster, query)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert error_info(error).reason == "CASE_NOT_OPEN"
        assert (error.details() or "").startswith("region 330000: ")  # the owner's refusal
        assert await _records(cluster, "330000") == [
            (Outcome.DENIED.value, "CASE_NOT_OPEN", "CASE-2026-0001")
        ]
        assert await _records(cluster, "510000") == [
            (Outcome.DENIED.value, "CASE_NOT_OPEN", "CASE-2026-0001")
        ]
