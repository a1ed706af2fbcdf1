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

import functools
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
from gateway.policy import (
    DataRequest,
    Decision,
    PolicyInputError,
    SubjectKind,
    check_request,
    subject_kind,
)
from gateway.reports import (
    MAX_REPORTS_PER_BATCH,
    AccessReport,
    BatchRefused,
    SignedBatch,
    verify_batch,
)
from registry import CacheScope, Dataset, Registry

__all__ = ["REPORT_CLOCK_SKEW", "ReportIntake"]

log = logging.getLogger("tongban.exchange")

REPORT_CLOCK_SKEW: Final = timedelta(minutes=5)
_READ_PAGE: Final = 500  # records per read of the log when looking for a batch's records  # between a reporting gateway's clock and ours
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
            batch = self._verified(call, registry, caller.region, now)
            reports = batch.reports
            audit = replace(  # each report's record names the signed batch it came in
                audit,
                request=_batch_request(self.region, batch.batch_id),
                request_digest=request_digest(call.jws),
            )
            # The signed objects themselves first (equal: the same reports); else as parsed,
            # since a time may be signed in another form than the one `document()` writes.
            if (
                call.sent_count
                and list(call.sent) != list(batch.documents)
                and list(call.sent) != [r.document() for r in reports]
            ):
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
    ) -> SignedBatch:
        """(2): the batch, once its signature and form are checked. The reports sent beside it
        were parsed and checked already (`IntakeCall.sent`): a signed report equal to its sent
        one is not checked a second time."""
        try:
            return verify_batch(
                call.jws,
                registry=registry,
                reporting_region=region,
                owner_region=self.region,
                now=now,
                known=call.sent,
            )
        except BatchRefused as exc:
            raise Refusal(
                exc.reason,
                exc.message,
                metadata={"index": str(exc.index)} if exc.index is not None else None,
            ) from exc

    def _report_audit(
        self, base: AuditContext, report: AccessReport, agreement_id: str
    ) -> AuditContext:
        return replace(
            base,
            agreement_id=agreement_id,
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
        """(3): the form and policy of each report, then the log read once for the batch (the
        records already made of these reports, the answers they name); the first refused, in
        report order, refuses the batch."""
        decisions: dict[tuple[object, ...], Decision] = {}
        outcomes: list[Decision | Refusal] = []
        for report in reports:
            try:
                outcomes.append(self._check_form(registry, region, report, now, decisions))
            except Refusal as refusal:
                outcomes.append(refusal)
                break  # the reports after it cannot change what is refused
        passed = tuple(
            r for r, o in zip(reports, outcomes, strict=False) if isinstance(o, Decision)
        )
        existing: dict[int, str] = {}
        answered: dict[int, bool] = {}
        try:  # the reports before the first refused one: they were all checked
            existing, answered = await self._read_log(registry, region, passed)
        except AuditError as exc:
            unreadable = Refusal("AUDIT_UNAVAILABLE", f"the audit log cannot be read: {exc}")
            outcomes = [o if isinstance(o, Refusal) else unreadable for o in outcomes]
        checked: list[tuple[AccessReport, str | None, AuditContext]] = []
        for index, (report, checked_form) in enumerate(zip(reports, outcomes, strict=False)):
            outcome = checked_form
            dataset = registry.dataset(self.region, report.dataset)
            if isinstance(outcome, Decision) and dataset is not None and not answered[index]:
                outcome = Refusal(
                    "REPORT_ANSWER_UNKNOWN",
                    f"region {self.region} gave region {region} no answer with this "
                    f"digest for this subject, dataset {dataset.id}, purpose {report.purpose} and "
                    f"these fields within {dataset.cache_ttl_seconds}s before the access",
                )
            if isinstance(outcome, Refusal):
                outcome.metadata["index"] = str(index)
                audit = self._report_audit(base, report, base.agreement_id)
                raise await self._trail.refused(outcome, audit) from None
            audit = self._report_audit(base, report, outcome.agreement_id)
            checked.append((report, existing.get(index), audit))
        return checked

    async def _record_all(
        self, checked: list[tuple[AccessReport, str | None, AuditContext]]
    ) -> tuple[str, ...]:
        """(4): a record per new report, durable before the answer (one batch of appends); a
        retried one named again."""
        new = [(audit, report.fields) for report, existing, audit in checked if existing is None]
        try:
            made = iter(await self._trail.record_all(new, cache_hit=True))
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the reports were not recorded: {exc}",
                audited=True,
            ) from exc
        return tuple(existing if existing is not None else next(made) for _, existing, _ in checked)

    def _check_form(
        self,
        registry: Registry,
        reporting_region: str,
        report: AccessReport,
        now: datetime,
        decisions: dict[tuple[object, ...], Decision],
    ) -> Decision:
        """The decision that allows a reported access, before the log is read; or the Refusal
        that says why it is not accepted. `decisions`: the batch's, by what they depend on."""
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
        return self._decide_again(registry, reporting_region, report, dataset, decisions)

    async def _read_log(
        self, registry: Registry, reporting_region: str, reports: tuple[AccessReport, ...]
    ) -> tuple[dict[int, str], dict[int, bool]]:
        """One pass over the log for the batch: the audit id of each report's record if it was
        recorded already (by report position), and whether each report names this gateway's
        answer (`_answered`). Reports about one subject, agency and dataset share a read, and
        reports naming one answer share its row."""
        existing = await self._reported(reporting_region, reports)
        rows: dict[str, AuditRecord | None] = {}
        answered: dict[int, bool] = {}
        for index, report in enumerate(reports):
            if index in existing:
                answered[index] = True  # a retry: recorded once its answer was checked
                continue
            if report.answer_audit_id not in rows:
                rows[report.answer_audit_id] = await self._answer_record(report.answer_audit_id)
            dataset = registry.dataset(self.region, report.dataset)
            record = rows[report.answer_audit_id]
            answered[index] = (
                dataset is not None
                and record is not None
                and self._answers(record, reporting_region, report, dataset)
            )
        return existing, answered

    def _decide_again(
        self,
        registry: Registry,
        reporting_region: str,
        report: AccessReport,
        dataset: Dataset,
        decisions: dict[tuple[object, ...], Decision],
    ) -> Decision:
        """The policy's decision on the reported access, at the time it was made. The time
        matters only through which agreements are in force then: an allowing decision is
        reused for the batch's reports that differ from it only in their time (with the same
        agreements in force), request id and case id (both checked for each report)."""
        agency = registry.agency(report.caller_agency)
        if agency is None or agency.region != reporting_region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"agency {report.caller_agency} is not an agency of region {reporting_region}",
            )
        request = DataRequest(
            provider_region=self.region,
            dataset=report.dataset,
            purpose=report.purpose,
            subject_id=_placeholder_subject(registry, dataset),
            fields=report.fields,
            case_id=report.case_id,
            request_id=report.request_id,
        )
        in_force = tuple(
            a.id for a in registry.agreements_for(self.region) if a.in_force(report.accessed_at)
        )
        key = (agency.id, report.dataset, report.purpose, report.fields, not report.case_id)
        decision = decisions.get((*key, in_force))
        if decision is not None:
            try:
                check_request(request)
            except PolicyInputError as exc:
                raise Refusal(exc.reason, exc.message) from None
            return decision
        decision = self._gate.policy.decide(
            registry, requester=agency, request=request, at=report.accessed_at
        )
        if not decision.allowed:
            raise Refusal(decision.reason, decision.message)
        decisions[(*key, in_force)] = decision
        return decision

    async def _reported(
        self, reporting_region: str, reports: tuple[AccessReport, ...]
    ) -> dict[int, str]:
        """The audit id of this gateway's record of each report it recorded already, by the
        report's position: one read (paged) per subject, agency and dataset of the batch, over
        the times of its reports."""
        groups: dict[tuple[str, str, str], list[int]] = {}
        for index, report in enumerate(reports):
            key = (report.subject_pseudonym, report.caller_agency, report.dataset)
            groups.setdefault(key, []).append(index)
        log_ = self._trail.log
        existing: dict[int, str] = {}
        for (subject, agency, dataset), indices in groups.items():
            wanted: dict[tuple[datetime, str, str], list[int]] = {}
            for index in indices:
                r = reports[index]
                wanted.setdefault((r.accessed_at, r.request_id, r.sealed_digest), []).append(index)
            times = [reports[index].accessed_at for index in indices]
            query = AuditQuery(
                subject=subject,
                caller_agency=agency,
                dataset=dataset,
                outcome=Outcome.ALLOWED,
                since=min(times),
                until=max(times) + timedelta(microseconds=1),
                limit=_READ_PAGE,
            )
            while True:
                found = await log_.read(functools.partial(log_.store.query, query))
                for at, record in found:
                    match = wanted.get((record.time, record.request_id, record.sealed_digest))
                    if (
                        match
                        and rpcs.made_by(record.rpc, rpcs.REPORT_ACCESS)
                        and record.caller_region == reporting_region
                        and record.provider_region == self.region
                    ):
                        for index in match:
                            existing.setdefault(index, audit_id(log_.origin, at))
                if len(found) < _READ_PAGE:
                    break
                query = replace(query, after_index=found[-1][0])
        return existing

    async def _answer_record(self, answer_audit_id: str) -> AuditRecord | None:
        """The record `answer_audit_id` names in this gateway's log, if there is one. One read of
        the log, whatever the subject's history."""
        log_ = self._trail.log
        named = parse_audit_id(answer_audit_id)
        if named is None or named[0] != log_.origin:
            return None
        index = named[1]
        rows = await log_.read(lambda: log_.store.rows(index, index + 1))
        if not rows:
            return None
        try:
            return AuditRecord.from_canonical(rows[0].canonical)
        except (ValueError, KeyError, TypeError):
            log.warning("audit record %s is not canonical: verify the log", answer_audit_id)
            return None

    def _answers(
        self, record: AuditRecord, reporting_region: str, report: AccessReport, dataset: Dataset
    ) -> bool:
        """Is `record` (the one `report.answer_audit_id` names) this gateway's allowed
        Peer.Forward of the reported answer (same subject, dataset, purpose, fields and sealed
        digest) to `reporting_region`, at most the dataset's TTL (and the clocks' skew) before
        the access?"""
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
