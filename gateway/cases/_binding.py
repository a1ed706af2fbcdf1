"""Cases bind data queries (issue 19): a query for a conditional (有条件共享) dataset names an open
case, and the gateway deciding it (the requesting region's, then the owner's again on its own
copy of the case) checks that the case allows it.

    (1) the case is held here (`CaseStore.summary`)                            CASE_NOT_OPEN
    (2) it is open (neither completed nor rejected)                            CASE_NOT_OPEN
    (3) a part of it is being handled (IN_PROGRESS or AWAITING_MATERIAL) by
        the asking agency of the asking region                                 CASE_NOT_OPEN
    (4) the subject is its applicant (this gateway's own pseudonym of the
        subject is the one its summary holds)                                  CASE_NOT_OPEN
    (5) the case's matter, in the registry the query is decided with, lists a
        query of this dataset and purpose whose fields include every field
        asked for                                                              CASE_QUERY_NOT_ALLOWED
    (6) the provider region has a part of the matter                           CASE_QUERY_NOT_ALLOWED

(1)-(4) are told alike, so that an agency learns nothing of a case it does not handle (not
even whether it exists). Messages name the case id, never the subject, the agency or the
dataset. A case store that cannot answer is AUDIT_UNAVAILABLE: it is the audit store.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.audit import AuditUnavailable, pseudonymize
from gateway.cases._model import CaseState
from gateway.cases._store import CaseStore, CaseSummary
from gateway.errors import Refusal
from registry import Registry

__all__ = ["CaseBinding"]


class CaseBinding:
    """The check of a query against the case it names (see the module docstring)."""

    def __init__(self, store: CaseStore, pseudonym_key: bytes) -> None:
        self.store = store
        self._pseudonym_key = pseudonym_key

    async def check(
        self,
        registry: Registry,
        *,
        case_id: str,
        agency: str,
        agency_region: str,
        subject_id: str,
        provider_region: str,
        dataset: str,
        purpose: str,
        fields: Iterable[str],
    ) -> None:
        """Return if the case allows the query; raise the Refusal that says why not."""
        # (1)
        summary = await self._summary(case_id)
        # (2) (3) (4)
        if (
            summary is None
            or summary.state != CaseState.OPEN.value
            or (agency_region, agency) not in summary.handling
            or summary.applicant != pseudonymize(subject_id, self._pseudonym_key)
        ):
            raise Refusal(
                "CASE_NOT_OPEN",
                f"case {case_id} is not open here with a part the asking agency handles for "
                "this subject: accept the case's part first, and name that case",
            )
        matter = registry.matter(summary.matter_code)
        asked = frozenset(fields)
        # (5)
        if matter is None or not any(
            q.dataset == dataset and q.purpose == purpose and asked <= frozenset(q.fields)
            for q in matter.queries
        ):
            raise Refusal(
                "CASE_QUERY_NOT_ALLOWED",
                f"the matter of case {case_id} does not allow this dataset, purpose and fields",
            )
        # (6)
        if provider_region not in {part.region for part in matter.parts}:
            raise Refusal(
                "CASE_QUERY_NOT_ALLOWED",
                f"the matter of case {case_id} has no part in the provider region",
            )

    async def _summary(self, case_id: str) -> CaseSummary | None:
        if not case_id:
            return None
        try:
            return await self.store.summary(case_id)
        except AuditUnavailable as exc:
            raise Refusal("AUDIT_UNAVAILABLE", f"the case store cannot be read: {exc}") from exc
