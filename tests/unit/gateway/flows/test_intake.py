"""The intake of access reports (`gateway.flows.ReportIntake`) with in-memory backends: the
owner (330000) gave Sichuan's gateway a licence answer (cache_scope "requester"); Sichuan
reports the hits it answered from its own copy. Each refusal, and the records made."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from flow_support import (
    NOW,
    OWNER,
    REQUESTER,
    Backends,
    DataSystem,
    Store,
    agency_caller,
    audit_key,
    gateway_caller,
    owner_flow,
    si_request,
    signed_call,
)
from support import Federation

from gateway import rpcs
from gateway.audit import AuditUnavailable, Outcome
from gateway.errors import Refusal
from gateway.flows import ForwardCall, Forwarded, IntakeCall, ReportIntake
from gateway.reports import MAX_REPORTS_PER_BATCH, AccessReport, batch_payload, sign_batch
from registry import KeyState, KeyUsage, Registry
from signer import canonical_json, load_private_key

USCC = "11330000171521337R"


class World:
    def __init__(self, fed: Federation, registry: Registry) -> None:
        self.fed = fed
        self.registry = registry
        self.backends = Backends(OWNER, Store(registry))
        self.owner = owner_flow(fed, self.backends, data_system=DataSystem(subjects=(USCC,)))

    def intake(self) -> ReportIntake:
        return ReportIntake(region=OWNER, gatekeeper=self.backends.gate, trail=self.backends.trail)

    async def answer(self) -> Forwarded:
        """The owner's answer to Sichuan's market regulator, as the reports name it."""
        request = si_request(
            dataset="market.business_licence",
            purpose="LICENCE-VERIFY",
            subject_id=USCC,
            case_id="",
        )
        return await self.owner.forward(
            signed_call(
                self.fed,
                ForwardCall(
                    caller=gateway_caller(REQUESTER),
                    requesting_region=REQUESTER,
                    agency_id="sc.amr",
                    operator="经办人 张三",
                    request=request,
                    time_remaining=lambda: None,
                ),
            )
        )

    def report(self, answer: Forwarded, **changes: Any) -> AccessReport:
        made = AccessReport(
            request_id="hit-1",
            caller_agency="sc.amr",
            caller_region=REQUESTER,
            caller_operator="经办人 张三",
            caller_thumbprint="t" * 43,
            dataset="market.business_licence",
            purpose="LICENCE-VERIFY",
            case_id="",
            subject_pseudonym=answer.subject_pseudonym,
            fields=answer.fields,
            accessed_at=NOW + timedelta(seconds=30),
            sealed_digest=hashlib.sha256(answer.record.jws.encode()).hexdigest(),
            answer_audit_id=answer.audit_id,
        )
        return dataclasses.replace(made, **changes)

    def call(
        self,
        reports: list[AccessReport],
        *,
        signer: str = REQUESTER,
        caller: Any = None,
        sent: list[AccessReport] | None = None,
        sent_count: int | None = None,
    ) -> IntakeCall:
        (record,) = self.fed.inventory().find(signer, KeyUsage.AUDIT, KeyState.ACTIVE)
        key = load_private_key(self.fed.pki / record.private_key)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        payload = batch_payload(
            reporting_region=REQUESTER,
            owner_region=OWNER,
            batch_id="batch-1",
            issued_at=NOW,
            reports=reports,
        )
        beside = reports if sent is None else sent
        return IntakeCall(
            caller=caller or gateway_caller(REQUESTER),
            reporting_region=REQUESTER,
            jws=sign_batch(payload, key, record.kid),
            sent_count=len(beside) if sent_count is None else sent_count,
            sent=tuple(r.document() for r in beside),
        )


@pytest.fixture
def world(fed: Federation, registry: Registry) -> World:
    return World(fed, registry)


async def test_reported_hits_are_recorded_once_at_their_time(world: World) -> None:
    answer = await world.answer()
    reports = [world.report(answer), world.report(answer, request_id="hit-2")]
    ids = await world.intake().report_access(world.call(reports))
    again = await world.intake().report_access(world.call(reports))  # a retry: named again
    assert again == ids
    forward, *recorded = world.backends.records()
    assert forward.rpc == rpcs.FORWARD
    assert [(r.rpc, r.outcome, r.cache_hit, r.request_id) for r in recorded] == [
        (rpcs.REPORT_ACCESS, Outcome.ALLOWED, True, "hit-1"),
        (rpcs.REPORT_ACCESS, Outcome.ALLOWED, True, "hit-2"),
    ]
    assert all(r.time == NOW + timedelta(seconds=30) for r in recorded)
    assert all(r.subject == answer.subject_pseudonym for r in recorded)


Setup = Callable[[World, Forwarded], IntakeCall]


def _one(**changes: Any) -> Setup:
    return lambda w, a: w.call([w.report(a, **changes)])


def _stale(w: World, a: Forwarded) -> IntakeCall:
    w.backends.registry.stale = True
    return w.call([w.report(a)])


def _log_unreadable(w: World, a: Forwarded) -> IntakeCall:
    async def query(*_args: Any) -> Any:
        raise AuditUnavailable("the audit store does not answer")

    w.backends.audit_store.query = query  # type: ignore[method-assign]
    return w.call([w.report(a)])


def _store_down(w: World, a: Forwarded) -> IntakeCall:
    w.backends.audit_store.available = False
    return w.call([w.report(a)])


# (setup, reason, status code, the refused report's index or None for the whole batch)
REFUSALS: dict[str, tuple[Setup, str, grpc.StatusCode, int | None]] = {
    "caller is an agency": (
        lambda w, a: w.call([w.report(a)], caller=agency_caller(w.fed, "sc.amr")),
        "NOT_AUTHORISED_ROLE",
        grpc.StatusCode.PERMISSION_DENIED,
        None,
    ),
    "too many reports": (
        lambda w, a: w.call([w.report(a)], sent_count=MAX_REPORTS_PER_BATCH + 1),
        "REQUEST_TOO_LARGE",
        grpc.StatusCode.INVALID_ARGUMENT,
        None,
    ),
    "no current registry": (_stale, "REGISTRY_STALE", grpc.StatusCode.UNAVAILABLE, None),
    "signed by another region": (
        lambda w, a: w.call([w.report(a)], signer="500000"),
        "REPORT_SIGNATURE_INVALID",
        grpc.StatusCode.UNAUTHENTICATED,
        None,
    ),
    "reports beside the batch differ": (
        lambda w, a: w.call([w.report(a)], sent=[w.report(a, request_id="other")]),
        "REPORT_PAYLOAD_MISMATCH",
        grpc.StatusCode.INVALID_ARGUMENT,
        None,
    ),
    "agency of another region": (
        _one(caller_agency="cq.amr", caller_region="500000"),
        "NOT_AUTHORISED_ROLE",
        grpc.StatusCode.PERMISSION_DENIED,
        0,
    ),
    "agency not of the reporting region": (
        _one(caller_agency="zj.amr"),
        "NOT_AUTHORISED_ROLE",
        grpc.StatusCode.PERMISSION_DENIED,
        0,
    ),
    "access in the future": (
        _one(accessed_at=NOW + timedelta(hours=1)),
        "INVALID_ARGUMENT_FORMAT",
        grpc.StatusCode.INVALID_ARGUMENT,
        0,
    ),
    "unknown dataset": (
        _one(dataset="market.nothing"),
        "UNKNOWN_DATASET",
        grpc.StatusCode.INVALID_ARGUMENT,
        0,
    ),
    "dataset cached by its owner only": (
        _one(dataset="si.participation"),
        "CACHE_NOT_ALLOWED",
        grpc.StatusCode.PERMISSION_DENIED,
        0,
    ),
    "purpose not approved": (
        _one(purpose="SI-TRANSFER"),
        "PURPOSE_NOT_APPROVED",
        grpc.StatusCode.PERMISSION_DENIED,
        0,
    ),
    "no such answer given": (
        _one(sealed_digest="0" * 64),
        "REPORT_ANSWER_UNKNOWN",
        grpc.StatusCode.PERMISSION_DENIED,
        0,
    ),
    "the log cannot be read": (
        _log_unreadable,
        "AUDIT_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        0,
    ),
    "the records cannot be made": (
        _store_down,
        "AUDIT_UNAVAILABLE",
        grpc.StatusCode.UNAVAILABLE,
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_each_refusal_refuses_the_batch_with_its_reason(world: World, case: str) -> None:
    answer = await world.answer()
    setup, reason, code, index = REFUSALS[case]
    call = setup(world, answer)
    with pytest.raises(Refusal) as caught:
        await world.intake().report_access(call)
    assert (caught.value.reason, caught.value.code) == (reason, code)
    assert caught.value.metadata.get("index") == (None if index is None else str(index))
    forward, *refused = world.backends.records()
    assert forward.rpc == rpcs.FORWARD
    if case == "the records cannot be made":
        assert not refused  # the store is down: no record, the refusal's own neither
        return
    (record,) = refused
    assert (record.rpc, record.reason) == (rpcs.REPORT_ACCESS, reason)
    assert record.outcome in (Outcome.DENIED, Outcome.FAILED)


@pytest.mark.parametrize(
    ("first", "second", "reason"),
    [
        ({"sealed_digest": "0" * 64}, {"dataset": "market.nothing"}, "REPORT_ANSWER_UNKNOWN"),
        ({"dataset": "market.nothing"}, {"sealed_digest": "0" * 64}, "UNKNOWN_DATASET"),
        ({}, {"purpose": "SI-TRANSFER"}, "PURPOSE_NOT_APPROVED"),
        ({}, {"sealed_digest": "0" * 64}, "REPORT_ANSWER_UNKNOWN"),
    ],
)
async def test_the_first_refused_report_in_order_refuses_the_batch(
    world: World, first: dict[str, Any], second: dict[str, Any], reason: str
) -> None:
    """The form of every report is checked before the log is read once for the batch; still
    the refusal is the first refused report's, whichever check refused it."""
    answer = await world.answer()
    reports = [
        world.report(answer, request_id="hit-1", **first),
        world.report(answer, request_id="hit-2", **second),
    ]
    with pytest.raises(Refusal) as caught:
        await world.intake().report_access(world.call(reports))
    index = "0" if first else "1"
    assert (caught.value.reason, caught.value.metadata["index"]) == (reason, index)
    assert [r.reason for r in world.backends.records()[1:]] == [reason]


