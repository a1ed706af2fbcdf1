"""SIGHUP to `tongban gateway serve`: a rotated TLS certificate and seal key are taken without a
restart — new handshakes present the new certificate, Seal signs with the new key once the
registry activates it, and a reload that cannot read its files keeps what was held."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from support import REPO, Federation, credentials_as, free_port, make_federation

from registry import KeyState, KeyUsage
from signer import x5t_s256_of_certificate
from tongban.v1 import credentials_pb2, credentials_pb2_grpc

pytestmark = pytest.mark.integration

DOCUMENT = b'{"licence":"demo"}'


def served_certificate(fed: Federation, port: int) -> str:
    """The x5t#S256 of the certificate a new TLS handshake with the gateway presents."""
    chain, key = fed.tls_files("zj.hrss")
    context = ssl.create_default_context(cafile=str(fed.pki / "regions/330000/ca/root.pem"))
    context.load_cert_chain(str(chain), str(key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x5t_s256_of_certificate(x509.load_der_x509_certificate(der))


def cli(*argv: str | Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "gateway.cli", *map(str, argv)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )


async def sealer(fed: Federation, port: int) -> str:
    async with grpc.aio.secure_channel(
        f"localhost:{port}", credentials_as(fed, "zj.hrss", "330000")
    ) as channel:
        answer = await credentials_pb2_grpc.CredentialsStub(channel).Seal(
            credentials_pb2.SealRequest(payload=DOCUMENT), timeout=10
        )
        return str(answer.record.sealer_kid)


def wait_for(stderr: Path, text: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 20
    while text not in (log := stderr.read_text()):
        assert process.poll() is None, log
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{log}"
        time.sleep(0.05)
    return log


def test_sighup_takes_a_rotated_tls_certificate_and_seal_key(tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    port = free_port()
    old_tls = fed.active("330000", KeyUsage.TLS)
    old_seal = fed.active("330000", KeyUsage.SEAL)
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "gateway", "serve", "--pki", str(fed.pki),
             "--region", "330000", "--snapshot", str(fed.current), "--listen",
             f"127.0.0.1:{port}"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert served_certificate(fed, port) == old_tls
                break
            except OSError:
                assert process.poll() is None, stderr.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert asyncio.run(sealer(fed, port)) == old_seal

        # The security team rotates both keys; two publishes make the successors active.
        for usage in ("tls", "seal"):
            cli("keys", "rotate", "--pki", fed.pki, "--owner", "330000", "--usage", usage)
        cli("registry", "publish", "--pki", fed.pki, "--out", fed.published)
        cli("registry", "publish", "--pki", fed.pki, "--out", fed.published)
        new_tls, new_seal = fed.active("330000", KeyUsage.TLS), fed.active("330000", KeyUsage.SEAL)
        assert (new_tls, new_seal) != (old_tls, old_seal)
        time.sleep(2.5)  # the gateway polls its snapshot file every 2 s
        assert served_certificate(fed, port) == old_tls  # nothing changes until SIGHUP

        # A reload whose files cannot be read keeps what is held, and says why.
        (record,) = fed.inventory().find("330000", KeyUsage.TLS, KeyState.ACTIVE)
        moved = fed.pki / (record.private_key + ".away")
        (fed.pki / record.private_key).rename(moved)
        process.send_signal(signal.SIGHUP)
        wait_for(stderr, "what was held stays in use", process)
        assert served_certificate(fed, port) == old_tls
        moved.rename(fed.pki / record.private_key)

        process.send_signal(signal.SIGHUP)
        log = wait_for(stderr, f"TLS certificate {new_tls}", process)
        assert new_seal in log
        assert served_certificate(fed, port) == new_tls
        assert asyncio.run(sealer(fed, port)) == new_seal

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in stderr.read_text()
