"""The metric set of a gateway: every metric's name, help, labels and buckets, defined on one
`CollectorRegistry`. What moves them (`observe_*`, the request path's counters) is
`GatewayMetrics`, in `_metrics`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "CACHE_RESULTS",
    "CERTIFICATE_LABELS",
    "GRPC_LATENCY_BUCKETS",
    "CertificateLabels",
    "HeldCertificates",
    "MetricDefinitions",
]

# 1 ms to 10 s: a cache hit answers in about a millisecond, a cross-region query with its
# provider call, seal and durable audit in tens to hundreds, a peer timing out in seconds.
GRPC_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CACHE_RESULTS = ("hit", "miss", "error", "bypassed")

_SERVER_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_CLIENT_LABELS = (*_SERVER_LABELS, "peer_region")

CertificateLabels = tuple[str, str, str]  # kid, usage, owner
CERTIFICATE_EXPIRY = "tongban_certificate_expiry_timestamp_seconds"
CERTIFICATE_EXPIRY_HELP = (
    "Not-after of every key certificate and region CA certificate the gateway trusts, "
    'Unix seconds (usage "ca" for a region CA, owner its region code).'
)
CERTIFICATE_NOT_BEFORE = "tongban_certificate_not_before_timestamp_seconds"
CERTIFICATE_NOT_BEFORE_HELP = (
    "Not-before of every key certificate and region CA certificate the gateway trusts, "
    "Unix seconds."
)
CERTIFICATE_LABELS = ("kid", "usage", "owner")


class HeldCertificates(Collector):
    """The certificate gauges made at scrape time from the registry last observed: in
    multi-process mode a series kept in prometheus_client's files cannot be removed, and a key
    that left the registry must not keep its series for the life of the workers."""

    def __init__(self) -> None:
        self.values: dict[CertificateLabels, tuple[float, float]] = {}

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            CERTIFICATE_EXPIRY, CERTIFICATE_EXPIRY_HELP, labels=CERTIFICATE_LABELS
        )
        not_before = GaugeMetricFamily(
            CERTIFICATE_NOT_BEFORE, CERTIFICATE_NOT_BEFORE_HELP, labels=CERTIFICATE_LABELS
        )
        for labels, (start, end) in sorted(self.values.items()):
            not_before.add_metric(labels, start)
            expiry.add_metric(labels, end)
        yield expiry
        yield not_before


class MetricDefinitions:
    """Every metric of a gateway, as attributes, on `registry` (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._define_grpc_server(r)
        self._define_grpc_client(r)
        self._define_dependencies(r)
        self._define_decisions(r)
        self._define_audit(r)
        self._define_registry(r)
        self._define_quotas_and_peers(r)
        self._define_admission(r)
        self._define_certificates(r)
        self._define_revocation(r)
        self._define_timestamps(r)
        self._define_cases(r)

        # Series that exist from the start, so that rate() and absent() behave before the first
        # event rather than after it.
        for result in CACHE_RESULTS:
            self.cache_lookups.labels(result)
        self.authorisation_decisions.labels("allowed", "")

    def _define_grpc_server(self, r: CollectorRegistry) -> None:
        """GRPC server."""
        self.grpc_server_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server, by type, service and method.",
            _SERVER_LABELS,
            registry=r,
        )
        self.grpc_server_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by the status code they ended with "
            "(OK, or the code the call was aborted with; UNKNOWN for an unexpected exception).",
            (*_SERVER_LABELS, "grpc_code"),
            registry=r,
        )
        self.grpc_server_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end on the server (for a stream, until the "
            "last message), in seconds.",
            _SERVER_LABELS,
            buckets=GRPC_LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_server_msg_received = Counter(
            "grpc_server_msg_received_total",
            "Request messages received by the server (one per unary request).",
            _SERVER_LABELS,
            registry=r,
        )
        self.grpc_server_msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Response messages sent by the server (one per unary answer, one per streamed item).",
            _SERVER_LABELS,
            registry=r,
        )

    def _define_grpc_client(self, r: CollectorRegistry) -> None:
        """GRPC client: calls to peer gateways and to the region's own data system."""
        self.grpc_client_started = Counter(
            "grpc_client_started_total",
            "RPCs started by this gateway to a peer gateway (peer_region = its region code) or to "
            'the region\'s own data system (peer_region = "local").',
            _CLIENT_LABELS,
            registry=r,
        )
        self.grpc_client_handled = Counter(
            "grpc_client_handled_total",
            "RPCs this gateway made that have completed, by the status code the callee returned.",
            (*_CLIENT_LABELS, "grpc_code"),
            registry=r,
        )
        self.grpc_client_handling_seconds = Histogram(
            "grpc_client_handling_seconds",
            "Time from the start of an outgoing RPC until its answer (or last streamed message), "
            "in seconds.",
            _CLIENT_LABELS,
            buckets=GRPC_LATENCY_BUCKETS,
            registry=r,
        )

    def _define_dependencies(self, r: CollectorRegistry) -> None:
        """Dependencies: their circuit breakers, the access reports owed, the answer cache."""
        self.breaker_state = Gauge(
            "tongban_breaker_state",
            "The circuit breaker of each dependency: 0 closed, 1 open (it is not called: "
            "refusals or fallbacks at once), 2 half-open (one trial call decides). dependency "
            "is redis, audit_store, data_system or peer:<region code>.",
            ["dependency"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker_opened = Counter(
            "tongban_breaker_opened_total",
            "Times the circuit breaker of a dependency opened (failures or timeouts).",
            ["dependency"],
            registry=r,
        )
        self.access_reports_waiting = Gauge(
            "tongban_access_reports_waiting",
            "Access reports of requester-side cache hits recorded in this gateway's audit log "
            "and not yet acknowledged by their owner region (owner), as of the reporter's last "
            "look (about every second).",
            ["owner"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.cache_lookups = Counter(
            "tongban_cache_lookups_total",
            "Answer cache results. hit and miss split the lookups (a miss includes every lookup "
            "that failed or was bypassed); error counts backend calls that failed and bypassed "
            "backend calls skipped while the circuit was open (reads and writes).",
            ("result",),
            registry=r,
        )
        self.cache_circuit_open = Gauge(
            "tongban_cache_circuit_open",
            "1 while the cache backend's circuit breaker is open or half-open (answers are "
            "served uncached), 0 while it is closed.",
            registry=r,
            multiprocess_mode="livemax",
        )

    def _define_decisions(self, r: CollectorRegistry) -> None:
        """Decisions and verifications."""
        self.authorisation_decisions = Counter(
            "tongban_authorisation_decisions_total",
            "Authorisation decisions, by outcome (allowed or denied) and ErrorInfo reason of a "
            'denial (PURPOSE_NOT_APPROVED, FIELD_NOT_ALLOWED, ...; "" when allowed).',
            ("outcome", "reason"),
            registry=r,
        )
        self.seal_verifications = Counter(
            "tongban_seal_verifications_total",
            "E-seal and e-signature verifications, by ETSI EN 319 102-1 indication and "
            'sub-indication ("" when TOTAL_PASSED).',
            ("indication", "sub_indication"),
            registry=r,
        )

    def _define_audit(self, r: CollectorRegistry) -> None:
        """Audit."""
        self.audit_appends = Counter(
            "tongban_audit_appends_total",
            "Audit records made durable.",
            registry=r,
        )
        self.audit_append_failures = Counter(
            "tongban_audit_append_failures_total",
            "Audit appends that failed: each one is a request refused with AUDIT_UNAVAILABLE.",
            registry=r,
        )
        self.audit_commits = Counter(
            "tongban_audit_commits",
            "Transactions that made audit records durable (group commit): appends / commits is "
            "the mean batch size.",
            registry=r,
        )
        self.audit_checkpoint_size = Gauge(
            "tongban_audit_checkpoint_size",
            "Tree size (records) of the latest signed audit checkpoint.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.audit_checkpoint_timestamp = Gauge(
            "tongban_audit_checkpoint_timestamp_seconds",
            "When the latest audit checkpoint was signed, Unix seconds (age: time() - this).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._define_witnessing(r)

    def _define_witnessing(self, r: CollectorRegistry) -> None:
        """Witnessing (docs/audit.md "Witnessing"); `log` is a log's origin, never personal."""
        self.witness_forks_counter = Counter(
            "tongban_witness_forks_total",
            "Checkpoints of another region's audit log this gateway's witness refused as a "
            "fork (kept as evidence): any increase is an incident.",
            ["log"],
            registry=r,
        )
        self.witness_cosigned_counter = Counter(
            "tongban_witness_cosigned_total",
            "Checkpoints of other regions' audit logs this gateway's witness cosigned.",
            ["log"],
            registry=r,
        )
        self.checkpoint_cosignatures = Gauge(
            "tongban_audit_checkpoint_cosignatures",
            "Witness cosignatures held for this gateway's latest submitted audit checkpoint "
            "(the registry's witness_threshold is the number it needs).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.witness_submission_failures = Counter(
            "tongban_witness_submission_failures_total",
            "Submissions of this gateway's checkpoints to a witness that failed (unreachable "
            "or refused); `witness` is the witness's region.",
            ["witness"],
            registry=r,
        )

    def _define_cases(self, r: CollectorRegistry) -> None:
        """Cases (docs/cases.md): labels are event kinds, regions and matter codes of the
        registry, never a case id, applicant or request id."""
        self.case_events = Counter(
            "tongban_case_events_total",
            "Case events this gateway kept, by kind (submitted, accepted, material_requested, "
            'supplemented, approved, rejected) and where made ("here", or "received" from '
            "another region's gateway).",
            ["kind", "made"],
            registry=r,
        )
        self.case_delivery_backlog = Gauge(
            "tongban_case_delivery_backlog",
            "Case events made here and not yet held by the region that must receive them "
            "(peer_region), as of the deliverer's last look.",
            ["peer_region"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.case_deliveries = Counter(
            "tongban_case_deliveries_total",
            "Peer.DeliverCaseEvents calls to a region's gateway, by outcome: delivered (it "
            "answered), failed (unreachable, timed out or not now: retried), refused (it "
            "refused the oldest waiting event for good: retried, and needs an operator).",
            ["peer_region", "outcome"],
            registry=r,
        )
        self.cases_overdue = Gauge(
            "tongban_cases_overdue",
            "Open cases past their time limit (承诺时限) held by this gateway, per matter code.",
            ["matter"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def _define_registry(self, r: CollectorRegistry) -> None:
        """Registry."""
        self.registry_version = Gauge(
            "tongban_registry_version",
            "Version of the registry snapshot this gateway holds (0: none held yet).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.registry_root_version = Gauge(
            "tongban_registry_root_version",
            "Version of the trusted root (authority keys and threshold) this gateway holds: the "
            "installed one, or a newer one reached through a snapshot's root chain.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.registry_issued = Gauge(
            "tongban_registry_issued_timestamp_seconds",
            "When the held registry snapshot was issued, Unix seconds (0: none held).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.registry_expiry = Gauge(
            "tongban_registry_expiry_timestamp_seconds",
            "When the held registry snapshot expires, Unix seconds (0: none held); after it, "
            "cross-region queries fail with REGISTRY_STALE.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.registry_refused = Counter(
            "tongban_registry_refused_total",
            "Registry snapshots refused, by reason (FORMAT, UNSIGNED, UNTRUSTED_SIGNER, "
            "DUPLICATE_SIGNER, BAD_SIGNATURE, BELOW_THRESHOLD, ROOT_CHAIN, ROOT_EXPIRED, "
            "ROOT_ROLLBACK, ROLLBACK, EXPIRED); the held snapshot stays in force.",
            ("reason",),
            registry=r,
        )

    def _define_quotas_and_peers(self, r: CollectorRegistry) -> None:
        """Quotas and peers."""
        self.quota_rejections = Counter(
            "tongban_quota_rejections_total",
            "Requests refused with QUOTA_EXCEEDED, by agreement id (from the signed registry).",
            ("agreement",),
            registry=r,
        )
        self.peer_calls = Counter(
            "tongban_peer_calls_total",
            "Calls to peer gateways (peer_region = region code) and to the region's own data "
            'system (peer_region = "local"), by gRPC status code of the outcome.',
            ("peer_region", "code"),
            registry=r,
        )
        self.peer_call_seconds = Histogram(
            "tongban_peer_call_seconds",
            "Duration of calls to peer gateways and the region's own data system, in seconds.",
            ("peer_region",),
            buckets=GRPC_LATENCY_BUCKETS,
            registry=r,
        )

    def _define_admission(self, r: CollectorRegistry) -> None:
        """Calls in flight per caller (gateway/admission.py)."""
        self.calls_in_flight = Gauge(
            "tongban_calls_in_flight",
            "Calls in flight, by pool of callers (peers, agencies, others), as the budgets per "
            "client certificate count them.",
            ("pool",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.calls_refused = Counter(
            "tongban_calls_refused_total",
            "Calls refused with TOO_MANY_CALLS before their request was read, by pool and by the "
            "limit reached (certificate: one certificate's budget; pool: the whole pool's).",
            ("pool", "limit"),
            registry=r,
        )

    def _define_revocation(self, r: CollectorRegistry) -> None:
        """Online revocation checks (signer/_revocation_fetch.py, docs/security.md)."""
        self.revocation_checks = Counter(
            "tongban_revocation_checks_total",
            "Revocation checks of certificates that name OCSP responders or CRLs, by source "
            "(ocsp, crl) and result (good, revoked, unknown, unreachable); answers from the "
            "cache count too.",
            ("source", "result"),
            registry=r,
        )
        self.peer_certificate_checks = Counter(
            "tongban_peer_certificate_checks_total",
            "Revocation checks of the server certificates of peer gateways before calling them, "
            "by peer region and result (good, revoked, unavailable, unreachable, none, "
            "probe_failed).",
            ("peer_region", "result"),
            registry=r,
        )
        self.revocation_fetch_seconds = Histogram(
            "tongban_revocation_fetch_seconds",
            "Duration of one request to an OCSP responder or a CRL URL, in seconds, whatever "
            "its result.",
            ("source",),
            buckets=GRPC_LATENCY_BUCKETS,
            registry=r,
        )

    def _define_timestamps(self, r: CollectorRegistry) -> None:
        """Requests to the time-stamping authority (gateway/timestamps.py, docs/security.md)."""
        self.timestamp_requests = Counter(
            "tongban_timestamp_requests_total",
            "Requests for an RFC 3161 time-stamp (seals, audit checkpoints), by result (ok, "
            "unreachable, refused, invalid); what is not ok leaves the object without one.",
            ("result",),
            registry=r,
        )

    def _define_certificates(self, r: CollectorRegistry) -> None:
        """Certificates."""
        self.certificate_expiry = Gauge(
            CERTIFICATE_EXPIRY,
            CERTIFICATE_EXPIRY_HELP,
            CERTIFICATE_LABELS,
            registry=r,
            multiprocess_mode="livemin",
        )
        self.certificate_not_before = Gauge(
            CERTIFICATE_NOT_BEFORE,
            CERTIFICATE_NOT_BEFORE_HELP,
            CERTIFICATE_LABELS,
            registry=r,
            multiprocess_mode="livemax",
        )