async def test_a_batch_of_one_answer_is_recorded_and_retried_in_part(world: World) -> None:
    """Many reports of one answer (one decision, one read of the answer, one read for the
    records already made): each recorded once; a batch mixing a retried report with new ones
    names the old record and records the new ones only."""
    answer = await world.answer()
    reports = [
        world.report(
            answer, request_id=f"hit-{i}", accessed_at=NOW + timedelta(seconds=30, microseconds=i)
        )
        for i in range(60)
    ]
    reports.append(world.report(answer, request_id="hit-0"))  # report 0 again, in the same batch
    ids = await world.intake().report_access(world.call(reports[:40]))
    assert len(set(ids)) == 40
    again = await world.intake().report_access(world.call(reports[30:]))
    assert again[:10] == ids[30:]
    assert len(set(again[10:-1]) | set(ids)) == 40 + 20
    assert again[-1] == ids[0]  # the same report: its record is named
    recorded = world.backends.records()[1:]
    assert [r.request_id for r in recorded] == [r.request_id for r in reports[:-1]]
    assert [r.time for r in recorded] == [r.accessed_at for r in reports[:-1]]


async def test_a_time_signed_in_another_form_still_matches_the_report_sent(world: World) -> None:
    """The sent reports are compared with the signed objects first; a time signed in another
    form than the one a report's document writes (fewer digits of the second) still matches
    the same report sent beside it, as parsed."""
    answer = await world.answer()
    made = world.report(answer, accessed_at=NOW + timedelta(seconds=30, microseconds=500000))
    call = world.call([made])
    key, kid = audit_key(world.fed)
    document = json.loads(
        batch_payload(
            reporting_region=REQUESTER,
            owner_region=OWNER,
            batch_id="batch-1",
            issued_at=NOW,
            reports=[made],
        )
    )
    signed_time = document["reports"][0]["accessed_at"]
    document["reports"][0]["accessed_at"] = signed_time.replace(".500000Z", ".5Z")
    assert document["reports"][0]["accessed_at"] != signed_time
    call = dataclasses.replace(call, jws=sign_batch(canonical_json(document), key, kid))
    (recorded,) = await world.intake().report_access(call)
    assert world.backends.records()[-1].time == made.accessed_at
    assert (recorded,) == await world.intake().report_access(call)  # a retry: named again
