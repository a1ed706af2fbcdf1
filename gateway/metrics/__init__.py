"""Prometheus metrics of a gateway: the metric set, the gRPC interceptors that move the gRPC
metrics, and the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) on its own port.

    metrics = GatewayMetrics()                        # a fresh CollectorRegistry per gateway
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics), caller_interceptor, ...])
    channel = grpc.aio.secure_channel(target, creds,
                                      interceptors=client_interceptors(metrics, "510000"))
    endpoint = MetricsServer(metrics.registry, ready=lambda: (ok, why))
    port = await endpoint.start("0.0.0.0", 9464)

`peer_region` is a region code for a peer gateway and "local" (`PEER_LOCAL`) for the region's
own data system (`DataProvider`). Names and labels: docs/monitoring.md and `GatewayMetrics`.
"""

from gateway.metrics._grpc import (
    MetricsInterceptor,
    MetricsStreamClientInterceptor,
    MetricsUnaryClientInterceptor,
    client_interceptors,
)
from gateway.metrics._http import (
    MAX_CONNECTIONS,
    MAX_REQUEST_HEAD_BYTES,
    READ_TIMEOUT_SECONDS,
    MetricsServer,
    Readiness,
)
from gateway.metrics._metrics import (
    CA_USAGE,
    CACHE_RESULTS,
    GRPC_LATENCY_BUCKETS,
    OTHER,
    PEER_LOCAL,
    CacheView,
    GatewayMetrics,
    grpc_code_name,
    multiprocess_mode,
    split_method,
)

__all__ = [
    "CACHE_RESULTS",
    "CA_USAGE",
    "GRPC_LATENCY_BUCKETS",
    "MAX_CONNECTIONS",
    "MAX_REQUEST_HEAD_BYTES",
    "OTHER",
    "PEER_LOCAL",
    "READ_TIMEOUT_SECONDS",
    "CacheView",
    "GatewayMetrics",
    "MetricsInterceptor",
    "MetricsServer",
    "MetricsStreamClientInterceptor",
    "MetricsUnaryClientInterceptor",
    "Readiness",
    "client_interceptors",
    "grpc_code_name",
    "multiprocess_mode",
    "split_method",
]
