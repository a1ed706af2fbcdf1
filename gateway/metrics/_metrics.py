"""Every metric a gateway exports, and the helpers the request path calls to move them.

Label values are bounded by construction: gRPC service and method names come from the
registered handlers, codes from `grpc.StatusCode`, reasons must be UPPER_SNAKE codes,
indications come from the signer's enums, and regions, agreements, kids and owners from the
signed registry. A value that does not fit its label is exported as "other" (or "OTHER" for
codes), never as itself: no subject, case, request or operator id can become a series.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

import grpc
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.registry import Collector

from gateway.admission import Pool
from gateway.cases._model import EventKind
from gateway.metrics._definitions import (
    CACHE_RESULTS,
    GRPC_LATENCY_BUCKETS,
    CertificateLabels,
    HeldCertificates,
    MetricDefinitions,
)
from registry import KeyState, Registry, RegistryStatus
from signer import Indication, SubIndication, x5t_s256_of_der

__all__ = [
    "CACHE_RESULTS",
    "CA_USAGE",
    "GRPC_LATENCY_BUCKETS",
    "OTHER",
    "PEER_LOCAL",
    "CacheView",
    "GatewayMetrics",
    "grpc_code_name",
    "split_method",
]

log = logging.getLogger("tongban.metrics")

PEER_LOCAL = "local"  # peer_region of calls to the region's own data system (DataProvider)
CA_USAGE = "ca"  # usage label of a region CA certificate in the certificate gauges
OTHER = "other"  # the label value of anything that does not fit its label
OUTCOMES = ("allowed", "denied")

_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_DIGIT_RUN = re.compile(r"\d{15,}")  # a citizen id (15 or 18 digits), a phone, a case number
_INDICATIONS = frozenset(i.value for i in Indication)
_REVOCATION_SOURCES = frozenset({"ocsp", "crl"})
_REVOCATION_RESULTS = frozenset({"good", "revoked", "unknown", "unreachable"})
_PEER_CERTIFICATE_RESULTS = frozenset(
    {"good", "revoked", "unavailable", "unreachable", "none", "probe_failed"}
)
_TIMESTAMP_RESULTS = frozenset({"ok", "unreachable", "refused", "invalid"})
_SUB_INDICATIONS = frozenset(s.value for s in SubIndication)
_CASE_EVENT_KINDS = frozenset(k.value for k in EventKind)
_CASE_DELIVERY_OUTCOMES = frozenset({"delivered", "failed", "refused"})


def _camel(code: grpc.StatusCode) -> str:
    """The contract spelling of a status code: the gRPC-Go / grpc-ecosystem name."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"  # sic: the Go spelling every gRPC dashboard matches on
    return "".join(part.capitalize() for part in code.name.split("_"))


_CODE_NAMES = {c: _camel(c) for c in grpc.StatusCode}
_CODES = {**{c.name: n for c, n in _CODE_NAMES.items()}, **{n: n for n in _CODE_NAMES.values()}}
_CODES_BY_NUMBER = {c.value[0]: n for c, n in _CODE_NAMES.items()}


class AdmissionView(Protocol):
    """What `observe_admission` reads: a `gateway.admission.CallAdmission`."""

    def in_flight(self, pool: Pool, certificate: str | None = None) -> int: ...

    def refused(self, pool: Pool, *, whole_pool: bool) -> int: ...


_BREAKER_STATES: Mapping[str, int] = {"closed": 0, "open": 1, "half_open": 2}


class BreakerView(Protocol):
    """What `observe_breakers` reads of a `CircuitBreaker`."""

    @property
    def state(self) -> str: ...

    @property
    def opened(self) -> int: ...


class CacheView(Protocol):
    """What `observe_cache` reads: a `CircuitBreaker` or an `AnswerCache` both fit."""

    @property
    def state(self) -> str: ...

    @property
    def counters(self) -> _CacheCounters: ...


class _CacheCounters(Protocol):
    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def bypassed(self) -> int: ...


def split_method(full_method: str | bytes) -> tuple[str, str]:
    """ "/tongban.v1.Peer/Forward" → ("tongban.v1.Peer", "Forward")."""
    text = full_method.decode("ascii", "replace") if isinstance(full_method, bytes) else full_method
    service, _, method = text.lstrip("/").rpartition("/")
    return (service or OTHER), (method or OTHER)


