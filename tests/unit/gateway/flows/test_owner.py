"""The owner's flow (`gateway.flows.OwnerFlow`) with in-memory backends and the data system as
a plain object: each refusal it can make, what it audits for it, and the sealed answer it
gives. No network, no server."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from case_support import case_summary, keep_case
from flow_support import (
    CITIZEN,
    NOW,
    OWNER,
    PSEUDONYM_KEY,
    REQUESTER,
    SI_FIELDS,
    Backends,
    Codec,
    DataSystem,
    Store,
    agency_caller,
    case_binding,
    gateway_caller,
    owner_flow,
    si_request,
    signed_call,
    verifier,
)
from support import Federation

from gateway import rpcs
from gateway.audit import Outcome
from gateway.cases import CaseBinding, CaseState, MemoryCaseStore
from gateway.errors import Refusal
from gateway.flows import ForwardCall, OwnerFlow
from gateway.identity import Caller
from gateway.policy import DataRequest
from gateway.provider import ProviderAnswer
from gateway.quota import QuotaUnavailable
from registry import Registry
from signer import Indication, SignatureKind


class World:
    """The owner gateway (330000), asked by Sichuan's gateway for one of its agencies."""

    def __init__(self, fed: Federation, registry: Registry) -> None:
        self.fed = fed
        self.registry = registry
        self.backends = Backends(OWNER, Store(registry))
        self.data = DataSystem()
        self.seal_keys: dict[str, Any] | None = None
        self.no_data_system = False
        self.codec = Codec()
        self.cases: CaseBinding | None = None  # queries not bound to cases unless a test binds
        self.case_store: MemoryCaseStore | None = None

    def flow(self) -> OwnerFlow:
        return owner_flow(
            self.fed,
            self.backends,
            data_system=None if self.no_data_system else self.data,
            seal_keys=self.seal_keys,
            codec=self.codec,
            cases=self.cases,
        )

    async def open_case(self, **changes: Any) -> None:
        """Bind queries to cases, with this gateway's copy of the pension transfer open and its
        part handled by Sichuan's social insurance bureau, for the citizen of si_request."""
        self.cases, self.case_store = case_binding(OWNER)
        handled = {"handling": ((REQUESTER, "sc.hrss"),), "agencies": ("sc.hrss",)}
        await keep_case(
            self.case_store, case_summary(CITIZEN, PSEUDONYM_KEY, **(handled | changes))
        )

    def call(
        self,
        request: DataRequest | None = None,
        *,
        agency: str = "sc.hrss",
        caller: Caller | None = None,
        requesting_region: str = REQUESTER,
    ) -> ForwardCall:
        made = ForwardCall(
            caller=caller or gateway_caller(requesting_region),
            requesting_region=requesting_region,
            agency_id=agency,
            operator="经办人 张三",
            request=request or si_request(),
            time_remaining=lambda: None,
        )
        return signed_call(self.fed, made)


@pytest.fixture
def world(fed: Federation, registry: Registry) -> World:
    return World(fed, registry)


async def test_an_allowed_query_is_sealed_by_this_region_and_audited(world: World) -> None:
    answer = await world.flow().forward(world.call())
    assert (answer.fields, answer.cache_hit, answer.agreement_id) == (
        SI_FIELDS,
        False,
        "ZJ-SC-SI-2026",
    )
    assert answer.subject_pseudonym == ""  # cache_scope "provider": no reports, no pseudonym
    report = verifier(world.registry).validate(
        answer.record.jws, expected_kind=SignatureKind.SEAL, expected_owner_region=OWNER
    )
    assert report.indication is Indication.TOTAL_PASSED, report.message
    assert report.payload == answer.record.payload
    assert set(json.loads(answer.record.payload)) == set(SI_FIELDS)
    assert answer.record.sealed_at_time() == NOW
    (record,) = world.backends.records()
    assert (record.rpc, record.outcome, record.caller_agency, record.caller_region) == (
        rpcs.FORWARD,
        Outcome.ALLOWED,
        "sc.hrss",
        REQUESTER,
    )
    assert answer.audit_id == f"audit.tongban/{OWNER}#0"
    assert world.data.fetched == [(CITIZEN, SI_FIELDS)]


