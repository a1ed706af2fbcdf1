"""The console's client of its region's gateway: mutual TLS as the portal or the oversight
agency, the logged-in person's token in the `authorization` metadata of every call.

Nothing is cached: each page asks the gateway at that moment, so each view of citizen data is
audited by the gateway's own audit of the RPC. A refusal becomes a `GatewayRefused` carrying the
gRPC status and the ErrorInfo reason, shown to the person as a page (never a trace).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import grpc
from grpc_status import rpc_status

from gateway._errors import GatewayError
from gateway.console._config import AgencyIdentity, ConsoleConfig
from gateway.console._login import Role, Session
from tongban.v1 import (
    cases_pb2,
    cases_pb2_grpc,
    consents_pb2,
    consents_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
)

__all__ = ["CALL_TIMEOUT_SECONDS", "GatewayClient", "GatewayRefused"]

CALL_TIMEOUT_SECONDS: Final = 15.0  # a trail asks every region; the slowest sets the pace
MAX_RECORDS: Final = 200  # audit records shown on one page


class GatewayRefused(GatewayError):
    """The gateway answered a call with an error status."""

    def __init__(self, code: grpc.StatusCode, reason: str, details: str) -> None:
        super().__init__(f"{code.name} {reason}: {details}")
        self.code = code
        self.reason = reason
        self.details = details

    @property
    def http_status(self) -> int:
        return {
            grpc.StatusCode.UNAUTHENTICATED: 401,
            grpc.StatusCode.PERMISSION_DENIED: 403,
            grpc.StatusCode.NOT_FOUND: 404,
            grpc.StatusCode.INVALID_ARGUMENT: 400,
            grpc.StatusCode.FAILED_PRECONDITION: 409,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
            grpc.StatusCode.UNIMPLEMENTED: 501,
        }.get(self.code, 502)


def _reason(exc: grpc.aio.AioRpcError) -> str:
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        return ""
    if status is None:
        return ""
    from google.rpc import error_details_pb2

    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


class GatewayClient:
    """Two channels to the gateway, made on first use in the running event loop."""

    def __init__(self, config: ConsoleConfig) -> None:
        self._config = config
        self._channels: dict[Role, grpc.aio.Channel] = {}

    def _channel(self, role: Role) -> grpc.aio.Channel:
        channel = self._channels.get(role)
        if channel is None:
            identity: AgencyIdentity = (
                self._config.portal if role is Role.CITIZEN else self._config.oversight
            )
            credentials = grpc.ssl_channel_credentials(
                self._config.ca_file.read_bytes(), identity.private_key, identity.certificate_chain
            )
            channel = grpc.aio.secure_channel(self._config.gateway_address, credentials)
            self._channels[role] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def _call(self, session: Session, method: Any, request: Any) -> Any:
        metadata = (("authorization", f"Bearer {session.token}"),)
        try:
            return await method(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise GatewayRefused(exc.code(), _reason(exc), exc.details() or "") from None

    # citizens and staff ---------------------------------------------------------------------
    async def trail(self, session: Session, subject_id: str) -> tracker_pb2.TrailResponse:
        stub = tracker_pb2_grpc.TrackerStub(self._channel(session.role))
        request = tracker_pb2.TrailRequest(subject_id=subject_id)
        return await self._call(session, stub.Trail, request)  # type: ignore[no-any-return]

    # citizens ---------------------------------------------------------------------------------
    async def consents(self, session: Session) -> consents_pb2.ListConsentsResponse:
        stub = consents_pb2_grpc.ConsentsStub(self._channel(session.role))
        request = consents_pb2.ListConsentsRequest()
        return await self._call(session, stub.List, request)  # type: ignore[no-any-return]

    async def revoke(self, session: Session, consent_id: str) -> consents_pb2.ConsentSummary:
        stub = consents_pb2_grpc.ConsentsStub(self._channel(session.role))
        request = consents_pb2.RevokeConsentRequest(consent_id=consent_id)
        return await self._call(session, stub.Revoke, request)  # type: ignore[no-any-return]

    async def cases(self, session: Session, *, overdue: bool = False) -> Sequence[cases_pb2.Case]:
        stub = cases_pb2_grpc.CasesStub(self._channel(session.role))
        request = cases_pb2.ListCasesRequest(overdue=overdue, page_size=100)
        answer = await self._call(session, stub.List, request)
        return list(answer.cases)

    # staff ------------------------------------------------------------------------------------
    async def records(
        self, session: Session, request: oversight_pb2.QueryAuditRequest
    ) -> list[oversight_pb2.AuditRecord]:
        """One page of audit records (at most MAX_RECORDS)."""
        stub = oversight_pb2_grpc.OversightStub(self._channel(session.role))
        request.page_size = request.page_size or MAX_RECORDS
        metadata = (("authorization", f"Bearer {session.token}"),)
        found: list[oversight_pb2.AuditRecord] = []
        try:
            call = stub.QueryAudit(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
            async for record in call:
                found.append(record)
        except grpc.aio.AioRpcError as exc:
            raise GatewayRefused(exc.code(), _reason(exc), exc.details() or "") from None
        return found

    async def record(self, session: Session, index: int) -> oversight_pb2.AuditRecord | None:
        """The record at `index`: QueryAudit from `start_index`, one record."""
        request = oversight_pb2.QueryAuditRequest(page_size=1, start_index=index)
        found = await self.records(session, request)
        return found[0] if found and found[0].index == index else None

    async def sign_checkpoint(self, session: Session) -> oversight_pb2.SignCheckpointResponse:
        stub = oversight_pb2_grpc.OversightStub(self._channel(session.role))
        request = oversight_pb2.SignCheckpointRequest()
        return await self._call(session, stub.SignCheckpoint, request)  # type: ignore[no-any-return]

    async def verify_log(self, session: Session) -> oversight_pb2.VerifyAuditResponse:
        stub = oversight_pb2_grpc.OversightStub(self._channel(session.role))
        request = oversight_pb2.VerifyAuditRequest()
        return await self._call(session, stub.VerifyAudit, request)  # type: ignore[no-any-return]

    async def inclusion_proof(self, session: Session, index: int) -> oversight_pb2.GetProofResponse:
        stub = oversight_pb2_grpc.OversightStub(self._channel(session.role))
        request = oversight_pb2.GetProofRequest(
            inclusion=oversight_pb2.InclusionProofRequest(index=index)
        )
        return await self._call(session, stub.GetProof, request)  # type: ignore[no-any-return]
