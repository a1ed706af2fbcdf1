"""Issue 17, the federation acceptance: docs/operators.md "A region from scratch with OpenSSL",
run command by command as the page writes it (tests/docs_support.py reads them), on free ports.

Region 500000's CA, TLS, seal and audit certificates and its CRLs are made with the OpenSSL
command line, not with Tongban's code; the publisher imports them without any key of the region;
the region's gateway starts from its own configuration file (no dev PKI folder on its side);
region 510000's gateway forwards an agency's query to it and verifies its seal (TOTAL_PASSED);
after `openssl ca -revoke` and a new CRL, 500000's gateway no longer seals with the key, and a
seal made with it is REVOKED in another region."""

from __future__ import annotations

import functools
import json
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from docs_support import REPO, section_commands
from support import VENV, free_port, interrupted_at_end, shell_env

from gateway.demo.data import DemoData
from registry import Inventory, KeyState, KeyUsage, SnapshotVerifier, load_trusted_root
from signer import x5t_s256_of_certificate

pytestmark = pytest.mark.integration

HEADING = "A region from scratch with OpenSSL"
COMMAND_TIMEOUT = 120  # seconds: a hang guard on a loaded 2-core machine
READY_TIMEOUT = 60  # seconds
FIXED_PORTS = ("7500", "8500", "9500", "7510")
DATASET = "market.business_licence"  # the page's query: unconditional, needs no open case


@dataclass(frozen=True)
class Done:
    text: str
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[str]]]:
    with interrupted_at_end(15) as started:
        yield started


