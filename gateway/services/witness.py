"""`tongban.v1.Witness`: this gateway cosigns other regions' audit checkpoints (C2SP
tlog-witness over the peer channel; the witness itself is `gateway.audit.Witness`).

Only a peer gateway may call it, and only with its own region's log: a region's gateway is the
one party that submits that log's checkpoints. Each refusal has its contract reason:

| the witness says                         | status / reason                                      |
| ---------------------------------------- | ---------------------------------------------------- |
| not a peer gateway, or another's log     | PERMISSION_DENIED / NOT_AUTHORISED_ROLE              |
| the log is not in the registry           | INVALID_ARGUMENT / UNKNOWN_REGION                    |
| no audit key of the region signs it      | PERMISSION_DENIED / CHECKPOINT_SIGNATURE_INVALID     |
| an incoherent or oversized request       | INVALID_ARGUMENT / INVALID_ARGUMENT_FORMAT           |
| old size is not the size last cosigned   | FAILED_PRECONDITION / WITNESS_SIZE_MISMATCH, "size" |
| a fork (kept as evidence)                | FAILED_PRECONDITION / CHECKPOINT_INCONSISTENT        |
| its audit store cannot persist the state | UNAVAILABLE / AUDIT_UNAVAILABLE                      |
"""

from __future__ import annotations

from typing import Any

import grpc

from gateway.audit import (
    AuditUnavailable,
    CheckpointError,
    CheckpointFork,
    UnknownLog,
    Witness,
    WitnessConflict,
    WitnessRequestInvalid,
)
from gateway.audit._witness import MAX_PROOF_HASHES
from gateway.errors import Refusal
from gateway.identity import CallerKind, current_caller
from gateway.witnessing import log_origin
from registry import RegistryError
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

__all__ = ["MAX_CHECKPOINT_NOTE_BYTES", "WitnessService"]

MAX_CHECKPOINT_NOTE_BYTES = 16 * 1024  # a checkpoint with its signatures is a few hundred bytes


class WitnessService(exchange_pb2_grpc.WitnessServicer):
    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    async def AddCheckpoint(
        self,
        request: exchange_pb2.AddCheckpointRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> exchange_pb2.AddCheckpointResponse:
        caller = current_caller.get()
        if caller is None or caller.kind is not CallerKind.GATEWAY:
            raise Refusal("NOT_AUTHORISED_ROLE", "only a region's gateway submits checkpoints")
        note = request.checkpoint
        if len(note.encode()) > MAX_CHECKPOINT_NOTE_BYTES:
            raise Refusal("REQUEST_TOO_LARGE", "a checkpoint note is at most 16 KiB")
        if len(request.consistency_proof) > MAX_PROOF_HASHES or any(
            len(h) != 32 for h in request.consistency_proof
        ):
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT",
                f"a consistency proof is at most {MAX_PROOF_HASHES} hashes of 32 bytes",
            )
        origin = note.partition("\n")[0]
        if origin != log_origin(caller.region):
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"the gateway of region {caller.region} submits {log_origin(caller.region)} only",
            )
        try:
            made = await self.witness.add_checkpoint(
                request.old_size, list(request.consistency_proof), note
            )
        except WitnessConflict as exc:
            raise Refusal(
                "WITNESS_SIZE_MISMATCH", str(exc), metadata={"size": str(exc.size)}
            ) from exc
        except CheckpointFork as exc:
            raise Refusal("CHECKPOINT_INCONSISTENT", str(exc)) from exc
        except UnknownLog as exc:
            raise Refusal("UNKNOWN_REGION", str(exc)) from exc
        except WitnessRequestInvalid as exc:
            raise Refusal("INVALID_ARGUMENT_FORMAT", str(exc)) from exc
        except CheckpointError as exc:
            raise Refusal("CHECKPOINT_SIGNATURE_INVALID", str(exc)) from exc
        except AuditUnavailable as exc:
            raise Refusal("AUDIT_UNAVAILABLE", str(exc)) from exc
        except RegistryError as exc:
            raise Refusal("REGISTRY_STALE", str(exc)) from exc
        return exchange_pb2.AddCheckpointResponse(cosignatures=[made.line])
