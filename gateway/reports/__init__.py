"""Access reports: the hits a requesting gateway answered from its own cache, told to the owner.

A dataset whose owner chose `cache_scope = "requester"` may be answered by a requesting
gateway from its own cache, for the dataset's TTL, after its own full decision: one gRPC leg
instead of three. The owner then never sees that access, so the requesting gateway reports it:
each hit is queued here before the answer is released, and a background `AccessReporter` sends
the queue to each owner in signed batches (`Peer.ReportAccess`), which the owner records in its
own audit log (so that its oversight and the citizen's data tracker see every access).

Batch format `tongban.access-report/v1`: a compact JWS (RFC 7515) signed with the reporting
gateway's audit key (Ed25519, `alg` EdDSA; header `typ` REPORT_TYPE, `x5t#S256` and `kid` the
key's id in the registry), whose payload is the canonical JSON (keys sorted, no white space,
UTF-8) of::

    {"v": 1, "reporting_region": "510000", "owner_region": "330000",
     "batch_id": "<random hex>", "issued_at": "2026-11-21T08:00:00.123456Z",
     "reports": [{"request_id", "caller": {"agency_id", "region", "operator",
                  "certificate_thumbprint"}, "dataset", "purpose", "case_id",
                  "subject_pseudonym", "fields" (sorted), "accessed_at", "sealed_digest",
                  "answer_audit_id"}]}

`subject_pseudonym` is the *owner's* pseudonym of the subject, which the owner's gateway gave
with the answer (`ForwardResponse.subject_pseudonym`): regions need not share a pseudonym key.
`answer_audit_id` is the owner's audit id of that answer (`ForwardResponse.audit_id`), by which
the owner finds the answer a report rests on in one read of its log.

The outbox is the requesting gateway's own audit log: a hit is answered from the cache only
once its audit record is durable, and the record carries the hit's report for the owner
(`AuditLog.append(record, Outbound)`, one transaction). The `AccessReporter` reads the reports
the log holds for each owner past that owner's durable cursor, sends them, and moves the cursor
only once the owner acknowledged them, i.e. made them durable in its own log. Neither Redis nor
the requesting process is then part of what must survive: a gateway that dies (or a Redis that
loses everything) loses no report, and the next start on the same log sends what was waiting.
Delivery is at least once (a crash between the owner's acknowledgement and the cursor's move, or
two replicas sharing one PostgreSQL log, sends a batch twice); the owner recognises a report it
already recorded (same request, caller, digest and access time) and answers with the same audit
id, so a retry never records an access twice.
"""

from gateway.reports._format import (
    BATCH_VERSION,
    MAX_BATCH_JWS_BYTES,
    MAX_REPORTS_PER_BATCH,
    REPORT_TYPE,
    AccessReport,
    BatchRefused,
    ReportFormatError,
    SignedBatch,
    batch_payload,
    sign_batch,
    verify_batch,
)
from gateway.reports._reporter import (
    FLUSH_SECONDS,
    MAX_BACKLOG,
    AccessReporter,
    ReporterCounters,
)

__all__ = [
    "BATCH_VERSION",
    "FLUSH_SECONDS",
    "MAX_BACKLOG",
    "MAX_BATCH_JWS_BYTES",
    "MAX_REPORTS_PER_BATCH",
    "REPORT_TYPE",
    "AccessReport",
    "AccessReporter",
    "BatchRefused",
    "ReportFormatError",
    "ReporterCounters",
    "SignedBatch",
    "batch_payload",
    "sign_batch",
    "verify_batch",
]
