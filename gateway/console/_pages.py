"""The console's pages: a citizen's own trail, consents and cases; the staff's trail search,
audit records, log verification, inclusion proofs and alerts. Each asks the gateway at that
moment, with the logged-in person's token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.console._client import GatewayRefused
from gateway.console._login import Role
from gateway.console._proof import check_inclusion
from tongban.v1 import cases_pb2, common_pb2, oversight_pb2

if TYPE_CHECKING:
    from gateway.console._app import Console

__all__ = ["citizen_routes", "proof_routes", "staff_routes"]

OUTCOMES = {
    "allowed": common_pb2.OUTCOME_ALLOWED,
    "denied": common_pb2.OUTCOME_DENIED,
    "failed": common_pb2.OUTCOME_FAILED,
}
MAX_FILTER_CHARS = 128


def outcome_name(value: int) -> str:
    return (
        common_pb2.Outcome.Name(common_pb2.Outcome.ValueType(value))
        .removeprefix("OUTCOME_")
        .lower()
    )


def case_state(value: int) -> str:
    return (
        cases_pb2.CaseState.Name(cases_pb2.CaseState.ValueType(value))
        .removeprefix("CASE_STATE_")
        .lower()
    )


def _filter(request: Request, name: str) -> str:
    value = request.query_params.get(name, "").strip()
    if len(value) > MAX_FILTER_CHARS:
        raise HTTPException(400, "error")
    return value


def citizen_routes(console: Console) -> list[Route]:
    async def trail(request: Request) -> Response:
        session = console.require(request, Role.CITIZEN)
        answer = await console.client.trail(session, "")
        return console.render(
            request, "trail.html", answer=answer, outcome_name=outcome_name, heading="my_trail"
        )

    async def consents(request: Request) -> Response:
        session = console.require(request, Role.CITIZEN)
        answer = await console.client.consents(session)
        return console.render(request, "consents.html", consents=answer.consents)

    async def revoke(request: Request) -> Response:
        session = console.require(request, Role.CITIZEN)
        values = await console.form(request, session)
        consent_id = values.get("consent_id", "")
        if not consent_id or len(consent_id) > MAX_FILTER_CHARS:
            raise HTTPException(400, "error")
        await console.client.revoke(session, consent_id)
        return RedirectResponse("/me/consents", status_code=303)

    async def cases(request: Request) -> Response:
        session = console.require(request, Role.CITIZEN)
        found = await console.client.cases(session)
        return console.render(request, "cases.html", cases=found, case_state=case_state)

    return [
        Route("/me/trail", trail),
        Route("/me/consents", consents, methods=["GET"]),
        Route("/me/consents/revoke", revoke, methods=["POST"]),
        Route("/me/cases", cases),
    ]


def staff_routes(console: Console) -> list[Route]:
    async def trail_form(request: Request) -> Response:
        console.require(request, Role.STAFF)
        return console.render(request, "staff_trail.html", answer=None, outcome_name=outcome_name)

    async def trail(request: Request) -> Response:
        session = console.require(request, Role.STAFF)
        values = await console.form(request, session)
        subject = values.get("subject", "").strip()
        if not subject or len(subject) > MAX_FILTER_CHARS:
            raise HTTPException(400, "error")
        answer = await console.client.trail(session, subject)
        return console.render(request, "staff_trail.html", answer=answer, outcome_name=outcome_name)

    async def records(request: Request) -> Response:
        session = console.require(request, Role.STAFF)
        outcome = _filter(request, "outcome")
        query = oversight_pb2.QueryAuditRequest(
            outcome=OUTCOMES.get(outcome, common_pb2.OUTCOME_UNSPECIFIED),
            dataset=_filter(request, "dataset"),
            purpose=_filter(request, "purpose"),
            caller_agency=_filter(request, "agency"),
        )
        found = await console.client.records(session, query)
        found.reverse()  # newest first
        return console.render(
            request,
            "records.html",
            records=found,
            outcome=outcome,
            filters=query,
            outcome_name=outcome_name,
        )

    async def record(request: Request) -> Response:
        session = console.require(request, Role.STAFF)
        index = _index(request)
        found = await console.client.record(session, index)
        if found is None:
            raise HTTPException(404, "not_found")
        return console.render(request, "record.html", record=found, outcome_name=outcome_name)

    async def verify(request: Request) -> Response:
        session = console.require(request, Role.STAFF)
        answer = await console.client.verify_log(session)
        return console.render(request, "verify.html", answer=answer)

    async def alerts(request: Request) -> Response:
        session = console.require(request, Role.STAFF)
        answer = await console.client.verify_log(session)
        overdue: list[cases_pb2.Case] = []
        problem = ""
        try:
            overdue = list(await console.client.cases(session, overdue=True))
        except GatewayRefused as exc:
            problem = f"{exc.code.name} {exc.reason}: {exc.details}"
        return console.render(
            request,
            "alerts.html",
            answer=answer,
            overdue=overdue,
            problem=problem,
            case_state=case_state,
        )

    return [
        Route("/staff/trail", trail_form, methods=["GET"]),
        Route("/staff/trail", trail, methods=["POST"]),
        Route("/staff/records", records),
        Route("/staff/records/{index}", record),
        Route("/staff/verify", verify),
        Route("/staff/alerts", alerts),
    ]


def proof_routes(console: Console) -> list[Route]:
    async def proof(request: Request) -> Response:
        session = console.require(request, Role.STAFF)
        index = _index(request)
        found = await console.client.record(session, index)
        if found is None:
            raise HTTPException(404, "not_found")
        try:
            answer = await console.client.inclusion_proof(session, index)
        except GatewayRefused as exc:
            if exc.code is not grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # no signed checkpoint covers the record yet: offer to ask for one
            return console.render(request, "proof_wait.html", index=index, detail=exc.details)
        check = check_inclusion(
            found.leaf_hash,
            index=index,
            answer=answer,
            registry=console.registry.current(),
            region=console.config.region,
            now=console.clock(),
        )
        return console.render(request, "proof.html", record=found, check=check)

    async def sign(request: Request) -> Response:
        session = console.require(request, Role.STAFF)
        values = await console.form(request, session)
        index = values.get("index", "")
        if not index.isascii() or not index.isdigit() or len(index) > 18:
            raise HTTPException(400, "error")
        await console.client.sign_checkpoint(session)
        return RedirectResponse(f"/staff/records/{int(index)}/proof", status_code=303)

    return [
        Route("/staff/records/{index}/proof", proof),
        Route("/staff/checkpoint", sign, methods=["POST"]),
    ]


def _index(request: Request) -> int:
    text = str(request.path_params["index"])
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise HTTPException(404, "not_found")
    return int(text)
