"""The query path as three flows, each taking and returning the frozen values of `_model`,
with no gRPC or protobuf (the service edge, `gateway.services.exchange`, converts):

- `RequesterFlow` (requester.py): an agency's query, answered through the owner's gateway
  (`OwnerGateway`) or this gateway's own copy of the owner's answer;
- `OwnerFlow` (owner.py): a query another region's gateway forwards, answered from the cache
  or the data system (`DataSystem`) and sealed;
- `ReportIntake` (intake.py): the access reports of requesting gateways' own cache hits.

They share `_common`: the registry and the one decision per gateway per request (`Gatekeeper`,
`Grant`), the audit trail of a call (`AuditTrail`, its `AuditContext`), the seal checks
remembered (`PassedSeals`).
"""

from gateway.flows._common import AuditTrail, Gatekeeper, PassedSeals
from gateway.flows._model import (
    NO_REQUEST,
    Answer,
    AuditContext,
    ForwardCall,
    Forwarded,
    Grant,
    IntakeCall,
    QueryCall,
    SealedAnswer,
    TimeRemaining,
)
from gateway.flows.intake import ReportIntake
from gateway.flows.owner import DataSystem, OwnerFlow, SealedCodec
from gateway.flows.requester import AnswerCodec, OwnerGateway, RequesterFlow

__all__ = [
    "NO_REQUEST",
    "Answer",
    "AnswerCodec",
    "AuditContext",
    "AuditTrail",
    "DataSystem",
    "ForwardCall",
    "Forwarded",
    "Gatekeeper",
    "Grant",
    "IntakeCall",
    "OwnerFlow",
    "OwnerGateway",
    "PassedSeals",
    "QueryCall",
    "ReportIntake",
    "RequesterFlow",
    "SealedAnswer",
    "SealedCodec",
    "TimeRemaining",
]
