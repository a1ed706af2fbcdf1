"""The gateway path against the ceiling: a bare grpc.aio echo server, measured side by side.

Run: .venv/bin/python bench/query_path.py [--seconds 8] [--warmup 3] [--concurrency 32]
                                      [--channels 4] [--json FILE] [--redis URL]
                                      [--postgres DSN] [--workers 1,2] [--no-one-process]
                                      [--profile DIR]

One closed-loop load generator in THIS process (the "client process"; it never shares a GIL
with a server) drives, one after the other, the same targets through several topologies, all
started by the harness on loopback from one development PKI and one signed registry (gateway/
demo/federation.py: `build_pki`), with real Redis for the cache, the replay window and the quotas:

    echo         the ceiling: a bare `grpc.aio` server in its own process, over the same mutual
                 TLS as gateway 510000, answering every call with the bytes of a real sealed
                 `QueryResponse`; measured first, in the middle and last
    per region   ONE PROCESS PER REGION, as in production where each region's gateway runs on
                 its own machine: 330000, 510000 and 500000 each run their gateway and demo data
                 system in their own process (`--role region`), told their peers' ports in
                 advance; SQLite audit logs (WAL, synchronous=FULL). Every target, and the
                 open-loop pass at half load
    one process  the three gateways and data systems in one process, exactly as `tongban demo
                 --redis URL` starts them (`start_federation`); SQLite audit; the next database
                 of the same Redis (sharing one, it would be a replica of the per-region gateways
                 and share their report queue). (a), (b), (e): for comparison with the figures
                 before the per-region topology existed
    N workers    510000 as `tongban gateway serve --config FILE --workers N` (N = 1, 2): a full
                 TOML configuration with a PostgreSQL audit store (a fresh schema per N, dropped
                 at the end) and Redis, as replicas need; 500000 and 330000 are the per-region
                 processes above. (a) and (b)

Targets, all as 四川 agencies asking their gateway 510000:

    (a)   Query of one 重庆 (500000) citizen again and again (sc.hrss, si.participation,
          cache_scope "provider"): answered from 500000's Redis cache
    (b)   Query of a new citizen every time: two hops, the data system, an ES256 seal, its check
    (c)   BatchQuery of 5 items (3 to 500000, 2 to 330000), each answered from cache
    (d)   Credentials.Verify of one sealed answer (signature, chain, report)
    (e)   Query of one 重庆 business licence again and again (sc.amr, market.business_licence,
          cache_scope "requester"): the requesting gateway may answer repeats itself and report
          them to the owner (Peer.ReportAccess); without that it behaves like (a), and the
          output says which it saw. The reports travel after the answers: the harness waits for
          500000 to have recorded them all before the next phase

Honest about the quotas: the agreements allow 120 to 1200 queries a minute, which a benchmark
exceeds in a second. The harness publishes its own copy of conf/registry with every
`quota_per_minute` raised and every agreement id prefixed with this run's id (so that its quota
counters in the shared Redis never touch the real agreements'); the quota is still counted in
Redis on every query. The output says so. See bench/README.md.
"""

from __future__ import annotations

import sys

# bench/ is first on sys.path when this script runs by its path (as documented): the code is in
# the package beside it, one module a part (see _query_path/__init__.py).
from _query_path.cli import main

if __name__ == "__main__":
    sys.exit(main(description=(__doc__ or "").split("\n\n")[0]))
