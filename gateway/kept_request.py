"""The signed request a Peer.Forward audit record keeps, opened and proved: shared by
`tongban audit show-request` and the evidence check (`tongban audit check-evidence
--pseudonym-key-file`).

The record keeps the request's digest and the request sealed under a key derived from the
pseudonym key (`gateway.audit._kept`). Proving it is: open it (against the digest), verify its
signature with the requesting region's audit key in the registry at the time it was signed,
check that the signing time is one the owner would have accepted at the record's time, and that
the record says what the request says. Every problem is a `KeptRequestError` whose message
never holds the subject id.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from gateway.audit import (
    FIELD_GRAMMARS,
    AuditRecord,
    KeptRequestError,
    open_kept_request,
    pseudonymize,
    recordable,
)
from gateway.errors import Refusal
from gateway.forward_signing import REQUEST_CLOCK_SKEW, SignedForward, verify_forward
from registry import Registry

__all__ = ["FORWARD_RPCS", "RECORD_SLACK", "disagreements", "prove_kept_request"]

FORWARD_RPCS: Final = ("/tongban.v1.Peer/Forward", "Peer.Forward")
RECORD_SLACK: Final = timedelta(minutes=1)  # a forward's own time, from its receipt to its record


def disagreements(record: AuditRecord, signed: SignedForward, key: bytes) -> list[str]:
    """What the record says that its signed request does not (nothing, in a sound log)."""
    document = signed.document
    request = document.request
    pairs = {
        "request_id": request.request_id,
        "caller_agency": document.caller_agency,
        "caller_operator": document.caller_operator,
        "provider_region": request.provider_region,
        "dataset": request.dataset,
        "purpose": request.purpose,
        "case_id": request.case_id,
    }
    # the record holds each value as bounded (`recordable`): the same, or its digest form
    wrong = [
        name
        for name, value in pairs.items()
        if getattr(record, name) != recordable(value, FIELD_GRAMMARS[name])
    ]
    if record.subject != pseudonymize(request.subject_id, key):
        wrong.append("subject")
    return wrong


def prove_kept_request(
    record: AuditRecord, key: bytes, registry: Registry, *, now: datetime
) -> tuple[str, SignedForward]:
    """(the JWS, what it verifies as) of the signed request `record` keeps, or a
    `KeptRequestError` saying why it does not prove what the record says."""
    if record.rpc not in FORWARD_RPCS:
        raise KeptRequestError(f"a {record.rpc} record, not a Peer.Forward one")
    if not record.request_sealed:
        raise KeptRequestError(
            "it keeps no signed request (written before requests were signed, or refused "
            "before its signature was verified)"
        )
    jws = open_kept_request(record.request_sealed, record.request_digest, key)
    try:
        signed = verify_forward(
            jws,
            registry=registry,
            requesting_region=record.caller_region,
            owner_region=record.region,
            now=now,
            at_signing=True,
        )
    except Refusal as exc:
        raise KeptRequestError(
            f"the signed request it keeps does not verify ({exc.reason}): {exc.message}"
        ) from exc
    # The signing time is the signer's claim; the record's time is the owner's, in its Merkle
    # log. The owner accepted the request only within the clock skew, so a signing time far
    # from the record's is a backdated signature (a key revoked later cannot hide behind it).
    issued_at = signed.document.issued_at
    if abs(record.time - issued_at) > REQUEST_CLOCK_SKEW + RECORD_SLACK:
        raise KeptRequestError(
            f"it was written at {record.time_text}, but its signed request claims "
            f"{issued_at:%Y-%m-%dT%H:%M:%SZ}: more than the owner would have accepted"
        )
    wrong = disagreements(record, signed, key)
    if wrong:
        raise KeptRequestError(
            f"it does not say what its signed request says ({', '.join(wrong)}): the record "
            "or the request was altered"
        )
    return jws, signed
