"""The demo provincial data system and the gateway's client of it, over real gRPC on loopback:
deterministic synthetic people and businesses, exact projection, NOT_FOUND by absence, error
reasons, the client's mapping of failures, its single retry, and logs without subject ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.demo.data import AS_OF, DEMO_REGIONS, DemoData
from gateway.demo.provider import CONTENT_TYPE, DemoProviderService, create_provider
from gateway.errors import abort
from gateway.provider import ProviderClient, ProviderError
from registry import is_valid_citizen_id, is_valid_uscc, load_source
from signer import canonical_json
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

DEMO_SOURCE = Path(__file__).resolve().parents[3] / "conf" / "registry"
DATASETS = load_source(DEMO_SOURCE).datasets
CALL_TIMEOUT = 5.0
BUSINESS = "market.business_licence"
STRANGER = "11010519491231002X"  # synthetic, valid check character, born in Beijing
BAD_CHECK = "110105194912310021"  # the same with a wrong check character


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError(f"no ErrorInfo in {exc.code().name}: {exc.details()}")


def subjects(data: DemoData, dataset: str, n: int = 60) -> list[str]:
    return data.businesses(n) if dataset == BUSINESS else data.population(n)


def present(data: DemoData, dataset: str) -> str:
    return next(s for s in subjects(data, dataset) if data.record(dataset, s) is not None)


def absent(data: DemoData, dataset: str) -> str:
    return next(s for s in subjects(data, dataset) if data.record(dataset, s) is None)


def request(dataset: str, subject_id: str, fields: list[str]) -> exchange_pb2.ProviderFetchRequest:
    return exchange_pb2.ProviderFetchRequest(
        dataset=dataset,
        subject_id=subject_id,
        fields=fields,
        purpose="demo.purpose",
        case_id="CASE-1",
        request_id="req-1",
        requesting_region="510000",
        requesting_agency="sc.data",
    )


async def client_fetch(
    client: ProviderClient, dataset: str, subject_id: str, fields: list[str], **kw: Any
) -> Any:
    return await client.fetch(
        dataset=dataset,
        subject_id=subject_id,
        fields=fields,
        purpose="demo.purpose",
        case_id="CASE-1",
        request_id="req-1",
        requesting_region="510000",
        requesting_agency="sc.data",
        **kw,
    )


@contextlib.asynccontextmanager
async def serving(
    region: str = "330000", service: exchange_pb2_grpc.DataProviderServicer | None = None
) -> AsyncIterator[int]:
    if service is None:
        server, port = create_provider(region)
    else:
        server = grpc.aio.server()
        exchange_pb2_grpc.add_DataProviderServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def stub_for(port: int) -> AsyncIterator[exchange_pb2_grpc.DataProviderAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield exchange_pb2_grpc.DataProviderStub(channel)


# Synthetic data -------------------------------------------------------------------------------
@pytest.mark.parametrize("region", DEMO_REGIONS)
def test_population_is_valid_distinct_and_in_region(region: str) -> None:
    data = DemoData(region)
    people = data.population(300)
    assert len(set(people)) == 300
    assert data.population(10) == people[:10] == DemoData(region).population(10)
    for citizen_id in people:
        assert is_valid_citizen_id(citizen_id)
        assert citizen_id[:6] in data.divisions
        assert citizen_id[:2] == region[:2]
        birth = date(int(citizen_id[6:10]), int(citizen_id[10:12]), int(citizen_id[12:14]))
        assert 18 <= (AS_OF - birth).days / 365.25 <= 81


@pytest.mark.parametrize("region", DEMO_REGIONS)
def test_businesses_are_valid_credit_codes_in_region(region: str) -> None:
    data = DemoData(region)
    codes = data.businesses(200)
    assert len(set(codes)) == 200
    for uscc in codes:
        assert is_valid_uscc(uscc)
        assert uscc.startswith("91")
        assert uscc[2:8] in data.divisions


def test_divisions_are_real_names_of_the_region() -> None:
    assert DemoData("330000").divisions["330102"] == "浙江省杭州市上城区"
    assert DemoData("510000").divisions["510104"] == "四川省成都市锦江区"
    assert DemoData("500000").divisions["500103"] == "重庆市渝中区"
    with pytest.raises(ValueError, match="no demo data"):
        DemoData("110000")


def test_records_are_deterministic_per_region_and_seed() -> None:
    citizen = present(DemoData("330000"), "hukou.household")
    first = DemoData("330000").record("hukou.household", citizen)
    again = DemoData("330000").record("hukou.household", citizen)
    assert first is not None
    assert first == again
    elsewhere = DemoData("510000").record("hukou.household", citizen)
    reseeded = DemoData("330000", seed="other").record("hukou.household", citizen)
    assert first != elsewhere
    assert first != reseeded
    assert "浙江省" in str(first["address"])


def test_a_person_is_consistent_across_the_regions_datasets() -> None:
    data = DemoData("510000")
    for citizen in data.population(40):
        records = [data.record(d, citizen) for d in sorted(data.datasets - {BUSINESS})]
        found = [r for r in records if r is not None]
        assert {r["citizen_id"] for r in found} <= {citizen}
        assert len({r["name"] for r in found}) <= 1


@pytest.mark.parametrize("region", DEMO_REGIONS)
def test_about_nine_in_ten_subjects_are_found(region: str) -> None:
    data = DemoData(region)
    people = data.population(400)
    found = sum(data.record("civil.marriage", s) is not None for s in people)
    assert 0.8 * 400 <= found <= 0.97 * 400


def test_any_valid_id_works_and_malformed_ids_are_refused() -> None:
    data = DemoData("500000")
    stranger = STRANGER
    assert is_valid_citizen_id(stranger)
    assert data.is_valid_subject("civil.marriage", stranger)
    data.record("civil.marriage", stranger)  # found or not, no error
    with pytest.raises(ValueError, match="subject id"):
        data.record("civil.marriage", BAD_CHECK)
    with pytest.raises(ValueError, match="subject id"):
        data.record(BUSINESS, stranger)
    with pytest.raises(KeyError):
        data.record("no.such.dataset", stranger)


# The service ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", DATASETS, ids=[f"{d.region}-{d.id}" for d in DATASETS])
async def test_projection_returns_exactly_the_requested_fields(dataset: Any) -> None:
    data = DemoData(dataset.region)
    catalogued = [f.name for f in dataset.fields]
    assert set(data.fields(dataset.id)) == set(catalogued)
    subject = present(data, dataset.id)
    record = data.record(dataset.id, subject)
    assert record is not None
    assert set(catalogued) <= set(record)
    for key in ("citizen_id", "uscc"):
        if key in record:
            assert record[key] == subject
    subset = catalogued[::-2]
    async with serving(dataset.region) as port, stub_for(port) as stub:
        for wanted in (catalogued, subset):
            response = await stub.Fetch(request(dataset.id, subject, wanted), timeout=CALL_TIMEOUT)
            assert response.found
            assert response.content_type == CONTENT_TYPE
            payload = json.loads(response.payload.decode("utf-8"))
            assert sorted(payload) == sorted(wanted)
            assert payload == {name: record[name] for name in wanted}
            assert response.payload == canonical_json(payload)


async def test_absent_subject_is_not_found_without_payload() -> None:
    data = DemoData("330000")
    subject = absent(data, "si.participation")
    async with serving("330000") as port, stub_for(port) as stub:
        response = await stub.Fetch(
            request("si.participation", subject, ["name"]), timeout=CALL_TIMEOUT
        )
    assert not response.found
    assert response.payload == b""


@pytest.mark.parametrize(
    ("dataset", "subject", "fields", "code", "reason"),
    [
        ("no.such", STRANGER, ["name"], "NOT_FOUND", "UNKNOWN_DATASET"),
        (
            "police.case_records",
            STRANGER,
            ["x"],
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT_FORMAT",
        ),
        ("civil.marriage", STRANGER, [], "INVALID_ARGUMENT", "INVALID_ARGUMENT_FORMAT"),
        (
            "civil.marriage",
            BAD_CHECK,
            ["name"],
            "INVALID_ARGUMENT",
            "SUBJECT_ID_INVALID",
        ),
        ("civil.marriage", "11010519491231002", ["name"], "INVALID_ARGUMENT", "SUBJECT_ID_INVALID"),
        (BUSINESS, STRANGER, ["uscc"], "INVALID_ARGUMENT", "SUBJECT_ID_INVALID"),
    ],
    ids=["unknown-dataset", "unknown-field", "no-fields", "check-digit", "short-id", "not-a-uscc"],
)
async def test_refusals_carry_status_and_reason(
    dataset: str, subject: str, fields: list[str], code: str, reason: str
) -> None:
    async with serving("500000") as port:
        async with stub_for(port) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Fetch(request(dataset, subject, fields), timeout=CALL_TIMEOUT)
            assert caught.value.code() == grpc.StatusCode[code]
            info = error_info(caught.value)
            assert (info.reason, info.domain) == (reason, "tongban")
            assert subject not in (caught.value.details() or "")
        async with ProviderClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(ProviderError) as mapped:
                await client_fetch(client, dataset, subject, fields)
            assert mapped.value.reason == reason
            assert not mapped.value.retryable


def test_plaintext_is_for_loopback_only() -> None:
    for target in ("10.0.0.7:50051", "provider.zj.gov.cn:443", "0.0.0.0:0"):
        with pytest.raises(ValueError, match="TLS"):
            ProviderClient(target)
        with pytest.raises(ValueError, match="loopback"):
            create_provider("330000", target)
    for target in ("127.0.0.1:1", "localhost:1", "[::1]:1", "ipv4:127.0.0.1:1"):
        ProviderClient(target)


# The client -----------------------------------------------------------------------------------
async def test_client_fetches_and_reports_absence() -> None:
    data = DemoData("510000")
    found, missing = present(data, "medical.insurance"), absent(data, "medical.insurance")
    async with serving("510000") as port, ProviderClient(f"127.0.0.1:{port}") as client:
        answer = await client_fetch(client, "medical.insurance", found, ["insured_region"])
        assert answer.found
        assert answer.content_type == CONTENT_TYPE
        assert json.loads(answer.payload) == {
            "insured_region": data.record("medical.insurance", found)["insured_region"]  # type: ignore[index]
        }
        none = await client_fetch(client, "medical.insurance", missing, ["name"])
        assert (none.found, none.payload) == (False, b"")


async def test_a_stopped_provider_is_unavailable_without_waiting_for_the_deadline() -> None:
    server, port = create_provider("330000")
    await server.start()
    await server.stop(None)
    citizen = DemoData("330000").population(1)[0]
    async with ProviderClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(ProviderError) as caught:
            await client_fetch(client, "civil.marriage", citizen, ["name"], deadline_seconds=30.0)
    # Refused connections end the call: UNAVAILABLE, not a wait for the deadline.
    assert caught.value.reason == "PROVIDER_UNAVAILABLE"
    assert caught.value.retryable
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


class Flaky(exchange_pb2_grpc.DataProviderServicer):
    """Answers UNAVAILABLE to the first `failures` calls, then serves the demo data."""

    def __init__(self, region: str, failures: int) -> None:
        self.inner = DemoProviderService(DemoData(region))
        self.failures = failures
        self.calls = 0

    async def Fetch(
        self,
        request: exchange_pb2.ProviderFetchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> exchange_pb2.ProviderFetchResponse:
        self.calls += 1
        if self.calls <= self.failures:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", "busy")
        return await self.inner.Fetch(request, context)


SLOW_SECONDS = 5.0  # how long Slow takes to answer


class Slow(exchange_pb2_grpc.DataProviderServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.answered = 0

    async def Fetch(
        self,
        request: exchange_pb2.ProviderFetchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> exchange_pb2.ProviderFetchResponse:
        self.calls += 1
        await asyncio.sleep(SLOW_SECONDS)
        self.answered += 1
        return exchange_pb2.ProviderFetchResponse()


async def test_unavailable_is_retried_once() -> None:
    citizen = present(DemoData("500000"), "hukou.household")
    flaky = Flaky("500000", failures=1)
    async with serving(service=flaky) as port, ProviderClient(f"127.0.0.1:{port}") as client:
        answer = await client_fetch(client, "hukou.household", citizen, ["name"])
    assert answer.found
    assert flaky.calls == 2

    down = Flaky("500000", failures=10)
    async with serving(service=down) as port, ProviderClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(ProviderError) as caught:
            await client_fetch(client, "hukou.household", citizen, ["name"])
    assert down.calls == 2
    assert (caught.value.reason, caught.value.retryable) == ("PROVIDER_UNAVAILABLE", True)


async def test_deadline_is_honoured_and_not_retried() -> None:
    slow = Slow()
    async with serving(service=slow) as port, ProviderClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(ProviderError) as caught:
            await client_fetch(client, "civil.marriage", STRANGER, ["name"], deadline_seconds=0.3)
        # Ended by its deadline, not by the slow answer, and asked once (never retried).
        assert (slow.calls, slow.answered) == (1, 0)
        with pytest.raises(ProviderError, match="no time left"):
            await client_fetch(client, "civil.marriage", STRANGER, ["name"], deadline_seconds=0)
    assert slow.calls == 1  # no time left: the data system is not asked at all
    assert (caught.value.reason, caught.value.retryable) == ("PROVIDER_UNAVAILABLE", False)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_no_subject_id_in_info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    data = DemoData("330000")
    found, missing = present(data, "civil.marriage"), absent(data, "civil.marriage")
    bad = found[:17] + ("0" if found[17] != "0" else "1")
    flaky = Flaky("330000", failures=1)
    async with serving("330000") as port, ProviderClient(f"127.0.0.1:{port}") as client:
        await client_fetch(client, "civil.marriage", found, ["name", "spouse_citizen_id"])
        await client_fetch(client, "civil.marriage", missing, ["name"])
        for dataset, subject, fields in (
            ("civil.marriage", bad, ["name"]),
            ("civil.marriage", found, ["nope"]),
            ("no.such", found, ["name"]),
        ):
            with pytest.raises(ProviderError):
                await client_fetch(client, dataset, subject, fields)
    async with serving(service=flaky) as port, ProviderClient(f"127.0.0.1:{port}") as client:
        await client_fetch(client, "civil.marriage", found, ["name"])
    assert len(caplog.records) >= 6
    for line in caplog.records:
        text = line.getMessage()
        for subject in (found, missing, bad):
            assert subject not in text
