"""`tongban demo` end to end, as a newcomer runs it: a real process, its exit code and the
outcome each scenario line reports; with Redis and PostgreSQL; a demo whose registry lets an
over-broad query through fails; `--serve` answers `examples/client.py`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg_support import SUPERUSER_DSN, superuser
from support import DEMO_SOURCE, REPO

from gateway.demo.stories import SCENARIOS

pytestmark = pytest.mark.integration

DEMO_TIMEOUT = 120  # seconds: the whole demo takes a few on an idle 2-core machine
CITIZEN_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[0-9X](?![0-9A-Za-z])")

# What each scenario's line must say, besides OK: the outcome it exists to show.
EXPECTED = {
    "case-cy": (
        "submitted at 四川's window",
        "allowed under YC-SI-2026",
        "saw it completed",
        "the result sealed by 500000",
    ),
    "case-multi": ("refused CASE_NOT_OPEN", "四川 supplemented it", "重庆人社 handles part 2"),
    "si-transfer": ("allowed under YC-SI-2026", "sealed by 510000", "seal TOTAL_PASSED"),
    "cache": ("cache hit: True", "the same sealed bytes: True"),
    "licence": ("sealed by 330000", "on fetch (TOTAL_PASSED)", "again on request (TOTAL_PASSED)"),
    "over-broad": ("denied: PERMISSION_DENIED FIELD_NOT_ALLOWED", "gender"),
    "batch": ("2/3 items answered", "sealed by 330000, 510000", "refused: CASE_QUERY_NOT_ALLOWED"),
    "case-done": (
        "completed at 四川's window",
        "sealed by 330000, 500000",
        "refused CASE_NOT_OPEN",
    ),
    "rotation": (" 0 failed;", "v2 published the successor (pending)", "v3 activated it"),
    "subject-access": ("recorded by 四川 (the data owner)", "4 of them denied (expected 4)"),
    "audit-proof": ("signature valid", "included (proof of", "whole log intact"),
}


def demo(*argv: str | Path, timeout: float = DEMO_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", *map(str, argv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def scenario_lines(transcript: str) -> dict[str, tuple[str, str]]:
    """name -> (verdict, rest of the line) from the transcript's result lines."""
    found = {}
    for match in re.finditer(
        r"^\[(\d+)/(\d+)\] (\S+)  (OK|UNEXPECTED)  (.*)$", transcript, re.MULTILINE
    ):
        assert int(match.group(2)) == len(SCENARIOS)
        found[match.group(3)] = (match.group(4), match.group(5))
    return found


def test_the_sm2_demo_plays_every_scenario_with_gbt38540_seals(tmp_path: Path) -> None:
    """`tongban demo --seal-alg sm2`: the regions' seal keys are SM2, every answer and credential
    is a GB/T 38540 SES_Signature checked by the requesting gateway, and every scenario passes;
    the rotation issues an SM2 successor with its own seal."""
    done = demo("--dir", tmp_path / "demo", "--seal-alg", "sm2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "The regions seal with SM2" in done.stdout
    lines = scenario_lines(done.stdout)
    assert list(lines) == list(EXPECTED)
    for name, phrases in EXPECTED.items():
        verdict, text = lines[name]
        assert verdict == "OK", f"{name}: {text}"
        for phrase in phrases:
            assert phrase in text, f"{name}: {phrase!r} not in {text!r}"
    assert "by the new (SM2)" in lines["rotation"][1]
    assert "an OFD e-licence sealed by 330000" in lines["licence"][1]
    assert "Traceback" not in done.stdout + done.stderr
    # Each region's seal keys, the first and the rotated one, each with its SESeal beside it.
    keys = tmp_path / "demo" / "pki" / "regions" / "330000" / "keys"
    seals = sorted(keys.glob("seal-*.esl"))
    assert len(seals) == 2
    assert all(seal.with_suffix(".pem").is_file() for seal in seals)
    assert (keys / "seal-maker.pem").is_file()


def test_the_demo_plays_every_scenario_as_expected(tmp_path: Path) -> None:
    done = demo("--dir", tmp_path / "demo")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = scenario_lines(done.stdout)
    assert list(lines) == [name for name, _, _ in SCENARIOS] == list(EXPECTED)
    for name, phrases in EXPECTED.items():
        verdict, text = lines[name]
        assert verdict == "OK", f"{name}: {text}"
        for phrase in phrases:
            assert phrase in text, f"{name}: {phrase!r} not in {text!r}"
    assert f"{len(SCENARIOS)} of {len(SCENARIOS)} scenarios behaved as expected." in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    # The transcript shows citizens masked: no whole citizen id anywhere in it.
    assert not CITIZEN_ID.findall(done.stdout + done.stderr)
    # What it leaves in --dir: the dev PKI, the published registry and each region's audit log.
    assert (tmp_path / "demo" / "published" / "current.jws").is_file()
    assert sorted(p.name for p in (tmp_path / "demo").glob("audit-*.db")) == [
        "audit-330000.db",
        "audit-500000.db",
        "audit-510000.db",
    ]


def test_the_demo_on_redis_and_postgresql_leaves_no_schema_behind() -> None:
    done = demo("--redis", "redis://127.0.0.1:6379/0", "--postgres", SUPERUSER_DSN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Redis at redis://127.0.0.1:6379/0" in done.stdout
    schemas = re.findall(r"postgres schema (tongban_demo_\w+)", done.stdout)
    assert len(schemas) == 3
    assert all(verdict == "OK" for verdict, _ in scenario_lines(done.stdout).values())
    with superuser() as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,)
        ).fetchall()
    assert left == []