async def test_a_second_query_is_answered_from_the_cache_and_a_miss_is_not_read_back(
    world: World,
) -> None:
    flow = world.flow()
    first = await flow.forward(world.call())
    second = await flow.forward(world.call(si_request(request_id="req-0002")))
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.record == first.record
    assert len(world.data.fetched) == 1
    assert world.codec.decoded == 1  # the hit read the kept record; the miss used its own


async def test_a_requester_scoped_dataset_is_answered_with_the_subject_pseudonym(
    world: World,
) -> None:
    world.data = DataSystem(subjects=("11330000171521337R",))
    request = si_request(
        dataset="market.business_licence",
        purpose="LICENCE-VERIFY",
        subject_id="11330000171521337R",
        case_id="",
    )
    answer = await world.flow().forward(world.call(request, agency="sc.amr"))
    (record,) = world.backends.records()
    assert answer.subject_pseudonym == record.subject
    assert len(answer.subject_pseudonym) == 64


# -- each refusal ----------------------------------------------------------------------------
Setup = Callable[[World], ForwardCall]


def _stale(w: World) -> ForwardCall:
    w.backends.registry.stale = True
    return w.call()


def _quota(result: bool | None) -> Setup:
    def setup(w: World) -> ForwardCall:
        class Quota:
            async def take(self, key: str, limit: int, *, now: Any) -> bool:
                assert key == "owner:ZJ-SC-SI-2026"
                if result is None:
                    raise QuotaUnavailable("redis is down")
                return result

        w.backends.quota = Quota()
        return w.call()

    return setup


def _audit_breaker_open(w: World) -> ForwardCall:
    w.backends.audit.breaker.failure(connection=True)
    return w.call()


def _no_data_system(w: World) -> ForwardCall:
    w.no_data_system = True
    return w.call()


def _data_system_refuses(w: World) -> ForwardCall:
    w.data = DataSystem(
        refusal=Refusal.passed_on(
            grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", "the data system is down"
        )
    )
    return w.call()


def _no_record(w: World) -> ForwardCall:
    w.data = DataSystem(subjects=())
    return w.call()


def _no_seal_key(w: World) -> ForwardCall:
    w.seal_keys = {}
    return w.call()


def _request(**changes: Any) -> Setup:
    return lambda w: w.call(si_request(**changes))


PENSION_FIELDS = ("citizen_id", "contribution_months", "insurance_types", "name", "status")


def _bound(
    request: DataRequest | None = None, **case: Any
) -> Callable[[World], Awaitable[ForwardCall]]:
    """Cases bind queries, with this gateway's copy of the pension transfer as `case` says."""

    async def setup(w: World) -> ForwardCall:
        await w.open_case(**case)
        return w.call(request or si_request(fields=PENSION_FIELDS))

    return setup


