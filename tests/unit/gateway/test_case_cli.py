"""`tongban case submit|show|list|act`: a wrong command line is one line and exit 2 before
anything is sent; a file or token that cannot be had is one `tongban:` line and exit 1; against
a stand-in Cases server over mutual TLS (the dev PKI's 四川 gateway certificate), each verb sends
the call it should, with a request token bound to the agency, shows the case with the applicant
masked, and a refusal is one line with its contract reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cli_support import Run
from support import Federation, make_federation

from gateway.errors import rich_status
from registry import KeyState, KeyUsage
from tongban.v1 import cases_pb2, cases_pb2_grpc, credentials_pb2

USAGE, FAILURE = 2, 1
APPLICANT = "500101199001011237"
CASE_ID = "510000-20261207-3F9A2C51D0"
UNSET = "TONGBAN_TEST_SURELY_UNSET"
SUBMIT = ("case", "submit", "--matter", "000125002100", "--applicant", APPLICANT)


def _case(audit_id: str = "audit.tongban/510000#7") -> cases_pb2.Case:
    case = cases_pb2.Case(
        case_id=CASE_ID,
        matter_code="000125002100",
        matter_name="异地就医登记备案",
        window_region="510000",
        window_agency="sc.hsa",
        state=cases_pb2.CASE_STATE_OPEN,
        applicant_id=APPLICANT,
        audit_id=audit_id,
        parts=[
            cases_pb2.CasePart(
                index=0, region="510000", role="receive", state=cases_pb2.PART_STATE_DONE
            ),
            cases_pb2.CasePart(
                index=1, region="500000", role="handle", state=cases_pb2.PART_STATE_READY
            ),
        ],
        materials=[
            cases_pb2.MaterialSummary(
                material_id="id-card",
                sha256="ab" * 32,
                size=812,
                format=credentials_pb2.SEAL_FORMAT_JADES,
                signer_region="500000",
                signer="重庆",
                verified_by_region="510000",
            )
        ],
        history=[
            cases_pb2.CaseEvent(
                event_id=f"{CASE_ID}/510000/1",
                kind="submitted",
                region="510000",
                agency="sc.hsa",
                part=-1,
                applied=True,
            )
        ],
    )
    case.submitted_at.FromSeconds(1_796_601_600)
    case.due_at.FromSeconds(1_796_688_000)
    return case


@dataclass
class Cases(cases_pb2_grpc.CasesServicer):
    """A stand-in gateway: keeps what it was asked, answers a case, or refuses when told."""

    calls: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)
    refuse: tuple[str, str] | None = None
    pages: int = 1

    def _seen(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.calls.append((method, request, dict(context.invocation_metadata())))
        if self.refuse is not None:
            reason, message = self.refuse
            context.abort_with_status(
                rich_status(grpc.StatusCode.FAILED_PRECONDITION, reason, message, {"part": "1"})
            )

    def Submit(self, request: Any, context: grpc.ServicerContext) -> cases_pb2.Case:
        self._seen("Submit", request, context)
        return _case()

    def Get(self, request: Any, context: grpc.ServicerContext) -> cases_pb2.Case:
        self._seen("Get", request, context)
        case = _case()
        if request.include_contents:
            case.materials[0].content = b"eyJhbGciOiJFUzI1NiJ9.e30.c2ln"
        return case

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen("List", request, context)
        number = int(request.page_token or "0") + 1
        more = str(number) if number < self.pages else ""
        return cases_pb2.ListCasesResponse(cases=[_case()], next_page_token=more)

    def Act(self, request: Any, context: grpc.ServicerContext) -> cases_pb2.Case:
        self._seen("Act", request, context)
        return _case()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    fed = make_federation(tmp_path_factory.mktemp("case-cli"))
    fed.publish()
    return fed


@pytest.fixture
def gateway(fed: Federation) -> Iterator[tuple[str, Cases]]:
    """The stand-in, serving mutual TLS with 四川's gateway certificate."""
    (tls,) = fed.inventory().find("510000", KeyUsage.TLS, KeyState.ACTIVE)
    root = (fed.pki / "regions" / "510000" / "ca" / "root.pem").read_bytes()
    credentials = grpc.ssl_server_credentials(
        [((fed.pki / tls.private_key).read_bytes(), (fed.pki / tls.certificate).read_bytes())],
        root_certificates=root,
        require_client_auth=True,
    )
    cases = Cases()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cases_pb2_grpc.add_CasesServicer_to_server(cases, server)
    port = server.add_secure_port("localhost:0", credentials)
    server.start()
    yield f"localhost:{port}", cases
    server.stop(0)