def test_a_registry_that_lets_an_over_broad_query_through_fails_the_demo(tmp_path: Path) -> None:
    """The purpose and the pension matter both widened to gender: the over-broad query is
    answered, and the requester's trail is one denial short."""
    source = tmp_path / "registry"
    shutil.copytree(DEMO_SOURCE, source)
    for name, old, new in (
        ("purposes.toml", '"si.participation" = ["name", ', '"si.participation" = ["gender", "name", '),
        ("matters.toml", 'fields = ["citizen_id", "contribution_months"', 'fields = ["citizen_id", "contribution_months", "gender"'),
    ):  # fmt: skip
        file = source / name
        text = file.read_text(encoding="utf-8")
        widened = text.replace(old, new)
        assert widened != text
        file.write_text(widened, encoding="utf-8")
    done = demo("--source", source)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = scenario_lines(done.stdout)
    assert lines["over-broad"][0] == "UNEXPECTED"
    assert "expected PERMISSION_DENIED FIELD_NOT_ALLOWED" in lines["over-broad"][1]
    # The requester's trail no longer holds that denial either: that scenario notices too.
    assert lines["subject-access"][0] == "UNEXPECTED"
    assert "3 of them denied (expected 4)" in lines["subject-access"][1]
    assert all(
        v == "OK" for n, (v, _) in lines.items() if n not in {"over-broad", "subject-access"}
    )
    assert f"{len(SCENARIOS) - 2} of {len(SCENARIOS)} scenarios behaved as expected." in done.stdout


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("--source", "no/such/folder"), 1, "no registry source here"),
        (("--redis", "127.0.0.1:6379"), 2, "not a redis://, rediss:// or unix:// URL"),
        (("--dir", "README.md"), 1, "not a folder"),
    ],
)
def test_bad_demo_options_are_refused_plainly(
    argv: tuple[str, ...], code: int, message: str
) -> None:
    done = demo(*argv, timeout=30)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_folder_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("mine", encoding="utf-8")
    done = demo("--dir", tmp_path, timeout=30)
    assert done.returncode == 1
    assert "not empty" in done.stderr
    assert (tmp_path / "kept.txt").read_text(encoding="utf-8") == "mine"


def test_serve_keeps_the_gateways_up_for_the_example_client(tmp_path: Path) -> None:
    # Run from a folder outside the repository: the command it prints must work there too.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--serve", "--dir", str(tmp_path / "d")],
        cwd=elsewhere,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            _serve_and_ask(process, elsewhere)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _client(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _serve_and_ask(process: subprocess.Popen[str], cwd: Path) -> None:
    assert process.stdout is not None
    assert process.stderr is not None
    transcript: list[str] = []
    deadline = time.monotonic() + DEMO_TIMEOUT
    while not transcript or "Ctrl-C stops them." not in transcript[-1]:
        line = process.stdout.readline()
        if not line:
            ended = "".join(transcript) + "\n-- stderr:\n" + process.stderr.read()
            raise AssertionError("the demo ended before serving:\n" + ended)
        transcript.append(line)
        assert time.monotonic() < deadline
    text = "".join(transcript)
    assert all(v == "OK" for v, _ in scenario_lines(text).values())
    assert len(re.findall(r"http://127\.0\.0\.1:\d+/metrics", text)) >= 3
    command = re.search(
        r"^\S*python\S* \S*examples/client\.py.*?--token \"[^\n]*\"$", text, re.S | re.M
    )
    assert command is not None, text
    client = _client(command.group(0), cwd)
    assert client.returncode == 0, client.stdout + client.stderr
    assert "answer from 500000 (fresh)" in client.stdout  # a 重庆 business licence
    assert "seal verification: TOTAL_PASSED" in client.stdout
    assert re.search(r"^audit id: audit\.tongban/510000#\d+$", client.stdout, re.M)
    # The same client asking for a field outside the purpose: refused, with the reason.
    refused = _client(command.group(0) + " --field gender", cwd)
    assert refused.returncode == 1
    assert "refused: PERMISSION_DENIED FIELD_NOT_ALLOWED" in refused.stderr
    # The cases the scenarios made, listed by the command it prints (tongban case list).
    listing = re.search(r"^\S*tongban case list .*$", text, re.M)
    assert listing is not None, text
    cases = _client(listing.group(0) + " --json", cwd)
    assert cases.returncode == 0, cases.stdout + cases.stderr
    assert {c["matter_code"] for c in json.loads(cases.stdout)} == {"000125002100"}
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert "Traceback" not in process.stderr.read()


def test_the_readme_quick_start_begins_with_the_demo() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", quick_start, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    planned = subprocess.run(
        ["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^\S*tongban demo --dir \S+", planned, re.M), planned
