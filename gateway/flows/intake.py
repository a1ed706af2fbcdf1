"""The owner gateway's intake of access reports (Peer.ReportAccess): the accesses a requesting
gateway answered from its own cache (cache_scope "requester").

    (1) the caller is the gateway of `reporting_region` (its peer certificate)
    (2) the batch is a JWS by an audit key the registry publishes for that region, about
        accesses to this region's data (`verify_batch`); the reports sent beside it are
        exactly the ones it signs
    (3) each report: the agency is one of the reporting region's; the dataset is this
        region's and its owner lets requesting gateways keep its answers (cache_scope
        "requester"); the policy allows the access again, with this gateway's registry, at
        the time it was made; and the record its `answer_audit_id` names is this gateway's
        answer to that region (same sealed digest, subject, dataset, purpose and fields)
        at most the dataset's TTL before the access; or this report was recorded already
        (a retry: its record is named again)
    (4) one audit record per new report (rpc Peer.ReportAccess, allowed, cache hit, at the
        time of the access, under this gateway's own pseudonym of the subject, with the digest
        of the signed batch), durable before the answer, which names the records in report
        order
A refused report refuses the whole batch, names itself in the ErrorInfo metadata ("index")
and is recorded as denied; the reporting gateway drops it and sends the others again, which is
why nothing is recorded before every report passed (3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Final

from gateway import rpcs
from gateway.audit import (
    AuditError,
    AuditQuery,
    AuditRecord,
    AuditUnavailable,
    Outcome,
    audit_id,
    parse_audit_id,
    request_digest,
)
from gateway.errors import Refusal
from gateway.flows._common import AuditTrail, Gatekeeper, gateway_of
from gateway.flows._model import AuditContext, IntakeCall
from gateway.policy import DataRequest, Decision, SubjectKind, subject_kind
from gateway.reports import MAX_REPORTS_PER_BATCH, AccessReport, BatchRefused, verify_batch
from registry import CacheScope, Dataset, Registry

__all__ = ["REPORT_CLOCK_SKEW", "ReportIntake"]

log = logging.getLogger("tongban.exchange")

REPORT_CLOCK_SKEW: Final = timedelta(minutes=5)  # between a reporting gateway's clock and ours
# A valid GB 11643 number (the standard's own example): stands in for the subject when a
# reported access is decided again, since a report carries only the subject's pseudonym.
_SAMPLE_CITIZEN_ID: Final = "11010519491231002X"


def _placeholder_subject(registry: Registry, dataset: Dataset) -> str:
    """A subject id of the dataset's kind, valid by construction, for deciding a reported
    access again: a report carries the subject's pseudonym only, and the subject id's own
    format was checked when the answer was given (Peer.Forward, on this gateway)."""
    kind = subject_kind(dataset)
    if kind == SubjectKind.USCC:
        owner = registry.agency(dataset.owner)
        return owner.uscc if owner is not None else ""
    if kind == SubjectKind.CITIZEN_ID:
        return _SAMPLE_CITIZEN_ID
    return "reported-subject"


def _batch_request(region: str, request_id: str) -> DataRequest:
    return DataRequest(
        provider_region=region,
        dataset="",
        purpose="",
        subject_id="",
        fields=(),
        case_id="",
        request_id=request_id,
    )


class ReportIntake:
    """The owner gateway's intake of access reports (see the module docstring)."""

    def __init__(self, *, region: str, gatekeeper: Gatekeeper, trail: AuditTrail) -> None:
        self.region = region
        self._gate = gatekeeper
        self._trail = trail

    async def report_access(self, call: IntakeCall) -> tuple[str, ...]:
        """The audit ids of the reported accesses' records, in report order."""
        started = time.perf_counter()
        audit = AuditContext(
            rpc=rpcs.REPORT_ACCESS,
            caller_agency="",
            caller_operator="",
            caller_region=call.caller.region if call.caller is not None else "",
            request=_batch_request(self.region, ""),
            started=started,
        )
        try:
            # (1)
            caller = gateway_of(
                call.caller,
                call.reporting_region,
                "the reporting region reports the accesses it answered",
            )
            if call.sent_count > MAX_REPORTS_PER_BATCH:
                raise Refusal(
                    "REQUEST_TOO_LARGE",
                    f"a batch holds at most {MAX_REPORTS_PER_BATCH} reports",
                )
            registry = self._gate.current()
            audit = replace(audit, registry_version=registry.version)
            now = self._trail.clock()
            # (2)
            reports, batch_id = self._verified(call, registry, caller.region, now)
            audit = replace(  # each report's record names the signed batch it came in
                audit,
                request=_batch_request(self.region, batch_id),
                request_digest=request_digest(call.jws),
            )
            if call.sent_count and list(call.sent) != [r.document() for r in reports]:
                raise Refusal(
                    "REPORT_PAYLOAD_MISMATCH",
                    "the reports sent beside the JWS are not the ones it signs",
                )
        except Refusal as refusal:
            raise await self._trail.refused(refusal, audit) from None
        # (3)
        checked = await self._check_all(registry, caller.region, reports, now, audit)
        # (4)
        return await self._record_all(checked)

    def _verified(
        self, call: IntakeCall, registry: Registry, region: str, now: datetime
    ) -> tuple[tuple[AccessReport, ...], str]:
        """(2): the batch's reports and its id, once its signature and form are checked."""
        try:
            batch = verify_batch(
                call.jws,
                registry=registry,
                reporting_region=region,
                owner_region=self.region,
                now=now,
            )
        except BatchRefused as exc:
            raise Refusal(
                exc.reason,
                exc.message,
                metadata={"index": str(exc.index)} if exc.index is not None else None,
            ) from exc
        return tuple(batch.reports), batch.batch_id

    def _report_audit(self, base: AuditContext, report: AccessReport) -> AuditContext:
        return replace(
            base,
            caller_agency=report.caller_agency,
            caller_operator=report.caller_operator,
            request=DataRequest(
                provider_region=self.region,
                dataset=report.dataset,
                purpose=report.purpose,
                subject_id="",
                fields=report.fields,
                case_id=report.case_id,
                request_id=report.request_id,
            ),
            subject=report.subject_pseudonym,
            sealed_digest=report.sealed_digest,
            at=report.accessed_at,
        )

    async def _check_all(
        self,
        registry: Registry,
        region: str,
        reports: tuple[AccessReport, ...],
        now: datetime,
        base: AuditContext,
    ) -> list[tuple[AccessReport, str | None, AuditContext]]:
        """(3): each report checked concurrently (each reads the log); the first refused, in
        report order, refuses the batch."""
        outcomes = await asyncio.gather(
            *(self._check_report(registry, region, r, now) for r in reports),
            return_exceptions=True,
        )
        checked: list[tuple[AccessReport, str | None, AuditContext]] = []
        for index, (report, outcome) in enumerate(zip(reports, outcomes, strict=True)):
            audit = self._report_audit(base, report)
            if isinstance(outcome, Refusal):
                outcome.metadata["index"] = str(index)
                raise await self._trail.refused(outcome, audit) from None
            if isinstance(outcome, BaseException):
                raise outcome
            decision, existing = outcome
            checked.append((report, existing, replace(audit, agreement_id=decision.agreement_id)))
        return checked

    async def _record_all(
        self, checked: list[tuple[AccessReport, str | None, AuditContext]]
    ) -> tuple[str, ...]:
        """(4): a record per new report, durable before the answer; a retried one named again."""

        async def record(report: AccessReport, existing: str | None, audit: AuditContext) -> str:
            if existing is not None:
                return existing
            return await self._trail.record(
                audit, Outcome.ALLOWED, fields=report.fields, cache_hit=True
            )

        try:
            audit_ids = await asyncio.gather(*(record(*entry) for entry in checked))
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the reports were not recorded: {exc}",
                audited=True,
            ) from exc
        return tuple(audit_ids)

    async def _check_report(
        self, registry: Registry, reporting_region: str, report: AccessReport, now: datetime
    ) -> tuple[Decision, str | None]:
        """The decision that allows a reported access, and the audit id of its record if it
        was already recorded; or the Refusal that says why it is not accepted."""
        if report.caller_region != reporting_region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"gateway {reporting_region} reports an access by an agency of another region",
            )
        if report.accessed_at > now + REPORT_CLOCK_SKEW:
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "the report's accessed_at is in the future",
            )
        dataset = registry.dataset(self.region, report.dataset)
        if dataset is None:
            raise Refusal(
                "UNKNOWN_DATASET",
                f"region {self.region} publishes no dataset {report.dataset}",
            )
        if dataset.cache_scope is not CacheScope.REQUESTER:
            raise Refusal(
                "CACHE_NOT_ALLOWED",
                f"dataset {dataset.id} of region {self.region} is cached by its owner only "
                "(cache_scope provider): no requesting gateway may answer it from its own cache",
            )
        decision = self._decide_again(registry, reporting_region, report, dataset)
        try:
            existing = await self._reported(reporting_region, report)
            if existing is None and not await self._answered(reporting_region, report, dataset):
                raise Refusal(
                    "REPORT_ANSWER_UNKNOWN",
                    f"region {self.region} gave region {reporting_region} no answer with this "
                    f"digest for this subject, dataset {dataset.id}, purpose {report.purpose} and "
                    f"these fields within {dataset.cache_ttl_seconds}s before the access",
                )
        except AuditError as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the audit log cannot be read: {exc}",
            ) from exc
        return decision, existing

    def _decide_again(
        self, registry: Registry, reporting_region: str, report: AccessReport, dataset: Dataset
    ) -> Decision:
        """The policy's decision on the reported access, at the time it was made."""
        agency = registry.agency(report.caller_agency)
        if agency is None or agency.region != reporting_region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"agency {report.caller_agency} is not an agency of region {reporting_region}",
            )
        decision = self._gate.policy.decide(
            registry,
            requester=agency,
            request=DataRequest(
                provider_region=self.region,
                dataset=report.dataset,
                purpose=report.purpose,
                subject_id=_placeholder_subject(registry, dataset),
                fields=report.fields,
                case_id=report.case_id,
                request_id=report.request_id,
            ),
            at=report.accessed_at,
        )
        if not decision.allowed:
            raise Refusal(decision.reason, decision.message)
        return decision

    async def _reported(self, reporting_region: str, report: AccessReport) -> str | None:
        """The audit id of this gateway's record of `report`, if it recorded it already."""
        query = AuditQuery(
            subject=report.subject_pseudonym,
            caller_agency=report.caller_agency,
            dataset=report.dataset,
            outcome=Outcome.ALLOWED,
            since=report.accessed_at,
            until=report.accessed_at + timedelta(microseconds=1),
            limit=100,
        )
        log_ = self._trail.log
        found = await log_.read(lambda: log_.store.query(query))
        for index, record in found:
            if (
                rpcs.made_by(record.rpc, rpcs.REPORT_ACCESS)
                and record.caller_region == reporting_region
                and record.provider_region == self.region
                and record.request_id == report.request_id
                and record.sealed_digest == report.sealed_digest
            ):
                return audit_id(log_.origin, index)
        return None

    async def _answered(
        self, reporting_region: str, report: AccessReport, dataset: Dataset
    ) -> bool:
        """Is the record `report.answer_audit_id` names this gateway's allowed Peer.Forward of
        the reported answer (same subject, dataset, purpose, fields and sealed digest) to
        `reporting_region`, at most the dataset's TTL (and the clocks' skew) before the access?
        One read of the log, whatever the subject's history."""
        log_ = self._trail.log
        named = parse_audit_id(report.answer_audit_id)
        if named is None or named[0] != log_.origin:
            return False
        index = named[1]
        rows = await log_.read(lambda: log_.store.rows(index, index + 1))
        if not rows:
            return False
        try:
            record = AuditRecord.from_canonical(rows[0].canonical)
        except (ValueError, KeyError, TypeError):
            log.warning("audit record %s is not canonical: verify the log", report.answer_audit_id)
            return False
        earliest = (
            report.accessed_at - timedelta(seconds=dataset.cache_ttl_seconds) - REPORT_CLOCK_SKEW
        )
        return (
            rpcs.made_by(record.rpc, rpcs.FORWARD)
            and record.outcome is Outcome.ALLOWED
            and record.caller_region == reporting_region
            and record.provider_region == self.region
            and record.subject == report.subject_pseudonym
            and record.dataset == report.dataset
            and record.purpose == report.purpose
            and record.sealed_digest == report.sealed_digest
            and tuple(record.fields) == report.fields
            and earliest <= record.time <= report.accessed_at + REPORT_CLOCK_SKEW
        )
