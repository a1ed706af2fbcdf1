"""A gateway never shares its ports by accident: a second gateway (a process, or one in the same
process) on a gRPC or metrics address another one holds refuses to start with one clear line,
before it opens its audit log; only `--workers` shares a port (tests/integration/test_workers.py).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, Federation, dev_config, free_port, refusal_event, running

from gateway.demo.provider import create_provider
from gateway.errors import ConfigError
from gateway.server import create_gateway

pytestmark = pytest.mark.integration

START_TIMEOUT = 60.0  # seconds for the first gateway to announce itself on a loaded machine


def _serve(fed: Federation, region: str, listen: str, audit_db: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "gateway",
        "serve",
        "--pki",
        str(fed.pki),
        "--region",
        region,
        "--snapshot",
        str(fed.current),
        "--listen",
        listen,
        "--audit-db",
        str(audit_db),
    ]


@pytest.mark.parametrize("second_listen", ["127.0.0.1:{port}", "localhost:{port}"])
def test_a_second_gateway_process_on_a_held_port_refuses_to_start(
    federation: Federation, tmp_path: Path, second_listen: str
) -> None:
    port = free_port()
    with subprocess.Popen(
        _serve(federation, "330000", f"127.0.0.1:{port}", tmp_path / "first.db"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as first:
        _second_is_refused(federation, tmp_path, first, port, second_listen)


def _second_is_refused(
    federation: Federation,
    tmp_path: Path,
    first: subprocess.Popen[str],
    port: int,
    second_listen: str,
) -> None:
    try:
        assert first.stdout is not None
        seen = ""
        deadline = time.monotonic() + START_TIMEOUT
        while not re.search(r"listening on port\s+\d+", seen):
            line = first.stdout.readline()
            assert line, f"the first gateway ended: {seen}"
            seen += line
            assert time.monotonic() < deadline, seen
        listen = second_listen.format(port=port)
        second_db = tmp_path / "second.db"
        done = subprocess.run(
            _serve(federation, "510000", listen, second_db),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout == ""
        assert refusal_event(done.stderr) == (
            f"tongban: gateway.listen: {listen} is already in use (another gateway?)"
        )
        assert not second_db.exists()  # refused before its audit log was opened
        assert first.poll() is None  # the first one is untouched
    finally:
        first.terminate()
        first.wait(timeout=30)


async def test_a_second_gateway_in_process_on_a_held_port_is_refused(
    federation: Federation,
) -> None:
    async with running(dev_config(federation)) as (_, port):
        config = dev_config(federation, "510000", listen=f"127.0.0.1:{port}")
        with pytest.raises(
            ConfigError,
            match=rf"^gateway\.listen: 127\.0\.0\.1:{port} is already in use \(another gateway\?\)$",
        ):
            await create_gateway(config)


async def test_a_second_gateway_on_a_held_metrics_port_is_refused(federation: Federation) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    async with running(dev_config(federation, metrics_listen=metrics)):
        second = dev_config(federation, "510000", metrics_listen=metrics)
        with pytest.raises(
            ConfigError,
            match=rf"^gateway\.metrics_listen: {re.escape(metrics)} is already in use",
        ):
            await create_gateway(second)


async def test_a_listen_host_that_does_not_resolve_is_a_configuration_error(
    federation: Federation,
) -> None:
    config = dev_config(federation, listen="no-such-host.invalid:7330")
    with pytest.raises(
        ConfigError, match=r"^gateway\.listen: cannot resolve 'no-such-host\.invalid'"
    ):
        await create_gateway(config)


async def test_a_second_demo_data_system_on_a_held_port_refuses_to_start() -> None:
    server, port = create_provider("330000", "127.0.0.1:0")
    await server.start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "provider", "serve", "--region", "510000",
            "--listen", f"127.0.0.1:{port}",
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        except TimeoutError:  # it started: it shares the port with the first one
            process.kill()
            out, err = await process.communicate()
        assert process.returncode == 1, out + err
        assert refusal_event(err.decode()) == (
            f"tongban: --listen: 127.0.0.1:{port} is already in use (another data system?)"
        )
    finally:
        await server.stop(0)
