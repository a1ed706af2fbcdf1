"""The requester's flow (`gateway.flows.RequesterFlow`) with in-memory backends and the owner's
gateway as a plain object: each refusal it can make, what it audits for it, and the answer it
releases. No network, no server."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from case_support import case_summary, keep_case
from cryptography.hazmat.primitives.asymmetric import ed25519
from flow_support import (
    CITIZEN,
    NOW,
    OWNER,
    PSEUDONYM_KEY,
    REQUESTER,
    SI_FIELDS,
    Backends,
    DataSystem,
    OwnerPeer,
    Store,
    agency_caller,
    case_binding,
    gateway_caller,
    owner_flow,
    requester_flow,
    seal_key,
    si_request,
    signed_call,
    token,
)
from support import Federation

from gateway import rpcs
from gateway.audit import Outcome
from gateway.cases import CaseBinding, CaseState, MemoryCaseStore
from gateway.errors import Refusal
from gateway.flows import ForwardCall, Forwarded, QueryCall, SealedAnswer
from gateway.identity import Caller
from gateway.policy import DataRequest
from gateway.quota import QuotaUnavailable
from gateway.replay import ReplayUnavailable
from gateway.reports import AccessReporter
from gateway.sealing import SealFormat
from gateway.shared_checks import Checked, SequentialChecks, Wanted
from registry import CacheScope, Registry
from signer import seal


class World:
    """A requesting gateway (510000) whose owner (330000) is an in-memory OwnerFlow behind a
    plain peer object, unless the test gives another peer."""

    def __init__(self, fed: Federation, registry: Registry) -> None:
        self.fed = fed
        self.registry = registry
        self.requester = Backends(REQUESTER, Store(registry))
        self.owner = Backends(OWNER, Store(registry))
        self.owner_flow = owner_flow(fed, self.owner, data_system=DataSystem())
        self.peer = OwnerPeer(self._ask_owner)
        self.cases: CaseBinding | None = None  # queries not bound to cases unless a test binds

    async def _ask_owner(self, request: DataRequest, caller: Caller, operator: str) -> Forwarded:
        return await self.owner_flow.forward(
            signed_call(
                self.fed,
                ForwardCall(
                    caller=gateway_caller(REQUESTER),
                    requesting_region=REQUESTER,
                    agency_id=caller.agency_id,
                    operator=operator,
                    request=request,
                    time_remaining=lambda: None,
                ),
            )
        )

    def flow(self, peer: OwnerPeer | None = None) -> Any:
        return requester_flow(self.requester, peer or self.peer, self.registry, cases=self.cases)

    async def open_case(self, **changes: Any) -> None:
        """Bind queries to cases, with the pension transfer open here and its part handled by
        Sichuan's social insurance bureau (the asking agency), for the citizen of si_request."""
        self.cases, store = case_binding(REQUESTER)
        handled = {"handling": ((REQUESTER, "sc.hrss"),), "agencies": ("sc.hrss",)}
        await keep_case(store, case_summary(CITIZEN, PSEUDONYM_KEY, **(handled | changes)))

    def call(
        self,
        request: DataRequest | None = None,
        *,
        agency: str = "sc.hrss",
        caller: Caller | None = None,
        bearer: str | None = None,
    ) -> QueryCall:
        return QueryCall(
            caller=caller or agency_caller(self.fed, agency),
            request=request or si_request(),
            token=token(self.fed, agency) if bearer is None else bearer,
            rpc=rpcs.QUERY,
            time_remaining=lambda: None,
        )


@pytest.fixture
def world(fed: Federation, registry: Registry) -> World:
    return World(fed, registry)


async def test_an_allowed_query_is_answered_sealed_and_audited_on_both_gateways(
    world: World,
) -> None:
    answer = await world.flow().query(world.call())
    assert answer.fields == SI_FIELDS
    assert answer.record.sealer_region == OWNER
    assert set(json.loads(answer.record.payload)) == set(SI_FIELDS)
    assert answer.agreement_id == "ZJ-SC-SI-2026"
    (mine,) = world.requester.records()
    (theirs,) = world.owner.records()
    assert (mine.outcome, mine.rpc, mine.caller_operator) == (
        Outcome.ALLOWED,
        rpcs.QUERY,
        "经办人 张三",
    )
    assert mine.sealed_digest == theirs.sealed_digest
    assert theirs.rpc == rpcs.FORWARD
    assert answer.audit_id == f"audit.tongban/{REQUESTER}#0"