def _as(fed: Federation, address: str, agency: str = "sc.hsa") -> list[str]:
    return ["--gateway", address, "--pki", str(fed.pki), "--agency", agency]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["case", "act", CASE_ID, "--part", "1"], "one of the arguments --accept"),
        (["case", "act", CASE_ID, "--part", "1", "--reject"], "--reject needs --note"),
        (
            ["case", "act", CASE_ID, "--part", "1", "--request-material", "id-card"],
            "--request-material needs --note",
        ),
        (
            ["case", "act", CASE_ID, "--part", "1", "--accept", "--result", "r.jws"],
            "--result goes with --approve",
        ),
        (["case", "act", CASE_ID, "--part", "16", "--accept"], "a part is its index"),
        (["case", "act", CASE_ID, "--part", "x", "--accept"], "a part is its index"),
        (["case", "act", CASE_ID, "--accept"], "--part"),
        (["case", "act", "bad id", "--part", "1", "--accept"], "a case id is printable ASCII"),
        (
            ["case", "act", CASE_ID, "--part", "1", "--supplement", "id-card"],
            "give ID=FILE",
        ),
        (
            ["case", "act", CASE_ID, "--part", "1", "--request-material", "身份证", "--note", "n"],
            "a material id is the matter's",
        ),
        (
            ["case", "act", CASE_ID, "--part", "1", "--reject", "--note", "x" * 1001],
            "a note is at most 1000 characters",
        ),
        (
            ["case", "act", CASE_ID, "--part", "1", "--accept", "--detached", "a=b"],
            "--detached goes with --supplement or --result",
        ),
        (
            ["case", "submit", "--matter", "000125002100", "--applicant", APPLICANT],
            "give each material of the matter as --material ID=FILE",
        ),
        (
            ["case", "submit", "--matter", "000125002100", "--material", "a=b"],
            "--applicant",
        ),
        (
            [*SUBMIT, "--material", "a={file}", "--material", "a={file}"],
            "material a is given more than once",
        ),
        (
            [*SUBMIT, "--material", "a={file}", "--detached", "b={file}"],
            "--detached b: no such material is given",
        ),
        (["case", "list", "--state", "closed"], "invalid choice: 'closed'"),
        (["case", "list", "--limit", "0"], "the limit is a whole number from 1"),
        (["case", "show", CASE_ID, "--contents-to", "{file}"], "not a folder"),
        (["case", "show", CASE_ID, "--ca", "{file}"], "give --pki DIR --agency ID, or --ca"),
        (["case", "show", CASE_ID, "--pki", "{pki}"], "--pki needs --agency ID"),
        (["case", "show", CASE_ID], "give --pki DIR --agency ID"),
        (["case", "show", CASE_ID, "--gateway", "nohost"], "--gateway"),
    ],
)
def test_a_wrong_command_line_is_one_line_and_exit_2(
    run: Run, fed: Federation, tmp_path: Path, argv: list[str], fragment: str
) -> None:
    file = tmp_path / "material.jws"
    file.write_text("eyJ.e30.c2ln\n", encoding="utf-8")
    words = [a.format(file=file, pki=fed.pki) for a in argv]
    if "--gateway" not in words:
        words += ["--gateway", "localhost:1"]
    code, out, err = run(*words)
    assert code == USAGE, err
    assert out == ""
    assert fragment in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_what_cannot_be_had_is_one_line_and_exit_1(
    run: Run, fed: Federation, tmp_path: Path
) -> None:
    submit = ["case", "submit", "--matter", "000125002100", "--applicant", APPLICANT]
    code, out, err = run(*submit, "--material", f"id-card={tmp_path / 'missing.jws'}",
                         *_as(fed, "localhost:1"))  # fmt: skip
    assert (code, out) == (FAILURE, "")
    assert "material id-card cannot be read" in err
    code, _, err = run("case", "show", CASE_ID, *_as(fed, "localhost:1"), "--token-env", UNSET)
    assert code == FAILURE
    assert f"the environment variable {UNSET} holds no request token" in err
    code, _, err = run("case", "show", CASE_ID, *_as(fed, "localhost:1", agency="nobody"))
    assert code == FAILURE
    assert "nobody has no active TLS key" in err
    # The applicant's id is never in an error line.
    assert APPLICANT not in err