def _run(cwd: Path, text: str) -> Done:
    done = subprocess.run(
        ["bash", "-c", text],
        cwd=cwd,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert "Traceback" not in done.stderr, f"$ {text}\n{done.stderr}"
    return Done(text, done.returncode, done.stdout, done.stderr)


def _wait(what: str, ready: Callable[[], bool], processes: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        dead = [p for p in processes if p.poll() is not None]
        assert not dead, [p.stderr.read() if p.stderr else "" for p in dead]
        assert time.monotonic() < deadline, f"{what} never became ready"
        time.sleep(0.2)


def _listening(port: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=1):
            return True
    except OSError:
        return False


def _ready(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return bool(reply.read().strip() == b"ready")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _walk(
    cwd: Path, texts: list[str], ports: dict[str, str], background: list[subprocess.Popen[str]]
) -> list[Done]:
    """Run the page's commands in order; a `... &` one is started and waited for."""
    results = []
    for text in texts:
        if not text.endswith("&"):
            results.append(_run(cwd, text))
            continue
        command = text.removesuffix("&").strip()
        background.append(
            subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=cwd,
                env=shell_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        if "--config" in command:  # the region's own gateway: its /readyz
            _wait(command, functools.partial(_ready, ports["8500"]), background)
        else:
            port = re.search(r"--listen 127\.0\.0\.1:(\d+)", command)
            assert port is not None, command
            _wait(command, functools.partial(_listening, port.group(1)), background)
    return results


def _concrete(text: str, ports: dict[str, str], subject: str) -> str:
    """The page's command on this test's ports, client and subject."""
    for fixed, port in ports.items():
        text = re.sub(rf"(?<=:){fixed}\b", port, text)
    text = text.replace("examples/client.py", str(REPO / "examples" / "client.py"))
    return re.sub(r"--subject \w+", f"--subject {subject}", text)


def _query(cwd: Path, client: str, subject: str) -> Done:
    return _run(cwd, re.sub(r"--subject \w+", f"--subject {subject}", client))


def test_a_region_made_with_openssl_joins_the_federation_from_its_own_config(
    tmp_path: Path, background: list[subprocess.Popen[str]]
) -> None:
    started = time.monotonic()
    texts = section_commands(REPO / "docs" / "operators.md", HEADING)
    assert texts, "docs/operators.md lost its section"
    cwd = tmp_path
    (cwd / ".venv").symlink_to(VENV)
    ports = {fixed: str(free_port()) for fixed in FIXED_PORTS}
    data = DemoData("500000")
    first, second = [p for p in data.businesses(40) if data.record(DATASET, p)][:2]
    concrete = [_concrete(text, ports, first) for text in texts]
    revoke_at = next(i for i, t in enumerate(concrete) if "-revoke" in t)
    before = _walk(cwd, concrete[:revoke_at], ports, background)
    for done in before:
        assert done.returncode == 0, f"$ {done.text}\n{done.stdout}\n{done.stderr}"

    # (1) The publisher holds no key of 500000; the registry holds its OpenSSL certificates.
    pki = cwd / "pki"
    inventory = Inventory.load(pki)
    imported = {r.usage: r for r in inventory.records() if r.region == "500000"}
    assert set(imported) == {KeyUsage.TLS, KeyUsage.SEAL, KeyUsage.AUDIT}
    assert all(r.private_key == "" and r.state is KeyState.ACTIVE for r in imported.values())
    assert not [
        p
        for p in (pki / "regions" / "500000").rglob("*")
        if p.is_file() and b"PRIVATE" in p.read_bytes()
    ]
    assert not (cwd / "cq" / "pki").exists()
    authority = load_trusted_root(pki / "authority" / "root.json")
    snapshot = (cwd / "published" / "current.jws").read_bytes()
    registry = SnapshotVerifier(authority).verify(snapshot, held_version=None, now=None).registry
    region = registry.region("500000")
    assert region is not None
    openssl_made = [
        x509.load_pem_x509_certificate((cwd / "cq" / "ca" / f"{name}.pem").read_bytes())
        for name in ("root", "intermediate")
    ]
    assert region.ca_certificates == tuple(c.public_bytes(Encoding.DER) for c in openssl_made)
    for usage, record in imported.items():
        leaf = x509.load_pem_x509_certificate((cwd / "cq" / f"{usage.value}.pem").read_bytes())
        assert record.kid == x5t_s256_of_certificate(leaf)  # the registry key is OpenSSL's leaf

    # (2) 510000's agency gets a 重庆 record, sealed by the OpenSSL key, verified in 510000.
    client = next(d for d in before if "examples/client.py" in d.text)
    assert "answer from 500000 (fresh)" in client.stdout
    assert f"by key {imported[KeyUsage.SEAL].kid} of 500000" in client.stdout
    assert "seal verification: TOTAL_PASSED" in client.stdout
    verified = next(d for d in before if d.text.startswith("tongban verify notice.jws"))
    assert verified.stdout.startswith("TOTAL_PASSED — e-seal by 重庆市 (500000)")

    # (3) Revoked by the region's CA: the CRL imported and published.
    # OpenSSL dates a revocation, and a seal its signing time, to the second: a revocation in
    # the second notice.jws was sealed would make that seal REVOKED (signed at or after it).
    time.sleep(1.1)
    after = _walk(cwd, concrete[revoke_at:], ports, background)
    for done in after:
        if not done.text.startswith("tongban verify"):
            assert done.returncode == 0, f"$ {done.text}\n{done.stdout}\n{done.stderr}"
    imported_crl = next(d for d in after if "import-crl" in d.text)
    assert f"key {imported[KeyUsage.SEAL].kid} (500000 seal) revoked at" in imported_crl.stdout
    assert "(keyCompromise)" in imported_crl.stdout
    late, early = (d for d in after if d.text.startswith("tongban verify"))
    assert (late.returncode, early.returncode) == (1, 1)
    assert late.stdout.startswith("TOTAL_FAILED / REVOKED "), late.stdout
    assert early.stdout.startswith("INDETERMINATE / REVOKED_NO_POE "), early.stdout

    # (4) Once both gateways hold the new registry, 重庆 no longer seals with the revoked key.
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        refused = _query(cwd, client.text, second)
        if refused.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert refused.returncode == 1, refused.stdout
    assert "SEAL_KEY_UNAVAILABLE" in refused.stderr, refused.stderr
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports['8500']}/metrics", timeout=5)
    assert "tongban_registry_version 2.0" in metrics.read().decode()
    for process in background:
        process.send_signal(signal.SIGINT)
    for process in background:
        assert process.wait(timeout=15) == 0
    print(json.dumps({"walk_seconds": round(time.monotonic() - started, 1)}))