# -- each refusal ----------------------------------------------------------------------------
Setup = Callable[[World], QueryCall]


def _gateway_calls(w: World) -> QueryCall:
    return w.call(caller=gateway_caller(REQUESTER))


def _stale(w: World) -> QueryCall:
    w.requester.registry.stale = True
    return w.call()


def _replay_down(w: World) -> QueryCall:
    class Down:
        async def first_use(self, agency: str, request_id: str) -> bool:
            raise ReplayUnavailable("redis is down")

    w.requester.replay = Down()
    return w.call()


def _quota_down(w: World) -> QueryCall:
    class Down:
        async def take(self, key: str, limit: int, *, now: Any) -> bool:
            raise QuotaUnavailable("redis is down")

    w.requester.quota = Down()
    return w.call()


def _quota_spent(w: World) -> QueryCall:
    class Spent:
        async def take(self, key: str, limit: int, *, now: Any) -> bool:
            return False

    w.requester.quota = Spent()
    return w.call()


def _audit_breaker_open(w: World) -> QueryCall:
    w.requester.audit.breaker.failure(connection=True)
    return w.call()


def _peer_refuses(reason: str, code: grpc.StatusCode | None = None) -> Setup:
    def setup(w: World) -> QueryCall:
        refusal = (
            Refusal.passed_on(code, reason, f"region {OWNER}: refused")
            if code is not None
            else Refusal(reason, "the peer failed")
        )
        w.peer = OwnerPeer(refusal=refusal)
        return w.call()

    return setup


def _answer_changed(change: Callable[[Forwarded], Forwarded]) -> Setup:
    def setup(w: World) -> QueryCall:
        ask = w.peer.answer
        assert ask is not None

        async def changed(request: DataRequest, caller: Caller, operator: str) -> Forwarded:
            return change(await ask(request, caller, operator))

        w.peer = OwnerPeer(changed)
        return w.call()

    return setup


def _tampered(answer: Forwarded) -> Forwarded:
    record = dataclasses.replace(answer.record, payload=answer.record.payload + b" ")
    return dataclasses.replace(answer, record=record)


def _as_gbt38540(answer: Forwarded) -> Forwarded:
    # the JWS swapped for a "GB/T 38540" seal: the format decides which verifier looks, and a
    # seal that is not one fails whatever the payload
    record = dataclasses.replace(
        answer.record, jws="", format=SealFormat.GBT38540, ses_signature=b"0\x03\x02\x01\x04"
    )
    return dataclasses.replace(answer, record=record)


def _as_ofd(answer: Forwarded) -> Forwarded:
    return dataclasses.replace(
        answer, record=dataclasses.replace(answer.record, format=SealFormat.OFD)
    )


def _sealed_by_owner(fed: Federation, payload: bytes) -> SealedAnswer:
    key = seal_key(fed)
    sealed_at = NOW.replace(microsecond=0)
    return SealedAnswer(
        jws=seal(payload, key, content_type="application/json", signing_time=sealed_at),
        payload=payload,
        content_type="application/json",
        sealer_kid=key.kid,
        sealer_region=OWNER,
        sealed_at=SealedAnswer.wire_time(sealed_at),
    )


def _owner_seals(payload: bytes) -> Setup:
    def setup(w: World) -> QueryCall:
        record = _sealed_by_owner(w.fed, payload)
        w.peer = OwnerPeer(
            lambda request, caller, operator: Forwarded(
                record=record,
                audit_id=f"audit.tongban/{OWNER}#0",
                fields=SI_FIELDS,
                registry_version=w.registry.version,
                cache_hit=False,
                agreement_id="ZJ-SC-SI-2026",
                subject_pseudonym="",
            )
        )
        return w.call()

    return setup


def _request(**changes: Any) -> Setup:
    return lambda w: w.call(si_request(**changes))