def test_submit_sends_the_materials_with_a_token_and_shows_the_case_masked(
    run: Run, fed: Federation, gateway: tuple[str, Cases], tmp_path: Path
) -> None:
    address, cases = gateway
    card = tmp_path / "id-card.jws"
    card.write_bytes(b"eyJhbGciOiJFUzI1NiJ9.e30.c2ln\n")
    form, form_data = tmp_path / "form.ses", tmp_path / "form.json"
    form.write_bytes(b"\x30\x82binary")
    form_data.write_bytes(b'{"form": 1}')
    code, out, err = run(
        "case", "submit", "--matter", "000125002100", "--applicant", APPLICANT,
        "--material", f"id-card={card}", "--material", f"filing-form={form}",
        "--detached", f"filing-form={form_data}", "--note", "异地代收",
        "--request-id", "req-1", *_as(fed, address),
    )  # fmt: skip
    assert code == 0, err
    ((method, request, metadata),) = cases.calls
    assert method == "Submit"
    assert (request.request_id, request.matter_code, request.applicant_id, request.note) == (
        "req-1",
        "000125002100",
        APPLICANT,
        "异地代收",
    )
    assert [(m.material_id, m.content, m.signed_data) for m in request.materials] == [
        ("id-card", b"eyJhbGciOiJFUzI1NiJ9.e30.c2ln", b""),  # the line break is not the JWS's
        ("filing-form", b"\x30\x82binary", b'{"form": 1}'),
    ]
    scheme, token = metadata["authorization"].split(" ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert scheme == "Bearer"
    assert claims["agency"] == "sc.hsa"
    assert claims["sub"] == "tongban case"
    assert "Submitted (request id req-1)." in out
    assert "500101***********7" in out
    assert APPLICANT not in out + err
    assert "audit.tongban/510000#7" in out


def test_show_json_and_contents(
    run: Run, fed: Federation, gateway: tuple[str, Cases], tmp_path: Path
) -> None:
    address, cases = gateway
    code, out, _ = run("case", "show", CASE_ID, "--json", *_as(fed, address, "sc.hrss"))
    assert code == 0
    document = json.loads(out)
    assert document["case_id"] == CASE_ID
    assert document["state"] == "open"
    assert document["applicant_id"] == "500101***********7"
    assert [p["state"] for p in document["parts"]] == ["done", "ready"]
    assert document["materials"][0]["format"] == "jades"
    assert document["history"][0]["kind"] == "submitted"
    assert document["submitted_at"] == "2026-12-07T00:00:00Z"
    assert not cases.calls[0][1].include_contents
    saved = tmp_path / "contents"
    code, out, _ = run("case", "show", CASE_ID, "--contents-to", saved, *_as(fed, address))
    assert code == 0
    assert cases.calls[1][1].include_contents
    assert (saved / "id-card.bin").read_bytes() == b"eyJhbGciOiJFUzI1NiJ9.e30.c2ln"
    assert "Saved 1 file(s)" in out


def test_list_follows_pages_up_to_the_limit(
    run: Run, fed: Federation, gateway: tuple[str, Cases]
) -> None:
    address, cases = gateway
    cases.pages = 3
    code, out, _ = run(
        "case", "list", "--state", "open", "--overdue", "--matter", "000125002100",
        "--limit", "2", "--json", *_as(fed, address),
    )  # fmt: skip
    assert code == 0
    assert len(json.loads(out)) == 2
    first, second = (request for _, request, _ in cases.calls)
    assert first.state == cases_pb2.CASE_STATE_OPEN
    assert first.overdue
    assert first.matter_code == "000125002100"
    assert (first.page_size, second.page_size, second.page_token) == (2, 1, "1")
    code, out, _ = run("case", "list", "--limit", "1", *_as(fed, address))
    assert code == 0
    assert "More cases match" in out
    assert APPLICANT not in out


@pytest.mark.parametrize(
    ("words", "action"),
    [
        (["--accept"], cases_pb2.CASE_ACTION_ACCEPT),
        (["--request-material", "id-card", "filing-form", "--note", "模糊"], 2),
        (["--approve"], cases_pb2.CASE_ACTION_APPROVE),
        (["--reject", "--note", "不符合条件"], cases_pb2.CASE_ACTION_REJECT),
    ],
)
def test_act_sends_the_action(
    run: Run, fed: Federation, gateway: tuple[str, Cases], words: list[str], action: int
) -> None:
    address, cases = gateway
    code, out, err = run("case", "act", CASE_ID, "--part", "1", *words, *_as(fed, address))
    assert code == 0, err
    ((_, request, _),) = cases.calls
    assert (request.case_id, request.part, request.action) == (CASE_ID, 1, action)
    assert request.request_id.startswith("cli-")
    assert f"request id {request.request_id}" in out
    if action == cases_pb2.CASE_ACTION_REQUEST_MATERIAL:
        assert list(request.material_ids) == ["id-card", "filing-form"]


def test_supplement_and_approve_with_a_result_carry_the_files(
    run: Run, fed: Federation, gateway: tuple[str, Cases], tmp_path: Path
) -> None:
    address, cases = gateway
    result, signed = tmp_path / "result.ses", tmp_path / "result.json"
    result.write_bytes(b"\x30\x82result")
    signed.write_bytes(b"{}")
    code, _, err = run("case", "act", CASE_ID, "--part", "1", "--approve", "--result", result,
                       "--detached", f"result={signed}", *_as(fed, address))  # fmt: skip
    assert code == 0, err
    code, _, err = run("case", "act", CASE_ID, "--part", "1", "--supplement",
                       f"id-card={result}", *_as(fed, address))  # fmt: skip
    assert code == 0, err
    (_, approve, _), (_, supplement, _) = cases.calls
    assert (approve.result.content, approve.result.signed_data) == (b"\x30\x82result", b"{}")
    assert [m.material_id for m in supplement.materials] == ["id-card"]
    assert supplement.action == cases_pb2.CASE_ACTION_SUPPLEMENT


def test_a_refusal_is_one_line_with_its_reason(
    run: Run, fed: Federation, gateway: tuple[str, Cases]
) -> None:
    address, cases = gateway
    cases.refuse = ("CASE_ACTION_NOT_ALLOWED", "part 1 is ready: it cannot be approved")
    code, out, err = run("case", "act", CASE_ID, "--part", "1", "--approve", *_as(fed, address))
    assert (code, out) == (FAILURE, "")
    assert err.strip() == (
        "tongban: the gateway refused: FAILED_PRECONDITION CASE_ACTION_NOT_ALLOWED: "
        "part 1 is ready: it cannot be approved (part 1)"
    )
