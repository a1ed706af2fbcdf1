"""`tongban.v1.DataProvider` served from synthetic data: a stand-in for a province's data system.

The gateway calls it after authorisation with the fields already minimised; the service still
projects exactly those fields and refuses anything it does not recognise, as a real data system
should:

| request | answer |
| --- | --- |
| dataset not held | NOT_FOUND, reason UNKNOWN_DATASET |
| subject id malformed for the dataset (bad check character, wrong kind of id) | INVALID_ARGUMENT, SUBJECT_ID_INVALID |
| no fields, or a field the dataset does not have | INVALID_ARGUMENT, INVALID_ARGUMENT_FORMAT |
| no record for the subject | found false, empty payload and content type |
| otherwise | found true, canonical JSON of the requested fields, "application/json" |

Logs never carry the subject id.

`create_provider` listens without TLS, and only on a loopback address: it is for demos and tests
next to the gateway. A real province connects its data system to its gateway over TLS (pass
`credentials`), inside its own government network.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from gateway.demo.data import DEFAULT_SEED, DemoData
from gateway.errors import abort
from gateway.provider._net import is_loopback
from signer import canonical_json
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

__all__ = ["CONTENT_TYPE", "DemoProviderService", "create_provider"]

log = logging.getLogger("tongban.provider.demo")

CONTENT_TYPE = "application/json"
MAX_FIELDS = 256


class DemoProviderService(exchange_pb2_grpc.DataProviderServicer):
    """One region's data system over `DemoData`."""

    def __init__(self, data: DemoData) -> None:
        self.data = data

    async def Fetch(
        self,
        request: exchange_pb2.ProviderFetchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> exchange_pb2.ProviderFetchResponse:
        dataset = request.dataset
        if dataset not in self.data.datasets:
            log.info("fetch refused: unknown dataset (request %s)", request.request_id)
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                "UNKNOWN_DATASET",
                f"region {self.data.region} holds no dataset {dataset!r}",
            )
        if not self.data.is_valid_subject(dataset, request.subject_id):
            log.info(
                "fetch %s refused: malformed subject id (request %s)", dataset, request.request_id
            )
            kind = "credit code" if dataset == "market.business_licence" else "citizen id"
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "SUBJECT_ID_INVALID",
                f"the subject id is not a valid {kind} (format or check character)",
            )
        known = self.data.fields(dataset)
        wanted = list(dict.fromkeys(request.fields))
        unknown = [f for f in wanted if f not in known]
        if not wanted or len(wanted) > MAX_FIELDS or unknown:
            log.info("fetch %s refused: bad field list (request %s)", dataset, request.request_id)
            problem = (
                f"{dataset} has no field(s) {', '.join(repr(f[:64]) for f in unknown[:10])}"
                if unknown
                else "name at least one field"
                if not wanted
                else f"at most {MAX_FIELDS} fields"
            )
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT_FORMAT", problem
            )
        record = self.data.record(dataset, request.subject_id)
        log.info(
            "fetch %s for %s/%s, purpose %s, request %s: %d field(s), %s",
            dataset,
            request.requesting_region,
            request.requesting_agency,
            request.purpose,
            request.request_id,
            len(wanted),
            "found" if record is not None else "no record",
        )
        if record is None:
            return exchange_pb2.ProviderFetchResponse(found=False)
        payload = canonical_json({name: record[name] for name in wanted})
        return exchange_pb2.ProviderFetchResponse(
            payload=payload, content_type=CONTENT_TYPE, found=True
        )


def create_provider(
    region: str,
    listen: str = "127.0.0.1:0",
    *,
    seed: str = DEFAULT_SEED,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not yet started: `await server.start()`) serving `region`'s demo data,
    and the port it is bound to. Without `credentials` it listens in plaintext, and then only
    on a loopback address (ValueError otherwise)."""
    if credentials is None and not is_loopback(listen):
        raise ValueError(
            f"the demo provider listens without TLS only on loopback, not on {listen!r}: "
            "pass server credentials to listen elsewhere"
        )
    service = DemoProviderService(DemoData(region, seed))
    # gRPC's core would share a held port (SO_REUSEPORT) with whoever holds it: never here.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    exchange_pb2_grpc.add_DataProviderServicer_to_server(service, server)
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise ValueError(f"the demo provider cannot listen on {listen!r}")
    return server, port