def _as(agency: str, **changes: Any) -> Setup:
    return lambda w: w.call(si_request(**changes), agency=agency)


PENSION_FIELDS = ("citizen_id", "contribution_months", "insurance_types", "name", "status")


def _bound(
    request: DataRequest | None = None, **case: Any
) -> Callable[[World], Awaitable[QueryCall]]:
    """Cases bind queries, with the pension transfer held as `case` says; `request` asked."""

    async def setup(w: World) -> QueryCall:
        await w.open_case(**case)
        return w.call(request or si_request(fields=PENSION_FIELDS))

    return setup


# (setup, reason, status code, audited outcome: None when nothing is audited)
REFUSALS: dict[
    str,
    tuple[
        Callable[[World], QueryCall | Awaitable[QueryCall]], str, grpc.StatusCode, Outcome | None
    ],
] = {
    "caller is no agency of this region": (
        _gateway_calls,
        "NOT_AUTHORISED_ROLE",
        grpc.StatusCode.PERMISSION_DENIED,
        None,
    ),
    "no current registry": (
        _stale,
        "REGISTRY_STALE",
        grpc.StatusCode.UNAVAILABLE,
        None,
    ),
    "no token": (
        lambda w: w.call(bearer=""),
        "TOKEN_INVALID",
        grpc.StatusCode.UNAUTHENTICATED,
        Outcome.DENIED,
    ),
    "token expired": (
        lambda w: w.call(bearer=token(w.fed, "sc.hrss", now=NOW - timedelta(hours=1))),
        "TOKEN_EXPIRED",
        grpc.StatusCode.UNAUTHENTICATED,
        Outcome.DENIED,
    ),
    "token of another certificate": (
        lambda w: w.call(bearer=token(w.fed, "sc.hrss", thumbprint="x" * 43)),
        "TOKEN_BINDING_MISMATCH",
        grpc.StatusCode.UNAUTHENTICATED,
        Outcome.DENIED,
    ),
    "request id missing": (
        _request(request_id=""),
        "INVALID_ARGUMENT_FORMAT",
        grpc.StatusCode.INVALID_ARGUMENT,
        Outcome.DENIED,
    ),
    "case id too long": (
        _request(case_id="c" * 200),
        "REQUEST_TOO_LARGE",
        grpc.StatusCode.INVALID_ARGUMENT,
        Outcome.DENIED,
    ),
    "replay window down": (
        _replay_down,
        "SHARED_STATE_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        Outcome.FAILED,
    ),
    "agency gone from the registry": (
        lambda w: w.call(agency="sc.gone", caller=agency_caller(w.fed, "sc.gone")),
        "CERTIFICATE_NOT_TRUSTED",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "unknown region": (
        _request(provider_region="110000"),
        "UNKNOWN_REGION",
        grpc.StatusCode.INVALID_ARGUMENT,
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
    "dataset not shared": (
        _request(provider_region="500000", dataset="police.case_records"),
        "DATASET_NOT_SHARED",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "purpose not in the agreement": (
        _as("sc.psb"),
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
    "no open case of this agency for the subject": (
        _bound(handling=((REQUESTER, "sc.hsa"),)),
        "CASE_NOT_OPEN",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "the case named is closed": (
        _bound(state=CaseState.COMPLETED.value),
        "CASE_NOT_OPEN",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "the case named is not held here": (
        _bound(si_request(fields=PENSION_FIELDS, case_id="CASE-2026-0404")),
        "CASE_NOT_OPEN",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "the case's matter does not allow a field": (
        _bound(si_request()),  # every field the purpose allows: employer_name is not the matter's
        "CASE_QUERY_NOT_ALLOWED",
        grpc.StatusCode.PERMISSION_DENIED,
        Outcome.DENIED,
    ),
    "quota spent": (
        _quota_spent,
        "QUOTA_EXCEEDED",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Outcome.DENIED,
    ),
    "quota store down": (
        _quota_down,
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
    "owner unreachable": (
        _peer_refuses("PEER_UNAVAILABLE"),
        "PEER_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        Outcome.FAILED,
    ),
    "owner refuses": (
        _peer_refuses("SUBJECT_NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        "SUBJECT_NOT_FOUND",
        grpc.StatusCode.NOT_FOUND,
        Outcome.DENIED,
    ),
    "answer's seal does not cover its payload": (
        _answer_changed(_tampered),
        "SEAL_INVALID",
        grpc.StatusCode.DATA_LOSS,
        Outcome.FAILED,
    ),
    "answer claims a GB/T 38540 seal it does not carry": (
        _answer_changed(_as_gbt38540),
        "SEAL_INVALID",
        grpc.StatusCode.DATA_LOSS,
        Outcome.FAILED,
    ),
    "answer to a query is an e-licence (OFD)": (
        _answer_changed(_as_ofd),
        "SEAL_INVALID",
        grpc.StatusCode.DATA_LOSS,
        Outcome.FAILED,
    ),
    "answer is no JSON record": (
        _owner_seals(b"not json"),
        "SEAL_INVALID",
        grpc.StatusCode.DATA_LOSS,
        Outcome.FAILED,
    ),
    "answer carries more fields than allowed": (
        _owner_seals(json.dumps({"name": "x", "bank_account": "y"}).encode()),
        "FIELD_NOT_ALLOWED",
        grpc.StatusCode.DATA_LOSS,
        Outcome.FAILED,
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_each_refusal_is_raised_with_its_reason_and_audited(world: World, case: str) -> None:
    setup, reason, code, audited = REFUSALS[case]
    made = setup(world)
    call = await made if inspect.isawaitable(made) else made
    with pytest.raises(Refusal) as caught:
        await world.flow().query(call)
    refusal = caught.value
    assert (refusal.reason, refusal.code) == (reason, code)
    records = world.requester.records()
    if audited is None:
        assert not records
        return
    (record,) = records
    assert (record.outcome, record.reason, record.rpc) == (audited, reason, rpcs.QUERY)
    assert refusal.audited
    assert record.subject != call.request.subject_id  # a pseudonym, never the raw id


async def test_a_malformed_argument_is_named_never_its_value(world: World) -> None:
    with pytest.raises(Refusal) as caught:
        await world.flow().query(world.call(si_request(request_id="11010519491231002X")))
    assert caught.value.metadata == {"field": "request_id"}
    assert "11010519491231002X" not in caught.value.message


async def test_a_replayed_request_id_is_refused(world: World) -> None:
    flow = world.flow()
    await flow.query(world.call())
    with pytest.raises(Refusal) as caught:
        await flow.query(world.call())
    assert caught.value.reason == "REQUEST_REPLAYED"
    assert [r.outcome for r in world.requester.records()] == [Outcome.ALLOWED, Outcome.DENIED]


async def test_an_answer_that_cannot_be_audited_is_not_released(world: World) -> None:
    ask_owner = world.peer.answer
    assert ask_owner is not None

    async def store_goes_down(request: DataRequest, caller: Caller, operator: str) -> Forwarded:
        answer = await ask_owner(request, caller, operator)
        world.requester.audit_store.available = False
        return answer

    world.peer = OwnerPeer(store_goes_down)
    with pytest.raises(Refusal) as caught:
        await world.flow().query(world.call())
    assert caught.value.reason == "AUDIT_UNAVAILABLE"
    assert caught.value.audited
    assert not world.requester.records()
    assert len(world.owner.records()) == 1  # the owner released it to this gateway


async def test_a_quota_refusal_is_counted_for_its_agreement(world: World) -> None:
    _quota_spent(world)
    with pytest.raises(Refusal):
        await world.flow().query(world.call())
    assert world.requester.metrics.quota_rejections == ["ZJ-SC-SI-2026"]


async def test_a_query_cancelled_while_the_owner_answers_is_recorded(world: World) -> None:
    peer = OwnerPeer(hang=True)
    task = asyncio.ensure_future(world.flow(peer).query(world.call()))
    await peer.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = world.requester.records()
    assert (record.outcome, record.reason) == (Outcome.FAILED, "REQUEST_CANCELLED")
    assert record.agreement_id == "ZJ-SC-SI-2026"


async def test_the_owner_is_asked_only_after_every_check_passed(world: World) -> None:
    peer = OwnerPeer(refusal=Refusal("PEER_UNAVAILABLE", "down"))
    with pytest.raises(Refusal):
        await world.flow(peer).query(world.call(si_request(case_id="")))
    assert not peer.asked


# -- this gateway's own copy of the owner's answer (cache_scope "requester") -----------------
def _reporter(world: World) -> AccessReporter:
    return AccessReporter(
        region=REQUESTER,
        registry=world.requester.registry,  # type: ignore[arg-type]
        peers=None,  # type: ignore[arg-type]  # never sends here: the flow only records
        audit=world.requester.audit,
        key=ed25519.Ed25519PrivateKey.generate(),
        clock=world.requester.clock,
    )


def _licence(n: int) -> DataRequest:
    return si_request(
        dataset="market.business_licence",
        purpose="LICENCE-VERIFY",
        subject_id=ZJ_AMR_USCC,
        case_id="",
        request_id=f"licence-{n}",
    )


ZJ_AMR_USCC = "11330000171521337R"


async def test_a_kept_answer_is_released_with_its_report_in_the_same_record(world: World) -> None:
    world.owner_flow = owner_flow(
        world.fed, world.owner, data_system=DataSystem(subjects=(ZJ_AMR_USCC,))
    )
    reporter = _reporter(world)
    flow = requester_flow(world.requester, world.peer, world.registry, reporter=reporter)
    first = await flow.query(world.call(_licence(1), agency="sc.amr"))
    second = await flow.query(world.call(_licence(2), agency="sc.amr"))
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.record == first.record
    assert len(world.peer.asked) == 1  # the hit asked nobody
    assert reporter.backlog == {OWNER: 1}
    hit = world.requester.records()[-1]
    assert (hit.outcome, hit.cache_hit, hit.request_id) == (Outcome.ALLOWED, True, "licence-2")
    (pending,) = await world.requester.audit_store.outbox(OWNER, limit=10)
    report = json.loads(pending.payload)
    assert report["request_id"] == "licence-2"
    assert report["answer_audit_id"] == f"audit.tongban/{OWNER}#0"
    assert flow.seal_memo.hits == 1  # the hit did not verify the seal again


# -- cases bind queries for conditional datasets (3a) ------------------------------------------
async def test_a_query_for_an_open_case_the_agency_handles_is_answered(world: World) -> None:
    await world.open_case()
    answer = await world.flow().query(world.call(si_request(fields=PENSION_FIELDS)))
    assert answer.fields == tuple(sorted(PENSION_FIELDS))
    (record,) = world.requester.records()
    assert (record.outcome, record.case_id) == (Outcome.ALLOWED, "CASE-2026-0001")


async def test_a_case_refusal_comes_before_the_quota_and_the_owner(world: World) -> None:
    await world.open_case(handling=())
    quota = world.requester.quota
    with pytest.raises(Refusal) as caught:
        await world.flow().query(world.call(si_request(fields=PENSION_FIELDS)))
    assert caught.value.reason == "CASE_NOT_OPEN"
    assert not world.peer.asked
    assert not world.owner.records()
    assert quota._counts == {}  # nothing taken of the agreement's quota
    assert world.requester.metrics.decisions == [("denied", "CASE_NOT_OPEN")]


async def test_without_bound_queries_a_case_id_is_not_checked(world: World) -> None:
    assert world.cases is None
    answer = await world.flow().query(world.call(si_request(case_id="made-up-17")))
    assert answer.fields == SI_FIELDS


async def test_an_unconditional_dataset_names_no_case(world: World) -> None:
    await world.open_case(handling=())  # bound, and no case handled by anyone
    world.owner_flow = owner_flow(
        world.fed, world.owner, data_system=DataSystem(subjects=(ZJ_AMR_USCC,))
    )
    answer = await world.flow().query(world.call(_licence(1), agency="sc.amr"))
    assert answer.record.sealer_region == OWNER


async def test_a_kept_answer_is_not_released_once_its_case_is_closed(
    fed: Federation, registry: Registry
) -> None:
    # The owner lets requesters keep si.participation: the first query is kept here; once the
    # case is completed, the same query is refused before this gateway's cache is read.
    datasets = tuple(
        dataclasses.replace(d, cache_scope=CacheScope.REQUESTER)
        if (d.region, d.id) == (OWNER, "si.participation")
        else d
        for d in registry.datasets
    )
    world = World(fed, dataclasses.replace(registry, datasets=datasets))
    await world.open_case()
    flow = requester_flow(
        world.requester, world.peer, world.registry, reporter=_reporter(world), cases=world.cases
    )
    request = si_request(fields=PENSION_FIELDS)
    first = await flow.query(world.call(request))
    hit = await flow.query(world.call(dataclasses.replace(request, request_id="req-0002")))
    assert (first.cache_hit, hit.cache_hit) == (False, True)
    assert world.cases is not None
    closed = case_summary(
        CITIZEN, PSEUDONYM_KEY, state=CaseState.COMPLETED.value, updated_at=NOW, handling=()
    )
    store = world.cases.store
    assert isinstance(store, MemoryCaseStore)
    cache = world.requester.cache
    read = cache.get
    reads: list[bytes] = []

    async def counted(key: bytes) -> bytes | None:
        reads.append(key)
        return await read(key)

    cache.get = counted  # type: ignore[method-assign]
    await flow.query(world.call(dataclasses.replace(request, request_id="req-0003")))
    assert len(reads) == 1  # still open: a hit, read from the cache
    await keep_case(store, closed, seq=2)
    with pytest.raises(Refusal) as caught:
        await flow.query(world.call(dataclasses.replace(request, request_id="req-0004")))
    assert caught.value.reason == "CASE_NOT_OPEN"
    assert len(reads) == 1  # refused before the cache was read
    assert len(world.peer.asked) == 1
    assert world.requester.records()[-1].reason == "CASE_NOT_OPEN"


# -- the shared state in one round trip (issue 20) ---------------------------------------------
class CountedChecks:
    """The flow's checks one after the other (`SequentialChecks`), each call to it recorded: a
    gateway with Redis makes each such call one round trip (`OneTrip`)."""

    def __init__(self, backends: Any) -> None:
        self.checks = SequentialChecks(backends.replay, backends.quota)
        self.asked: list[Wanted] = []

    async def check(self, wanted: Wanted, cache: Any, *, now: Any) -> Checked:
        self.asked.append(wanted)
        return await self.checks.check(wanted, cache, now=now)


async def test_the_shared_state_is_asked_once_per_query_on_each_gateway(world: World) -> None:
    asks, owner_asks = CountedChecks(world.requester), CountedChecks(world.owner)
    world.owner_flow = owner_flow(
        world.fed,
        world.owner,
        data_system=DataSystem(subjects=(ZJ_AMR_USCC,)),
        checks=owner_asks,
    )
    flow = requester_flow(
        world.requester, world.peer, world.registry, reporter=_reporter(world), checks=asks
    )
    first = await flow.query(world.call(_licence(1), agency="sc.amr"))
    second = await flow.query(world.call(_licence(2), agency="sc.amr"))
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert len(asks.asked) == 2  # one per query: replay, quota and the kept answer together
    assert all(w.replay and w.quota and w.cache for w in asks.asked)
    assert asks.asked[0].replay == ("sc.amr", "licence-1")
    (owner_ask,) = owner_asks.asked  # the owner: its quota and its cache, together
    assert (owner_ask.replay, owner_ask.quota) == (None, ("owner:LICENCE-ZJ-2026", 1200))
    assert owner_ask.cache is not None


async def test_a_refused_request_uses_up_its_id_and_a_repeat_is_refused_as_one(
    world: World,
) -> None:
    flow = world.flow()
    refused = si_request(fields=("bank_account",), request_id="once-only")
    with pytest.raises(Refusal) as caught:
        await flow.query(world.call(refused))
    assert caught.value.reason == "FIELD_NOT_ALLOWED"
    for repeat in (refused, si_request(request_id="once-only")):  # refused, then allowed
        with pytest.raises(Refusal) as caught:
            await flow.query(world.call(repeat))
        assert caught.value.reason == "REQUEST_REPLAYED"  # the replay wins, as (2) comes first
    assert world.requester.quota._counts == {}  # a refused request counts nothing
    assert not world.peer.asked
