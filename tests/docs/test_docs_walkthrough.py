"""The commands the README and the docs show, run for real (issue 13): each test takes the
commands of one page from the page itself (tests/docs_support.py), puts a scratch folder where
the page names its own (`/tmp/g/pki`, `PKI`, a key id), and runs them in order with bash, as a
reader pasting them would. A command whose output a page shows must exit 0; the page's figures
(record counts, key ids, times) are its own run's and are not compared.

tests/unit/test_docs_commands.py maps every command of the docs to the test that runs it."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from docs_support import REPO, WALKTHROUGH
from support import VENV, free_port, interrupted_at_end, shell_env

from gateway.demo.data import DemoData
from gateway.evidence import REQUEST_SIGNATURE_SEALED
from registry import Inventory, KeyState, KeyUsage

pytestmark = pytest.mark.integration

COMMAND_TIMEOUT = 300  # seconds: a hang guard on a loaded 2-core machine
Substitution = tuple[str, str | Callable[[], str]]


def sandbox(folder: Path) -> Path:
    """A folder where `.venv/bin/tongban` and `tongban` both mean this virtualenv's."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".venv").symlink_to(VENV)
    return folder


def substitute(text: str, substitutions: Sequence[Substitution]) -> str:
    for pattern, value in substitutions:
        text = re.sub(pattern, value if isinstance(value, str) else lambda _m, v=value: v(), text)
    return text


def page_commands(test: str) -> list[str]:
    """The commands `test` runs, as tests/unit/test_docs_commands.py knows it does."""
    return WALKTHROUGH[test].commands()