# (setup, reason, status code, audited outcome: None when nothing is audited)
REFUSALS: dict[
    str,
    tuple[
        Callable[[World], ForwardCall | Awaitable[ForwardCall]],
        str,
        grpc.StatusCode,
        Outcome | None,
    ],
] = {
    "no copy of the case here": (
        _bound(si_request(fields=PENSION_FIELDS, case_id="CASE-2026-0404")),
        "CASE_NOT_OPEN",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "the case's part is handled by another agency": (
        _bound(handling=((REQUESTER, "sc.hsa"),)),
        "CASE_NOT_OPEN",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "the case is rejected": (
        _bound(state=CaseState.REJECTED.value),
        "CASE_NOT_OPEN",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "the case's applicant is another subject": (
        _bound(applicant="0" * 64),
        "CASE_NOT_OPEN",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "the case's matter does not allow a field": (
        _bound(si_request()),
        "CASE_QUERY_NOT_ALLOWED",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "caller is an agency, not a gateway": (
        lambda w: w.call(caller=agency_caller(w.fed)),
        "NOT_AUTHORISED_ROLE",
        grpc.StatusCode.PERMISSION_DENIED,
        None,
    ),
    "caller is the gateway of another region": (
        lambda w: w.call(caller=gateway_caller("500000")),
        "NOT_AUTHORISED_ROLE",
        grpc.StatusCode.PERMISSION_DENIED,
        None,
    ),
    "no current registry": (_stale, "REGISTRY_STALE", grpc.StatusCode.UNAVAILABLE, None),
    "request id malformed": (
        _request(request_id="has space"),
        "INVALID_ARGUMENT_FORMAT",
        grpc.StatusCode.INVALID_ARGUMENT,
        Outcome.DENIED,
    ),
    "fields too many": (
        _request(fields=tuple(f"f{n}" for n in range(100))),
        "REQUEST_TOO_LARGE",
        grpc.StatusCode.INVALID_ARGUMENT,
        Outcome.DENIED,
    ),
    "another region's data": (
        _request(provider_region="500000"),
        "UNKNOWN_REGION",
        grpc.StatusCode.INVALID_ARGUMENT,
        Outcome.DENIED,
    ),
    "agency of another region": (
        lambda w: w.call(agency="cq.hrss"),
        "NOT_AUTHORISED_ROLE",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "agency unknown": (
        lambda w: w.call(agency="sc.gone"),
        "NOT_AUTHORISED_ROLE",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "unknown dataset": (
        _request(dataset="si.nothing"),
        "UNKNOWN_DATASET",
        grpc.StatusCode.INVALID_ARGUMENT,
        Outcome.DENIED,
    ),
    "unknown purpose": (
        _request(purpose="NOTHING"),
        "UNKNOWN_PURPOSE",
        grpc.StatusCode.INVALID_ARGUMENT,
        Outcome.DENIED,
    ),
    "subject id invalid": (
        _request(subject_id="110105194912310021"),
        "SUBJECT_ID_INVALID",
        grpc.StatusCode.INVALID_ARGUMENT,
        Outcome.DENIED,
    ),
    "purpose not in the agreement": (
        lambda w: w.call(agency="sc.psb"),
        "PURPOSE_NOT_APPROVED",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "case id required": (
        _request(case_id=""),
        "CASE_ID_REQUIRED",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "field outside the purpose": (
        _request(fields=("bank_account",)),
        "FIELD_NOT_ALLOWED",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "owner quota spent": (
        _quota(False),
        "QUOTA_EXCEEDED",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Outcome.DENIED,
    ),
    "quota store down": (
        _quota(None),
        "SHARED_STATE_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        Outcome.FAILED,
    ),
    "audit store failing": (
        _audit_breaker_open,
        "AUDIT_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        None,  # its breaker is open: the refusal's own record is not written either
    ),
    "no data system configured": (
        _no_data_system,
        "PROVIDER_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        Outcome.FAILED,
    ),
    "data system down": (
        _data_system_refuses,
        "PROVIDER_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        Outcome.FAILED,
    ),
    "no record of the subject": (
        _no_record,
        "SUBJECT_NOT_FOUND",
        grpc.StatusCode.NOT_FOUND,
        Outcome.DENIED,
    ),
    "the region's seal key not held": (
        _no_seal_key,
        "SEAL_KEY_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        Outcome.FAILED,
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_each_refusal_is_raised_with_its_reason_and_audited(world: World, case: str) -> None:
    setup, reason, code, audited = REFUSALS[case]
    made = setup(world)
    call = await made if inspect.isawaitable(made) else made
    with pytest.raises(Refusal) as caught:
        await world.flow().forward(call)
    refusal = caught.value
    assert (refusal.reason, refusal.code) == (reason, code)
    records = world.backends.records()
    if audited is None:
        assert not records
        return
    (record,) = records
    assert (record.outcome, record.reason, record.rpc) == (audited, reason, rpcs.FORWARD)
    assert record.caller_region == call.requesting_region
    assert refusal.audited


async def test_nothing_is_fetched_before_the_decision_and_the_quota(world: World) -> None:
    for setup in (_request(case_id=""), _quota(False)):
        call = setup(world)
        with pytest.raises(Refusal):
            await world.flow().forward(call)
    assert not world.data.fetched


async def test_an_answer_that_cannot_be_audited_is_not_given(world: World) -> None:
    class GoesDown(DataSystem):
        async def fetch(
            self, request: DataRequest, fields: Any, call: ForwardCall
        ) -> ProviderAnswer:
            world.backends.audit_store.available = False
            return await super().fetch(request, fields, call)

    world.data = GoesDown()
    with pytest.raises(Refusal) as caught:
        await world.flow().forward(world.call())
    assert (caught.value.reason, caught.value.audited) == ("AUDIT_UNAVAILABLE", True)
    assert not world.backends.records()


async def test_a_forward_cancelled_while_the_data_system_answers_is_recorded(
    world: World,
) -> None:
    started = asyncio.Event()

    class Hangs(DataSystem):
        async def fetch(
            self, request: DataRequest, fields: Any, call: ForwardCall
        ) -> ProviderAnswer:
            started.set()
            await asyncio.sleep(3600)
            raise AssertionError("not reached")

    world.data = Hangs()
    task = asyncio.ensure_future(world.flow().forward(world.call()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = world.backends.records()
    assert (record.outcome, record.reason) == (Outcome.FAILED, "REQUEST_CANCELLED")


# -- cases bind queries for conditional datasets: the owner decides again on its own copy ------
async def test_the_owner_answers_for_a_case_its_copy_says_the_agency_handles(world: World) -> None:
    await world.open_case()
    answer = await world.flow().forward(world.call(si_request(fields=PENSION_FIELDS)))
    assert answer.fields == tuple(sorted(PENSION_FIELDS))
    (record,) = world.backends.records()
    assert (record.outcome, record.case_id) == (Outcome.ALLOWED, "CASE-2026-0001")


async def test_the_owner_checks_the_signed_agency_and_region(world: World) -> None:
    # The case is handled by Chongqing's bureau: Sichuan's gateway forwarding for its own
    # social insurance bureau is refused, whatever that agency claims.
    await world.open_case(handling=(("500000", "cq.hrss"),))
    with pytest.raises(Refusal) as caught:
        await world.flow().forward(world.call(si_request(fields=PENSION_FIELDS)))
    assert caught.value.reason == "CASE_NOT_OPEN"
    assert not world.data.fetched


async def test_a_closed_case_is_refused_before_the_owners_cache(world: World) -> None:
    await world.open_case()
    flow = world.flow()
    request = si_request(fields=PENSION_FIELDS)
    await flow.forward(world.call(request))
    hit = await flow.forward(world.call(si_request(fields=PENSION_FIELDS, request_id="req-0002")))
    assert hit.cache_hit
    assert world.case_store is not None
    done = case_summary(
        CITIZEN, PSEUDONYM_KEY, state=CaseState.COMPLETED.value, updated_at=NOW, handling=()
    )
    await keep_case(world.case_store, done, seq=2)
    decoded = world.codec.decoded
    with pytest.raises(Refusal) as caught:
        await flow.forward(world.call(si_request(fields=PENSION_FIELDS, request_id="req-0003")))
    assert caught.value.reason == "CASE_NOT_OPEN"
    assert world.codec.decoded == decoded  # the kept answer was not read
    assert len(world.data.fetched) == 1
    assert [r.reason for r in world.backends.records()] == ["", "", "CASE_NOT_OPEN"]


async def test_without_bound_queries_the_owner_does_not_check_a_case_id(world: World) -> None:
    assert world.cases is None
    answer = await world.flow().forward(world.call(si_request(case_id="made-up-17")))
    assert answer.fields == SI_FIELDS
