"""The web console in process (httpx against the ASGI app) with the three regions' gateways in
process: log-in refusals, the pages each role may see, security headers, CSRF, escaping of a
real audit record holding markup, and that a citizen's pages hold nothing of another's.

One federation and two consoles for the module: `real` talks to 重庆's gateway; `double` to a
test double of the gateway's Tracker, Consents and Cases services, answering each citizen (from
the token the console sends, verified) with entries of that citizen's own, made up and named per
citizen, so that what a page shows is seen to follow from the session's token; and refusals the
real gateway gives only in states hard to reach here. Odd requests of every kind get a page,
never a server error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import make_federation, region_root

from gateway.audit import AuditQuery
from gateway.console import EmbeddedServer, create_app
from gateway.console._app import SecurityHeaders
from gateway.console._config import ConsoleConfig, ConsoleConfigError
from gateway.console._proof import check_inclusion
from registry import pki_trusted_root_path
from tongban.v1 import (
    cases_pb2,
    cases_pb2_grpc,
    consents_pb2,
    consents_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

REGION = "500000"
PORTAL, OVERSIGHT = "cq.hrss", "cq.data"
SCRIPT = "<script>alert(1)</script>"
IMAGE = '"><img src=x onerror=alert(1)>'
SECURITY = {
    "content-security-policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
CITIZEN_PAGES = ("/me/trail", "/me/consents", "/me/cases")
STAFF_PAGES = ("/staff/records", "/staff/records/0", "/staff/verify", "/staff/alerts")
STAFF_PAGES += ("/staff/trail", "/staff/records/0/proof")


def console_config(cluster: Cluster, folder: Path, port: int) -> ConsoleConfig:
    fed = cluster.fed
    (portal_cert, portal_key), (over_cert, over_key) = map(fed.tls_files, (PORTAL, OVERSIGHT))
    ca = folder / "ca.pem"
    ca.write_bytes(region_root(fed, REGION))
    table = {
        "console": {"listen": "127.0.0.1:8600", "region": REGION},
        "gateway": {"address": f"localhost:{port}", "ca_file": str(ca)},
        "portal": {"certificate": str(portal_cert), "private_key": str(portal_key)},
        "oversight": {"certificate": str(over_cert), "private_key": str(over_key)},
        "registry": {
            "snapshot_file": str(fed.current),
            "trusted_root": str(pki_trusted_root_path(fed.pki)),
        },
    }
    return ConsoleConfig.from_table(table, folder / "console.toml")


@dataclass
class Double(
    tracker_pb2_grpc.TrackerServicer,
    consents_pb2_grpc.ConsentsServicer,
    cases_pb2_grpc.CasesServicer,
):
    """The gateway's citizen-facing answers, per applicant: entries whose case ids and consent
    ids name the applicant's key in `names` (never the citizen id itself)."""

    app: SecurityHeaders | None = None
    names: dict[str, str] = field(default_factory=dict)  # applicant -> what their data is named
    revoked: list[tuple[str, str]] = field(default_factory=list)  # (applicant, consent id)

    def applicant(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        assert self.app is not None
        metadata = dict(context.invocation_metadata() or ())
        token = str(metadata.get("authorization", "")).removeprefix("Bearer ")
        _, claims = self.app.console.logins.verify(token)  # the gateway would verify it too
        return claims.applicant

    async def Trail(self, request: Any, context: Any) -> tracker_pb2.TrailResponse:
        # a citizen's own trail; staff (no applicant) name the subject
        name = self.names[self.applicant(context) or request.subject_id]
        entry = tracker_pb2.TrailEntry(
            region="510000", audit_index=7, requester_agency="sc.hrss", requester_region="510000"
        )
        entry.case_id, entry.dataset, entry.purpose = f"CASE-{name}", "si.participation", "P"
        entry.time.FromDatetime(datetime.now(UTC))
        regions = [tracker_pb2.TrailRegion(region=r, answered=True, entries=1) for r in ("510000",)]
        return tracker_pb2.TrailResponse(entries=[entry], regions=regions)

    async def List(self, request: Any, context: Any) -> Any:
        name = self.names[self.applicant(context)]
        if isinstance(request, cases_pb2.ListCasesRequest):
            case = cases_pb2.Case(case_id=f"CASE-{name}", matter_code="M-1")
            return cases_pb2.ListCasesResponse(cases=[case])
        consent = consents_pb2.ConsentSummary(consent_id=f"consent-{name}", purpose="P")
        return consents_pb2.ListConsentsResponse(consents=[consent])

    async def Revoke(self, request: Any, context: Any) -> consents_pb2.ConsentSummary:
        self.revoked.append((self.applicant(context), request.consent_id))
        return consents_pb2.ConsentSummary(consent_id=request.consent_id, revoked=True)


async def serve_double(cluster: Cluster, double: Double) -> tuple[grpc.aio.Server, int]:
    """The double on a port of its own, with 重庆's gateway certificate (mutual TLS)."""
    chain, key = cluster.fed.tls_files(REGION)
    server = grpc.aio.server()
    tracker_pb2_grpc.add_TrackerServicer_to_server(double, server)
    consents_pb2_grpc.add_ConsentsServicer_to_server(double, server)
    # Cases.List only: a generic handler, the double's List telling the two requests apart
    handler = grpc.method_handlers_generic_handler(
        "tongban.v1.Cases",
        {
            "List": grpc.unary_unary_rpc_method_handler(
                double.List,
                request_deserializer=cases_pb2.ListCasesRequest.FromString,
                response_serializer=cases_pb2.ListCasesResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(key.read_bytes(), chain.read_bytes())],
        root_certificates=region_root(cluster.fed, REGION),
        require_client_auth=True,
    )
    port = server.add_secure_port("localhost:0", credentials)
    await server.start()
    return server, port


@dataclass
class World:
    cluster: Cluster
    real: SecurityHeaders
    double_app: SecurityHeaders
    double: Double
    citizens: tuple[str, str]
    hostile_index: int
    responses: list[httpx.Response] = field(default_factory=list)

    def token(self, agency: str = PORTAL, applicant: str = "", **options: Any) -> str:
        return self.cluster.token(agency, applicant=applicant, **options)

    def citizen_token(self, n: int = 0) -> str:
        return self.token(PORTAL, self.citizens[n])

    def client(self, app: SecurityHeaders | None = None) -> httpx.AsyncClient:
        async def keep(response: httpx.Response) -> None:
            self.responses.append(response)

        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app or self.real),
            base_url="http://console.test",
            event_hooks={"response": [keep]},
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("console-pages")
    fed = make_federation(root)
    fed.publish()
    async with running_cluster(fed, root) as cluster:
        index = await hostile_audit_record(cluster)
        real = create_app(console_config(cluster, root, cluster.ports[REGION]))
        double = Double()
        server, port = await serve_double(cluster, double)
        double.app = create_app(console_config(cluster, root, port))
        citizens = (cluster.subject(REGION, "si.participation"),)
        citizens += (cluster.subject(REGION, "si.participation", n=1),)
        double.names = {citizens[0]: "A-" + secrets.token_hex(4), citizens[1]: "B-" + "0" * 8}
        try:
            yield World(cluster, real, double.app, double, citizens, index)
        finally:
            await real.console.client.close()
            await double.app.console.client.close()
            await server.stop(0)


async def hostile_audit_record(cluster: Cluster) -> int:
    """A real query of 重庆's police with markup in its request id and case id: 重庆's audit log
    records it as given; its index there."""
    subject = cluster.subject("330000", "market.business_licence")
    query = request("330000", "market.business_licence", "LICENCE-VERIFY", subject)
    query.request_id, query.case_id = SCRIPT, IMAGE
    async with cluster.exchange("cq.psb") as stub:
        await stub.Query(query, metadata=bearer(cluster.token("cq.psb")), timeout=CALL_TIMEOUT)
    audit = cluster.gateways[REGION].audit
    assert audit is not None
    found = await audit.store.query(AuditQuery(caller_agency="cq.psb", limit=1000))
    indexes = [i for i, r in found if r.request_id == SCRIPT and r.case_id == IMAGE]
    assert indexes, "重庆's gateway did not record the query as it was given"
    return indexes[0]


async def log_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    page = await client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    return await client.post("/login", data={"csrf": csrf.group(1), "token": token})


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


# log-in refusals ---------------------------------------------------------------------------------
async def test_tokens_that_log_no_one_in_are_refused_with_a_page(world: World) -> None:
    now = datetime.now(UTC)
    citizen = world.citizens[0]
    refused = {
        "no token": ("", 401, "No token was given."),
        "garbage": ("not.a-token", 401, "The token is not valid"),
        "expired": (
            world.token(PORTAL, citizen, now=now - timedelta(minutes=10), lifetime=60),
            401,
            "The token has expired",
        ),
        "another region's": (world.token("zj.hrss", citizen), 401, "The token is not valid"),
        "bound to another certificate": (
            world.token(PORTAL, citizen, thumbprint=world.cluster.thumbprint("cq.psb")),
            401,
            "The token is not valid",
        ),
        "another agency's": (world.token("cq.psb", citizen), 401, "The token is not valid"),
        "a portal token without a citizen": (world.token(PORTAL), 403, "cannot log in here"),
        "an oversight token for a citizen": (
            world.token(OVERSIGHT, citizen),
            403,
            "cannot log in here",
        ),
    }
    for what, (token, status, words) in refused.items():
        async with world.client() as client:
            client.headers["accept-language"] = "en"
            answer = await log_in(client, token)
            assert answer.status_code == status, what
            assert words in answer.text, (what, answer.text)
            assert "Traceback" not in answer.text, what
            assert "tb_session" not in answer.cookies, what
            for page in CITIZEN_PAGES + STAFF_PAGES:
                assert (await client.get(page)).status_code == 401, (what, page)


async def test_a_request_without_a_session_gets_no_page(world: World) -> None:
    async with world.client() as client:
        home = await client.get("/")
        assert (home.status_code, home.headers["location"]) == (303, "/login")
        for page in CITIZEN_PAGES + STAFF_PAGES:
            client.cookies.set("tb_session", secrets.token_urlsafe(32))
            answer = await client.get(page + "?lang=en")
            assert answer.status_code == 401, page
            assert "Please log in first." in answer.text
        posted = await client.post("/me/consents/revoke", data={"consent_id": "x", "csrf": "y"})
        assert posted.status_code == 401


async def test_each_role_sees_only_its_own_pages(world: World) -> None:
    async with world.client() as citizen, world.client() as staff:
        logged_in = await log_in(citizen, world.citizen_token())
        assert logged_in.headers["location"] == "/me/trail"
        assert (await log_in(staff, world.token(OVERSIGHT))).headers["location"] == (
            "/staff/records"
        )
        cookie = logged_in.headers.get_list("set-cookie")
        assert any(
            c.startswith("tb_session=") and "HttpOnly" in c and "SameSite=strict" in c
            for c in cookie
        ), cookie
        assert not any("Secure" in c for c in cookie)  # served without TLS here
        for page in STAFF_PAGES:
            assert (await citizen.get(page + "?lang=en")).status_code == 403, page
        for page in CITIZEN_PAGES:
            answer = await staff.get(page + "?lang=en")
            assert answer.status_code == 403, page
            assert "This page is not for your kind of account." in answer.text
        cases = await citizen.get("/me/cases?lang=en")
        assert cases.status_code == 200  # the real Cases.List with the applicant's token
        assert "My cases" in cases.text
        assert world.citizens[0] in cases.text
        verify = await staff.get("/staff/verify?lang=en")
        assert verify.status_code == 200
        assert 'id="intact"' in verify.text


# headers, CSRF -----------------------------------------------------------------------------------
async def test_every_response_carries_the_security_headers(world: World) -> None:
    async with world.client() as client:
        await client.get("/login")
        await client.get("/static/console.css")
        await client.get("/no/such/page")
        await log_in(client, world.token(OVERSIGHT))
        await client.get("/staff/records")
        await client.get("/staff/records/99999999")
        await client.get("/staff/records/abc")
        await client.get("/me/trail")
    assert {r.status_code for r in world.responses} >= {200, 303, 401, 403, 404}
    for response in world.responses:
        for name, value in SECURITY.items():
            assert response.headers.get(name) == value, (response.url, name)
        assert "strict-transport-security" not in response.headers  # served without TLS


async def test_a_post_without_the_right_csrf_token_is_refused_and_changes_nothing(
    world: World,
) -> None:
    async with world.client(world.double_app) as client:
        await log_in(client, world.citizen_token())
        page = await client.get("/me/consents")
        consent = f"consent-{world.double.names[world.citizens[0]]}"
        assert consent in page.text
        for csrf in ({}, {"csrf": ""}, {"csrf": "x" + csrf_of(page)}):
            answer = await client.post(
                "/me/consents/revoke?lang=en", data={"consent_id": consent, **csrf}
            )
            assert answer.status_code == 403, csrf
            assert "The form has expired" in answer.text
        assert world.double.revoked == []
        answer = await client.post(
            "/me/consents/revoke", data={"consent_id": consent, "csrf": csrf_of(page)}
        )
        assert (answer.status_code, answer.headers["location"]) == (303, "/me/consents")
        assert world.double.revoked == [(world.citizens[0], consent)]
        # the log-in form's double-submit token: a wrong one logs no one in
        login = await client.get("/login")
        wrong = await client.post(
            "/login", data={"csrf": csrf_of(login) + "x", "token": world.citizen_token()}
        )
        assert wrong.status_code == 403
        # logging out needs the session's token too
        assert (await client.post("/logout", data={"csrf": "nope"})).status_code == 403
        assert (await client.get("/me/consents")).status_code == 200
        out = await client.post("/logout", data={"csrf": csrf_of(page)})
        assert out.status_code == 303
        assert (await client.get("/me/consents")).status_code == 401


# escaping ----------------------------------------------------------------------------------------
async def test_markup_in_a_real_audit_record_is_shown_as_text(world: World) -> None:
    async with world.client() as client:
        await log_in(client, world.token(OVERSIGHT))
        listed = await client.get("/staff/records")
        record = await client.get(f"/staff/records/{world.hostile_index}")
    assert listed.status_code == record.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listed.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in record.text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in record.text
    for page in (listed.text, record.text):
        assert "<script" not in page
        assert "<img" not in page


# one citizen, their own data ---------------------------------------------------------------------
async def test_a_citizen_never_sees_another_citizens_data(world: World) -> None:
    names = world.double.names
    a, b = world.citizens
    async with world.client(world.double_app) as first, world.client(world.double_app) as second:
        await log_in(first, world.citizen_token(0))
        await log_in(second, world.citizen_token(1))
        for page in ("/me/trail", "/me/cases", "/me/consents"):
            mine, theirs = await first.get(page), await second.get(page)
            assert mine.status_code == theirs.status_code == 200, page
            assert names[a] in mine.text, page
            assert names[b] not in mine.text, page
            assert names[b] in theirs.text, page
            assert names[a] not in theirs.text, page
            assert b not in mine.text, page  # nor the other's id
            assert a not in theirs.text, page


async def test_through_the_real_gateway_a_citizen_sees_their_own_trail_only(world: World) -> None:
    """The same, with 重庆's own gateway answering (Tracker.Trail across the three regions):
    each citizen's data asked by 四川 under a case id naming that citizen (recorded by 四川's
    gateway and by 重庆's); each citizen's trail page holds their own case id, never the
    other's, and every region answered."""
    a, b = world.citizens
    marks = {a: f"CASE-A-{secrets.token_hex(3)}", b: f"CASE-B-{secrets.token_hex(3)}"}
    async with world.cluster.exchange("sc.hrss") as stub:
        for citizen, case in marks.items():
            query = request(REGION, "si.participation", "SI-TRANSFER", citizen, case_id=case)
            token = world.cluster.token("sc.hrss")
            await stub.Query(query, metadata=bearer(token), timeout=CALL_TIMEOUT)
    async with world.client() as first, world.client() as second:
        await log_in(first, world.citizen_token(0))
        await log_in(second, world.citizen_token(1))
        mine, theirs = await first.get("/me/trail"), await second.get("/me/trail")
        assert mine.status_code == theirs.status_code == 200
        assert mine.text.count('class="ok"') == theirs.text.count('class="ok"') == 3
        assert marks[a] in mine.text
        assert marks[b] not in mine.text
        assert marks[b] in theirs.text
        assert marks[a] not in theirs.text
        assert b not in mine.text  # nor the other's id
        assert a not in theirs.text


# staff pages ----------------------------------------------------------------------------------
async def test_an_overseer_checks_a_records_inclusion_proof_step_by_step(world: World) -> None:
    index = world.hostile_index
    async with world.client() as client:
        await log_in(client, world.token(OVERSIGHT))
        page = await client.get(f"/staff/records/{index}/proof?lang=en")
        assert page.status_code == 200
        if 'id="sign"' in page.text:  # no checkpoint covers it yet: ask for one
            refused = await client.post("/staff/checkpoint", data={"index": str(index)})
            assert refused.status_code == 403
            signed = await client.post(
                "/staff/checkpoint", data={"index": str(index), "csrf": csrf_of(page)}
            )
            assert signed.headers["location"] == f"/staff/records/{index}/proof"
            page = await client.get(signed.headers["location"])
        assert 'id="verdict" class="ok"' in page.text
        assert "failed" not in page.text
        assert page.text.count("<li") >= 5
        bad = await client.post("/staff/checkpoint", data={"index": "x1", "csrf": csrf_of(page)})
        assert bad.status_code == 400


async def test_a_proof_that_does_not_hold_is_shown_failing_at_its_step(world: World) -> None:
    console = world.real.console
    token = world.token(OVERSIGHT)
    role, claims = console.logins.verify(token)
    session = console.sessions.open(token, role, claims)
    index = world.hostile_index
    record = await console.client.record(session, index)
    assert record is not None
    answer = await console.client.inclusion_proof(session, index)

    def check(changed: Any, leaf: bytes = record.leaf_hash) -> Any:
        return check_inclusion(
            leaf,
            index=index,
            answer=changed,
            registry=console.registry.current(),
            region=REGION,
            now=datetime.now(UTC),
        )

    good = check(answer)
    assert good.verified
    assert good.reached == good.root == good.checkpoint_root
    other_leaf = check(answer, leaf=bytes(32))
    assert not other_leaf.leaf_matches
    assert not other_leaf.verified
    tampered = type(answer)()
    tampered.CopyFrom(answer)
    tampered.hashes[0] = bytes(32)
    broken = check(tampered)
    assert not broken.proof_holds
    assert broken.proof_problem
    assert broken.reached != broken.root
    unsigned = type(answer)()
    unsigned.CopyFrom(answer)
    unsigned.ClearField("checkpoint")
    alone = check(unsigned)
    assert not alone.checkpoint_signed
    assert alone.checkpoint_problem == "no signed checkpoint came with the proof"
    assert not alone.verified
    forged = type(answer)()
    forged.CopyFrom(answer)
    forged.checkpoint.note = answer.checkpoint.note.replace("\n\n", "\n\nx", 1)
    assert not check(forged).checkpoint_signed


async def test_the_staff_pages_ask_the_gateway_and_refuse_bad_arguments(world: World) -> None:
    async with world.client() as client:
        await log_in(client, world.token(OVERSIGHT))
        found = await client.get(
            "/staff/records?outcome=allowed&dataset=market.business_licence"
            "&purpose=LICENCE-VERIFY&agency=cq.psb"
        )
        assert found.status_code == 200
        assert f'href="/staff/records/{world.hostile_index}"' in found.text
        none = await client.get("/staff/records?agency=nobody")
        assert 'tr class="record"' not in none.text
        assert (await client.get("/staff/records?dataset=" + "x" * 200)).status_code == 400
        assert (await client.get("/staff/records/99999999")).status_code == 404
        assert (await client.get("/staff/records/99999999/proof")).status_code == 404
        alerts = await client.get("/staff/alerts?lang=en")
        assert alerts.status_code == 200
        assert "forks" in alerts.text.lower()
        form = await client.get("/staff/trail")
        assert form.status_code == 200
        empty = await client.post("/staff/trail", data={"csrf": csrf_of(form), "subject": " "})
        assert empty.status_code == 400
        trail = await client.post(
            "/staff/trail", data={"csrf": csrf_of(form), "subject": world.citizens[0]}
        )
        assert trail.status_code == 200
        assert trail.text.count('class="ok"') == 3  # every region answered
        nobody = await client.post(
            "/staff/trail", data={"csrf": csrf_of(form), "subject": "<b>nobody</b>"}
        )
        assert nobody.status_code == 200
        assert "<b>nobody" not in nobody.text
        assert 'tr class="entry"' not in nobody.text
    async with world.client(world.double_app) as client:
        await log_in(client, world.token(OVERSIGHT))
        form = await client.get("/staff/trail")
        trail = await client.post(
            "/staff/trail", data={"csrf": csrf_of(form), "subject": world.citizens[1]}
        )
        assert trail.status_code == 200
        assert world.double.names[world.citizens[1]] in trail.text
        assert 'class="ok"' in trail.text


async def test_a_citizen_page_the_gateway_refuses_is_a_page_not_a_trace(world: World) -> None:
    async with world.client() as client:
        await log_in(client, world.citizen_token())
        trail = await client.get("/me/trail?lang=en")
        assert trail.status_code == 200
        assert trail.text.count('class="ok"') == 3  # every region answered
    async with world.client(world.double_app) as client:
        page = await log_in(client, world.citizen_token(1))
        consents = await client.get(page.headers["location"].replace("trail", "consents"))
        nothing = await client.post(
            "/me/consents/revoke", data={"csrf": csrf_of(consents), "consent_id": ""}
        )
        assert nothing.status_code == 400


# configuration -------------------------------------------------------------------------------
async def test_a_configuration_that_cannot_be_used_is_refused_naming_the_key(
    world: World, tmp_path: Path
) -> None:
    good = console_config(world.cluster, tmp_path, 7500)
    assert (good.region, good.portal.agency, good.oversight.agency) == (REGION, PORTAL, OVERSIGHT)
    assert not good.over_tls
    text = tmp_path / "console.toml"
    base = {
        "console": {"listen": "127.0.0.1:8600", "region": REGION},
        "gateway": {"address": "localhost:1", "ca_file": str(tmp_path / "ca.pem")},
        "portal": {"certificate": str(world.cluster.fed.tls_files(PORTAL)[0]),
                   "private_key": str(world.cluster.fed.tls_files(PORTAL)[1])},
        "oversight": {"certificate": str(world.cluster.fed.tls_files(OVERSIGHT)[0]),
                      "private_key": str(world.cluster.fed.tls_files(OVERSIGHT)[1])},
        "registry": {"snapshot_file": str(world.cluster.fed.current),
                     "trusted_root": str(pki_trusted_root_path(world.cluster.fed.pki))},
    }  # fmt: skip
    wrong = {
        "unknown section [web]": {"web": {}},
        "unknown key console.port": {"console": {**base["console"], "port": 1}},
        "console.listen must be host:port": {"console": {"listen": "8600", "region": REGION}},
        "console.region must be a GB/T 2260 code": {
            "console": {"listen": "127.0.0.1:1", "region": "50"}
        },
        "go together": {"console": {**base["console"], "tls_certificate": "x.pem"}},
        "gateway.address must be a non-empty string": {"gateway": {"ca_file": "ca.pem"}},
        "is not a file": {"gateway": {"address": "localhost:1", "ca_file": "nothing.pem"}},
        "names no agency": {"portal": {"certificate": str(world.cluster.fed.tls_files(REGION)[0]),
                                       "private_key": base["portal"]["private_key"]}},
        "not a readable agency certificate": {"oversight": {
            "certificate": base["portal"]["private_key"],
            "private_key": base["portal"]["private_key"]}},
    }  # fmt: skip
    for words, change in wrong.items():
        with pytest.raises(ConsoleConfigError, match=re.escape(words)):
            ConsoleConfig.from_table({**base, **change}, text)
    text.write_text("[console\n", encoding="utf-8")
    with pytest.raises(ConsoleConfigError, match="cannot be read as TOML"):
        ConsoleConfig.from_file(text)


async def test_the_console_serves_its_pages_with_uvicorn(world: World, tmp_path: Path) -> None:
    config = console_config(world.cluster, tmp_path, world.cluster.ports[REGION])
    server = EmbeddedServer(dataclasses.replace(config, listen_port=0))  # a lone server: port 0
    task = asyncio.create_task(server.serve())
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            page = await client.get("/login?lang=en")
            css = await client.get("/static/console.css")
        assert page.status_code == css.status_code == 200
        assert '<html lang="en">' in page.text
        assert page.headers["x-frame-options"] == css.headers["x-frame-options"] == "DENY"
        assert "server" not in page.headers
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


# odd requests --------------------------------------------------------------------------------
ODD_GETS = (
    "/staff/records/-1",
    "/staff/records/abc",
    "/staff/records/99999999999999999999999",
    "/staff/records/1e3",
    "/staff/records/%00",
    "/staff/records/0/proof?x=%ff",
    "/staff/records?start=abc",
    "/staff/records?outcome=nope",
    "/staff/records?since=notadate&until=2026-13-45",
    "/staff/records?dataset=%00&agency=%ff%fe",
    "/staff/records?lang=" + "x" * 5000,
    "/staff/records?" + "a=1&" * 2000,
    "/staff/verify?lang=%00",
    "/staff/alerts?x=" + "y" * 60000,
    "/static/../_app.py",
    "/static/%2e%2e/_app.py",
    "/nope",
    "/login?next=http://elsewhere.test/",
)
ODD_BODIES = (
    (b"\xff\xfe", "application/x-www-form-urlencoded"),
    (b"{}", "application/json"),
    (b"--x\r\n", "multipart/form-data; boundary=x"),
    (b"a=" + b"b" * 3_000_000, "application/x-www-form-urlencoded"),
)


def not_a_server_error(response: httpx.Response) -> bool:
    return response.status_code < 500 and "Traceback" not in response.text


async def test_odd_requests_get_a_page_never_a_server_error(world: World) -> None:
    """Paths, parameters, form fields, bodies and cookies no page expects: each is answered with
    a page (a refusal, a redirect or nothing found), never a server error or a trace."""
    failed: list[tuple[str, int]] = []

    def check(what: str, response: httpx.Response) -> None:
        if not not_a_server_error(response):
            failed.append((what[:60], response.status_code))

    async with world.client() as client:
        await log_in(client, world.token(OVERSIGHT))
        for path in ODD_GETS:
            check(path, await client.get(path))
        csrf = csrf_of(await client.get("/staff/trail"))
        for fields in ({"subject": "x" * 10000}, {"subject": "\x00"}, {}, {"since": "zz"}):
            check(
                f"trail {fields}", await client.post("/staff/trail", data={"csrf": csrf, **fields})
            )
        for body, kind in ODD_BODIES:
            for path in ("/staff/trail", "/staff/checkpoint", "/login", "/logout"):
                headers = {"content-type": kind}
                check(f"{path} {kind}", await client.post(path, content=body, headers=headers))
    async with world.client() as client:
        await log_in(client, world.citizen_token())
        csrf = csrf_of(await client.get("/me/consents"))
        for consent_id in ("x" * 200, "\x00", "../../", "<b>", "c-" + "0" * 40):
            data = {"csrf": csrf, "consent_id": consent_id}
            check(f"revoke {consent_id}", await client.post("/me/consents/revoke", data=data))
    async with world.client() as client:
        for token in ("a" * 100_000, "\x00", "a.b.c", "e30.e30.e30"):
            csrf = csrf_of(await client.get("/login"))
            check(
                f"token {token}", await client.post("/login", data={"csrf": csrf, "token": token})
            )
        cookie = {"cookie": "session=" + "x" * 5000}
        check("cookie", await client.get("/staff/records", headers=cookie))
    assert not failed, failed