def run_all(
    cwd: Path, texts: Sequence[str], substitutions: Sequence[Substitution]
) -> dict[str, str]:
    """Run each command in order; all must exit 0. The output of each, by command."""
    outputs = {}
    previous: dict[str, str] = {}
    for text in texts:
        verb, full = " ".join(text.split()[:3]), text
        if " ... " in text:  # `tongban audit prune ... --yes`: the arguments of the one before
            full = text.replace(" ... ", f" {previous[verb]} ")
        previous[verb] = full.split(" ", 3)[3] if len(full.split(" ", 3)) > 3 else ""
        concrete = substitute(full, substitutions)
        done = subprocess.run(
            ["bash", "-c", concrete],
            cwd=cwd,
            env=shell_env(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"$ {concrete}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"$ {concrete}\n{done.stderr}"
        outputs[text] = done.stdout
    return outputs


def kid(pki: Path, owner: str, usage: KeyUsage, state: KeyState) -> Callable[[], str]:
    def find() -> str:
        return Inventory.load(pki).find(owner, usage, state)[0].kid

    return find


# the registry and the keys ------------------------------------------------------------------
def test_docs_registry_md_commands(tmp_path: Path) -> None:
    run_all(sandbox(tmp_path), page_commands("test_docs_registry_md_commands"), [])
    assert (tmp_path / "out" / "published" / "registry-3.jws").is_file()


def test_docs_operators_md_key_commands(tmp_path: Path) -> None:
    cwd = sandbox(tmp_path)
    run_all(cwd, ["tongban pki init --out pki --regions 330000,510000,500000"], [])
    run_all(cwd, ["tongban registry publish --pki pki --out published"], [])
    texts = page_commands("test_docs_operators_md_key_commands")
    # KID: the key the rotation just retired
    retired = kid(cwd / "pki", "330000", KeyUsage.SEAL, KeyState.RETIRING)
    run_all(cwd, texts, [(r"\bKID\b", retired)])


def test_docs_security_md_commands(tmp_path: Path) -> None:
    cwd = sandbox(tmp_path)
    pki = cwd / "g" / "pki"
    texts = page_commands("test_docs_security_md_commands")
    run_all(
        cwd,
        texts,
        [
            (r"/tmp/g", str(cwd / "g")),
            (r"\bPKI\b", "g/pki"),
            (r"\bPUBLISHED\b", "g/published"),
            # `keys revoke ... superseded <kid>`: the seal key the rotation retired
            (r"\bG0AnDLbc[\w-]+", kid(pki, "330000", KeyUsage.SEAL, KeyState.RETIRING)),
            (r"\bREASON\b", "superseded"),
            (r" \[--at (TIME|SINCE)\]", ""),
            (r"(?<![\w-])KID\b", kid(pki, "510000", KeyUsage.SEAL, KeyState.ACTIVE)),
            (r"\bOLD_KID\b", kid(pki, "330000", KeyUsage.SEAL, KeyState.ACTIVE)),
        ],
    )
    states = {(k.owner, k.usage, k.state) for k in Inventory.load(pki).records()}
    assert ("330000", KeyUsage.SEAL, KeyState.ACTIVE) in states  # the one `keys generate` made


def test_docs_monitoring_md_key_commands(tmp_path: Path) -> None:
    cwd = sandbox(tmp_path)
    run_all(cwd, ["tongban pki init --out pki --regions 330000,510000,500000"], [])
    run_all(cwd, ["tongban registry publish --pki pki --out published"], [])
    texts = page_commands("test_docs_monitoring_md_key_commands")
    run_all(
        cwd,
        texts,
        [
            (r"\bPKI\b", "pki"),
            (r"\bPUBLISHED\b", "published"),
            (r"\bOWNER\b", "510000"),
            (r"\bUSAGE\b", "token"),
        ],
    )


# the audit log, from a demo's --------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding `tongban demo --dir demo`'s PKI, registry and audit logs."""
    cwd = sandbox(tmp_path_factory.mktemp("docs-audit"))
    run_all(cwd, ["tongban demo --dir demo"], [])
    return cwd


AUDIT_SUBSTITUTIONS: list[Substitution] = [
    (r"/tmp/g/pki|\bout/pki\b|\bPKI\b", "demo/pki"),
    (r"/run/secrets/audit-pseudonym\b", "demo/pki/audit-pseudonym.secret"),
    (r"(?<![\w/-])(audit-\d{6}\.db)", r"demo/\1"),
    (r"(?<![\w/-])audit\.db\b", "demo/audit-510000.db"),
    (r"\bREGION\b", "510000"),
    (r"(?<![\w/-])current\.jws", "demo/published/current.jws"),
    (r"(?<![\w/-])root\.json", "demo/pki/authority/root.json"),
]


def signed_forward_id(log: Path) -> Callable[[], str]:
    """The request id of a Peer.Forward record of `log` that keeps its signed request."""

    def find() -> str:
        with contextlib.closing(sqlite3.connect(log)) as db:
            rows = db.execute("SELECT canonical FROM audit_records ORDER BY idx").fetchall()
        for (canonical,) in rows:
            record = json.loads(canonical)
            if record["rpc"] == "/tongban.v1.Peer/Forward" and record.get("request_sealed"):
                return str(record["request_id"])
        raise AssertionError(f"{log} holds no Peer.Forward record with a signed request")

    return find


def test_docs_audit_and_oversight_commands(demo_folder: Path) -> None:
    cwd = demo_folder
    size = json.loads(
        run_all(
            cwd,
            [
                "tongban audit proof --sqlite demo/audit-510000.db --pki demo/pki "
                "--region 510000 --index 0"
            ],
            [],
        )[
            "tongban audit proof --sqlite demo/audit-510000.db --pki demo/pki --region 510000 --index 0"
        ]
    )["size"]
    assert size >= 3, "the demo's log is too short for the proofs the page shows"
    # The evidence bundle of 四川's first answer to another region (a Peer.Forward that keeps
    # the asking region's signed request): its checkpoint is witnessed (the demo's audit-proof
    # story waits for the cosignatures), so check-evidence passes every part.
    request_id = signed_forward_id(cwd / "demo" / "audit-510000.db")()
    forwarded = signed_forward_id(cwd / "demo" / "audit-330000.db")
    # The pages' indices and sizes are their run's: the same shape within this log.
    shapes: list[Substitution] = [
        (r"--index 41\b", "--index 1"),
        (r"--size 14\b", f"--size {size - 1}"),
        (r"--consistency 14 --to 21\b", f"--consistency {size - 2} --to {size}"),
        (r"\bREQUEST_ID\b", request_id),
        (r"--request-id req-0001\b", lambda: f"--request-id {forwarded()}"),
        (r"\bout/published/current\.jws\b", "demo/published/current.jws"),
    ]
    run_all(
        cwd,
        page_commands("test_docs_audit_and_oversight_commands"),
        [*shapes, *AUDIT_SUBSTITUTIONS],
    )
    assert (cwd / "audit-510000.pem").is_file()  # what the page's Python snippet writes
    assert (cwd / "kept-510000.checkpoint").is_file()
    # 重庆's first record is a Peer.Forward that keeps 四川's signed request: the bundle proves
    # its digest (in the record) and says where the request is, without copying it.
    bundle = json.loads((cwd / "evidence.json").read_bytes())
    assert json.loads(bundle["record"])["request_digest"]
    assert bundle["absent"]["request_signature"] == REQUEST_SIGNATURE_SEALED


def test_docs_monitoring_md_audit_verify(demo_folder: Path) -> None:
    run_all(demo_folder, page_commands("test_docs_monitoring_md_audit_verify"), AUDIT_SUBSTITUTIONS)


def test_docs_integrating_md_commands(demo_folder: Path) -> None:
    cwd = demo_folder
    pki = cwd / "demo" / "pki"
    (seal_key,) = Inventory.load(pki).find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    answer = cwd / "answer.json"
    answer.write_text('{"name":"张三","status":"参保缴费"}', encoding="utf-8")
    run_all(
        cwd,
        [
            f"tongban seal answer.json --key {pki / seal_key.private_key} "
            f"--cert {pki / seal_key.certificate} --out answer.jws"
        ],
        [],
    )
    outputs = run_all(cwd, page_commands("test_docs_integrating_md_commands"), AUDIT_SUBSTITUTIONS)
    token = next(out for text, out in outputs.items() if "token issue" in text).strip()
    assert token.count(".") == 2  # a compact JWT
    verdict = next(out for text, out in outputs.items() if text.startswith("tongban verify"))
    assert "TOTAL_PASSED" in verdict


# the README: three regions by hand ---------------------------------------------------------
def _background(command: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=cwd,
        env=shell_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[str]]]:
    with interrupted_at_end(15) as started:
        yield started


def _ready(port: int, processes: Sequence[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.read().strip() == b"ready":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        dead = [p for p in processes if p.poll() is not None]
        assert not dead, [p.stderr.read() if p.stderr else "" for p in dead]
        assert time.monotonic() < deadline, f"nothing ready on :{port}"
        time.sleep(0.3)


def test_readme_three_regions_by_hand(
    tmp_path: Path, background: list[subprocess.Popen[str]]
) -> None:
    cwd = sandbox(tmp_path)
    # The fixed demo ports may be taken on a shared machine: the same files on free ports.
    ports = {fixed: str(free_port()) for fixed in ("7510", "8510", "9510", "7500", "8500", "9500")}
    moved: list[Substitution] = [(rf"(?<=:){fixed}\b", port) for fixed, port in ports.items()]
    (cwd / "conf" / "demo").mkdir(parents=True)
    for region in ("510000", "500000"):
        name = f"gateway-{region}.toml"
        text = (REPO / "conf" / "demo" / name).read_text(encoding="utf-8")
        (cwd / "conf" / "demo" / name).write_text(substitute(text, moved), encoding="utf-8")
    texts = page_commands("test_readme_three_regions_by_hand")
    assert texts, "the README lost its section"
    for text in texts:
        concrete = substitute(text, moved)
        if concrete.endswith("&"):
            background.append(_background(concrete.removesuffix("&").strip(), cwd))
        else:
            run_all(cwd, [concrete], [])
    for port in (ports["8510"], ports["8500"]):
        _ready(int(port), background)

    # An agency of 四川 asks its gateway for a 重庆 record, with examples/client.py: a business
    # licence, as its docstring shows (a citizen's records need an open case, docs/cases.md).
    pki = cwd / "out" / "demo" / "pki"
    (tls,) = Inventory.load(pki).find("sc.hrss", KeyUsage.TLS, KeyState.ACTIVE)
    token = run_all(cwd, [f"tongban token issue --pki {pki} --agency sc.hrss --operator 张三"], [])
    data = DemoData("500000")
    subject = next(b for b in data.businesses(20) if data.record("market.business_licence", b))
    client = [
        sys.executable,
        str(REPO / "examples" / "client.py"),
        "--gateway",
        f"localhost:{ports['7510']}",
        "--cert",
        str(pki / tls.certificate),
        "--key",
        str(pki / tls.private_key),
        "--ca",
        str(pki / "regions" / "510000" / "ca" / "root.pem"),
        "--token",
        next(iter(token.values())).strip(),
        "--provider-region",
        "500000",
        "--dataset",
        "market.business_licence",
        "--purpose",
        "LICENCE-VERIFY",
        "--subject",
        subject,
        "--case-id",
        "CASE-2026-0001",
    ]
    done = subprocess.run(
        client, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "seal verification: TOTAL_PASSED" in done.stdout
    for process in background:
        process.send_signal(signal.SIGINT)
    for process in background:
        assert process.wait(timeout=15) == 0