def grpc_code_name(code: object) -> str:
    """The contract name of a status code (`OK`, `Canceled`, `InvalidArgument`, ...; see
    docs/monitoring.md) given as `grpc.StatusCode`, its Python name, its contract name or number.
    Anything else is `Unknown`."""
    if isinstance(code, grpc.StatusCode):
        return _CODE_NAMES[code]
    if isinstance(code, int):
        return _CODES_BY_NUMBER.get(code, "Unknown")
    if isinstance(code, str):
        return _CODES.get(code, "Unknown")
    return "Unknown"


def _reason(value: str) -> str:
    """An ErrorInfo / snapshot refusal reason: "" or an UPPER_SNAKE code."""
    text = str(value)
    if text == "" or _REASON.fullmatch(text):
        return text
    return "OTHER"


def _identifier(value: str, known: frozenset[str] | None = None) -> str:
    """A registry identifier (region code, agreement id): short, plain, and never id-like."""
    text = str(value)
    if known is not None:
        return text if text in known else OTHER
    if _IDENTIFIER.fullmatch(text) and not _DIGIT_RUN.search(text):
        return text
    return OTHER


def _timestamp(value: datetime | float | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def multiprocess_mode() -> bool:
    """Whether this process is one of several sharing their metrics (`PROMETHEUS_MULTIPROC_DIR`
    set): prometheus_client itself decides this way; series cannot be removed in that mode."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


class _Monotonic:
    """Moves a counter to follow a source total that only goes up (or starts again from 0)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def delta(self, key: str, total: int) -> int:
        previous = self._seen.get(key, 0)
        self._seen[key] = total
        if total < previous:  # the source was replaced: everything it counts is new
            return total
        return total - previous


class GatewayMetrics(MetricDefinitions):
    """The gateway's metrics on one `CollectorRegistry` (a fresh one unless given).

    gRPC server and client metrics follow the grpc-ecosystem names and labels (go-grpc-prometheus
    / py-grpc-prometheus), so the usual dashboards work unchanged; Tongban's own are prefixed
    `tongban_`. Timestamps are exported as Unix seconds, never as ages: PromQL computes the age
    (`time() - metric`), and a value that never needs re-exporting cannot go stale.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self._cache_totals = _Monotonic()
        self._breaker_totals = _Monotonic()
        self._report_owners: set[str] = set()
        self._refusal_totals = _Monotonic()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._audit_totals = _Monotonic()
        self._admission_totals = _Monotonic()
        self._certificates: set[CertificateLabels] = set()
        self._held_certificates = HeldCertificates()
        self._regions: frozenset[str] | None = None  # known once a registry was observed
        self._agreements: frozenset[str] | None = None
        self._matters: frozenset[str] | None = None
        self._case_regions: set[str] = set()  # destinations seen: they stay, at 0
        self._overdue_matters: set[str] = set()

    @property
    def scrape_collectors(self) -> tuple[Collector, ...]:
        """Collectors to add to a multi-process scrape, beside the workers' files."""
        return (self._held_certificates,) if multiprocess_mode() else ()

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: the gRPC interceptors ask for the same few
        series on every call, and prometheus_client validates the labels each time."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    # registry -----------------------------------------------------------------------------------
    def observe_registry(self, registry: Registry | None, status: RegistryStatus) -> None:
        """Set the registry gauges from `status` and replace the certificate gauges with the
        keys and region CAs of `registry` (the held snapshot, expired or not; None when none is
        held). Series of keys no longer trusted are removed, so a rotation shows without a
        restart. Revoked keys are left out: their expiry calls for no action. Also follows the
        refusal counts in `status` (as `observe_refusals`). Call on every swap and periodically.
        """
        self.registry_version.set(status.version or 0)
        self.registry_root_version.set(status.root_version)
        self.registry_issued.set(_timestamp(status.issued_at))
        self.registry_expiry.set(_timestamp(status.expires_at))
        self.observe_refusals(status.refusals)

        wanted: dict[CertificateLabels, tuple[float, float]] = {}
        if registry is not None:
            self._regions = frozenset(region.code for region in registry.regions)
            self._agreements = frozenset(agreement.id for agreement in registry.agreements)
            self._matters = frozenset(matter.code for matter in registry.matters)
            for key in registry.keys:
                if key.state is KeyState.REVOKED:
                    continue
                wanted[(key.kid, key.usage.value, key.owner)] = (
                    key.not_before.timestamp(),
                    key.not_after.timestamp(),
                )
            for region in registry.regions:
                for der in region.ca_certificates:
                    try:
                        certificate = x509.load_der_x509_certificate(der)
                    except ValueError:
                        log.warning(
                            "region %s has a CA certificate that does not parse", region.code
                        )
                        continue
                    wanted[(x5t_s256_of_der(der), CA_USAGE, region.code)] = (
                        certificate.not_valid_before_utc.timestamp(),
                        certificate.not_valid_after_utc.timestamp(),
                    )

        # In multi-process mode prometheus_client cannot remove a series: there the scrape
        # makes these two from the registry held instead (`scrape_collectors`).
        if multiprocess_mode():
            self._held_certificates.values = wanted
            return
        for labels in self._certificates - wanted.keys():
            self.certificate_expiry.remove(*labels)
            self.certificate_not_before.remove(*labels)
        self._certificates = set(wanted)
        for labels, (not_before, not_after) in wanted.items():
            self.certificate_not_before.labels(*labels).set(not_before)
            self.certificate_expiry.labels(*labels).set(not_after)

    def observe_refusals(self, refusals: Mapping[str, int]) -> None:
        """Follow the store's refused-snapshot totals by reason (counters only go up)."""
        for reason, total in refusals.items():
            delta = self._refusal_totals.delta(reason, total)
            if delta > 0:
                self.registry_refused.labels(_reason(reason)).inc(delta)

    # cache --------------------------------------------------------------------------------------
    def observe_cache(self, cache: CacheView) -> None:
        """Follow an `AnswerCache`'s (or its `CircuitBreaker`'s) state and totals."""
        self.cache_circuit_open.set(0 if cache.state == "closed" else 1)
        counters = cache.counters
        for result, total in (
            ("hit", counters.hits),
            ("miss", counters.misses),
            ("error", counters.errors),
            ("bypassed", counters.bypassed),
        ):
            delta = self._cache_totals.delta(result, total)
            if delta > 0:
                self.cache_lookups.labels(result).inc(delta)

    def observe_reports(self, backlog: Mapping[str, int]) -> None:
        """Follow the access reports waiting per owner region (an owner seen once stays, at 0)."""
        for owner in self._report_owners - backlog.keys():
            self.access_reports_waiting.labels(owner).set(0)
        for owner, waiting in backlog.items():
            self.access_reports_waiting.labels(owner).set(waiting)
        self._report_owners |= backlog.keys()

    def observe_breakers(self, breakers: Mapping[str, BreakerView]) -> None:
        """Follow each dependency's breaker: its state, and the times it opened."""
        for dependency, breaker in breakers.items():
            self.breaker_state.labels(dependency).set(_BREAKER_STATES[breaker.state])
            delta = self._breaker_totals.delta(dependency, breaker.opened)
            if delta > 0:
                self.breaker_opened.labels(dependency).inc(delta)

    def observe_admission(self, admission: AdmissionView) -> None:
        """Follow the calls in flight and the refusals of the budgets per caller."""
        for pool in Pool:
            self.calls_in_flight.labels(pool.value).set(admission.in_flight(pool))
            for limit, whole_pool in (("certificate", False), ("pool", True)):
                total = admission.refused(pool, whole_pool=whole_pool)
                delta = self._admission_totals.delta(f"{pool.value}/{limit}", total)
                if delta > 0:
                    self.calls_refused.labels(pool.value, limit).inc(delta)

    def observe_audit_commits(self, total: int) -> None:
        """Follow an audit store's count of committed transactions (batches)."""
        delta = self._audit_totals.delta("commits", total)
        if delta > 0:
            self.audit_commits.inc(delta)

    # request path ---------------------------------------------------------------------------------
    def decision(self, outcome: Literal["allowed", "denied"], reason: str = "") -> None:
        """One authorisation decision; `reason` is the ErrorInfo reason of a denial."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome is allowed or denied, not {outcome!r}")
        self.child(self.authorisation_decisions, outcome, _reason(reason)).inc()

    def verification(self, indication: str, sub_indication: str = "") -> None:
        """One seal or signature verification (`Indication`, `SubIndication` or their values)."""
        main = str(indication) if str(indication) in _INDICATIONS else "OTHER"
        sub = str(sub_indication)
        if sub and sub not in _SUB_INDICATIONS:
            sub = "OTHER"
        self.child(self.seal_verifications, main, sub).inc()

    def audit_append(self, ok: bool) -> None:
        """One audit append: made durable (`ok`) or failed."""
        (self.audit_appends if ok else self.audit_append_failures).inc()

    def checkpoint(self, size: int, signed_at: datetime | float) -> None:
        """A signed audit checkpoint: its tree size and when it was signed."""
        self.audit_checkpoint_size.set(size)
        self.audit_checkpoint_timestamp.set(_timestamp(signed_at))

    def witness_cosigned(self, origin: str) -> None:
        """This gateway's witness cosigned a checkpoint of `origin` (a log it knows)."""
        self.child(self.witness_cosigned_counter, origin).inc()

    def witness_fork(self, origin: str) -> None:
        """This gateway's witness refused a fork of `origin` and kept it."""
        self.child(self.witness_forks_counter, origin).inc()

    def cosignatures_held(self, count: int) -> None:
        """The latest submitted checkpoint now holds `count` cosignatures."""
        self.checkpoint_cosignatures.set(count)

    def witness_submission_failed(self, region: str) -> None:
        self.child(self.witness_submission_failures, self.peer_region(region)).inc()

    def quota_rejected(self, agreement: str) -> None:
        """A request refused because `agreement`'s quota is spent."""
        self.quota_rejections.labels(_identifier(agreement, self._agreements)).inc()

    def peer_call(self, region: str, code: grpc.StatusCode | str | int, seconds: float) -> None:
        """One call to a peer gateway (`region` its code) or the data system (`PEER_LOCAL`)."""
        peer = self.peer_region(region)
        self.child(self.peer_calls, peer, grpc_code_name(code)).inc()
        self.child(self.peer_call_seconds, peer).observe(max(seconds, 0.0))

    def revocation_check(self, source: str, result: str, seconds: float) -> None:
        """One revocation check (`RevocationFetcher`'s observer): `seconds` is 0.0 for an answer
        from its cache, which is counted but not timed."""
        source = source if source in _REVOCATION_SOURCES else "other"
        result = result if result in _REVOCATION_RESULTS else "other"
        self.child(self.revocation_checks, source, result).inc()
        if seconds > 0.0:
            self.child(self.revocation_fetch_seconds, source).observe(seconds)

    def peer_certificate_check(self, region: str, result: str) -> None:
        """One check of a peer gateway's server certificate before a call to it
        (gateway.peer_certificates)."""
        result = result if result in _PEER_CERTIFICATE_RESULTS else "other"
        self.child(self.peer_certificate_checks, self.peer_region(region), result).inc()

    def timestamp_request(self, result: str, seconds: float) -> None:
        """One request to the TSA (`TimeStampClient`'s report)."""
        del seconds  # counted, not timed: one request per seal or checkpoint
        self.child(
            self.timestamp_requests, result if result in _TIMESTAMP_RESULTS else "other"
        ).inc()

    def peer_region(self, region: str) -> str:
        """The `peer_region` label for `region`: "local", a region the registry knows, or "other"."""
        if region == PEER_LOCAL:
            return PEER_LOCAL
        return _identifier(region, self._regions)

    # cases ----------------------------------------------------------------------------------------
    def case_event(self, kind: str, made: Literal["here", "received"]) -> None:
        """One case event kept: made by this region ("here") or received from another."""
        kind = kind if kind in _CASE_EVENT_KINDS else OTHER
        if made not in ("here", "received"):
            raise ValueError(f"made is here or received, not {made!r}")
        self.child(self.case_events, kind, made).inc()

    def case_delivery(self, region: str, outcome: str) -> None:
        """One Peer.DeliverCaseEvents call to `region` (the deliverer's observer)."""
        outcome = outcome if outcome in _CASE_DELIVERY_OUTCOMES else OTHER
        self.child(self.case_deliveries, self.peer_region(region), outcome).inc()

    def case_backlog(self, backlog: Mapping[str, int]) -> None:
        """Case events waiting per destination (a destination seen once stays, at 0). A region
        first seen also gets its delivered counter at 0, so that an alert on "no delivery
        lately" (increase() of it) sees a region that was never delivered to."""
        waiting = {self.peer_region(region): n for region, n in backlog.items()}
        for region in self._case_regions - waiting.keys():
            self.case_delivery_backlog.labels(region).set(0)
        for region, n in waiting.items():
            if region not in self._case_regions:
                self.child(self.case_deliveries, region, "delivered")
            self.case_delivery_backlog.labels(region).set(n)
        self._case_regions |= waiting.keys()

    def observe_cases_overdue(self, overdue: Mapping[str, int]) -> None:
        """Open cases past their time limit per matter code (a matter seen once stays, at 0);
        a code the registry does not list is counted as "other"."""
        counts: dict[str, int] = {}
        for matter, n in overdue.items():
            label = _identifier(matter, self._matters)
            counts[label] = counts.get(label, 0) + n
        for matter in self._overdue_matters - counts.keys():
            self.cases_overdue.labels(matter).set(0)
        for matter, n in counts.items():
            self.cases_overdue.labels(matter).set(n)
        self._overdue_matters |= counts.keys()
