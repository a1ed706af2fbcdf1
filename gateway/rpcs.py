"""Full gRPC method names ("/tongban.v1.DataExchange/Query"), as audit records name the RPC that
made them: read from the compiled protos, so that a name cannot drift from the API."""

from __future__ import annotations

from typing import Final

from google.protobuf.descriptor import FileDescriptor

from tongban.v1 import (
    cases_pb2,
    consents_pb2,
    credentials_pb2,
    exchange_pb2,
    oversight_pb2,
    tracker_pb2,
)

__all__ = [
    "BATCH_QUERY",
    "CASES_ACT",
    "CASES_GET",
    "CASES_LIST",
    "CASES_SUBMIT",
    "CASES_WATCH",
    "CONSENTS_LIST",
    "CONSENTS_REGISTER",
    "CONSENTS_REVOKE",
    "CONSENT_STATUS",
    "DELIVER_CASE_EVENTS",
    "FETCH",
    "FORWARD",
    "FORWARD_BATCH",
    "GET_PROOF",
    "QUERY",
    "QUERY_AUDIT",
    "REPORT_ACCESS",
    "SEAL",
    "SIGN_CHECKPOINT",
    "SUBJECT_ACCESS",
    "SUBJECT_TRAIL",
    "TRAIL",
    "VERIFY_AUDIT",
    "full_method",
    "made_by",
]


def full_method(file: FileDescriptor, service: str, method: str) -> str:
    """The method's path on the wire, "/<package>.<Service>/<Method>"; KeyError if unknown."""
    found = file.services_by_name[service]
    return f"/{found.full_name}/{found.methods_by_name[method].name}"


QUERY: Final = full_method(exchange_pb2.DESCRIPTOR, "DataExchange", "Query")
BATCH_QUERY: Final = full_method(exchange_pb2.DESCRIPTOR, "DataExchange", "BatchQuery")
FORWARD: Final = full_method(exchange_pb2.DESCRIPTOR, "Peer", "Forward")
# A ForwardBatch's items are each recorded as a Forward is (rpc FORWARD); only a batch refused
# whole (of the wrong size) is recorded under this name.
FORWARD_BATCH: Final = full_method(exchange_pb2.DESCRIPTOR, "Peer", "ForwardBatch")
REPORT_ACCESS: Final = full_method(exchange_pb2.DESCRIPTOR, "Peer", "ReportAccess")
DELIVER_CASE_EVENTS: Final = full_method(exchange_pb2.DESCRIPTOR, "Peer", "DeliverCaseEvents")
FETCH: Final = full_method(credentials_pb2.DESCRIPTOR, "Credentials", "Fetch")
SEAL: Final = full_method(credentials_pb2.DESCRIPTOR, "Credentials", "Seal")
QUERY_AUDIT: Final = full_method(oversight_pb2.DESCRIPTOR, "Oversight", "QueryAudit")
VERIFY_AUDIT: Final = full_method(oversight_pb2.DESCRIPTOR, "Oversight", "VerifyAudit")
GET_PROOF: Final = full_method(oversight_pb2.DESCRIPTOR, "Oversight", "GetProof")
SUBJECT_ACCESS: Final = full_method(oversight_pb2.DESCRIPTOR, "Oversight", "SubjectAccess")
SIGN_CHECKPOINT: Final = full_method(oversight_pb2.DESCRIPTOR, "Oversight", "SignCheckpoint")
# Cases: called by agencies of the gateway's region (and, for Get/List/Watch, for an applicant
# of the region through its portal's token); DeliverCaseEvents by other regions' gateways.
CASES_SUBMIT: Final = full_method(cases_pb2.DESCRIPTOR, "Cases", "Submit")
CASES_GET: Final = full_method(cases_pb2.DESCRIPTOR, "Cases", "Get")
CASES_LIST: Final = full_method(cases_pb2.DESCRIPTOR, "Cases", "List")
CASES_ACT: Final = full_method(cases_pb2.DESCRIPTOR, "Cases", "Act")
CASES_WATCH: Final = full_method(cases_pb2.DESCRIPTOR, "Cases", "Watch")
# The citizen's data tracker: Trail called by a citizen portal or an oversight agency of the
# gateway's region, SubjectTrail by the gateway serving it, of every other region.
TRAIL: Final = full_method(tracker_pb2.DESCRIPTOR, "Tracker", "Trail")
SUBJECT_TRAIL: Final = full_method(exchange_pb2.DESCRIPTOR, "Peer", "SubjectTrail")
# Consents: called by the citizen portal of the gateway's region for the token's applicant;
# ConsentStatus by other regions' gateways.
CONSENTS_REGISTER: Final = full_method(consents_pb2.DESCRIPTOR, "Consents", "Register")
CONSENTS_LIST: Final = full_method(consents_pb2.DESCRIPTOR, "Consents", "List")
CONSENTS_REVOKE: Final = full_method(consents_pb2.DESCRIPTOR, "Consents", "Revoke")
CONSENT_STATUS: Final = full_method(exchange_pb2.DESCRIPTOR, "Peer", "ConsentStatus")

# What records written before the full names were used say instead ("DataExchange.Query").
_FORMER: Final = {
    rpc: rpc.removeprefix("/tongban.v1.").replace("/", ".")
    for rpc in (QUERY, FORWARD, REPORT_ACCESS, FETCH, SEAL)
}


def made_by(recorded: str, rpc: str) -> bool:
    """Was a record whose `rpc` says `recorded` made by `rpc` (under its current or former name)?"""
    return recorded == rpc or recorded == _FORMER.get(rpc)
