"""The processes as the client process sees them: a child with --role, `tongban gateway serve`,
and the harness that starts and ends them all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from .common import REPO, REQUESTER, SCRIPT, SETUP_TIMEOUT, BenchError, one_line


class LineReader:
    """The lines a child writes to its stdout pipe, each awaited until a deadline.

    It reads the pipe's descriptor itself (select, then os.read) and keeps what follows a line
    for the next call. A buffered file's readline() after select() loses lines: it reads ahead
    whatever the pipe holds, so when two lines arrive together (two workers announcing
    themselves at the same moment, likelier on a loaded machine) the second waits in the file's
    buffer, where select() cannot see it, until the deadline (issue 20: "the second worker never
    reported listening within 120 s")."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._ended = False

    def readline(self, deadline: float) -> str:
        """The next line (with its newline), or "" when the pipe ended or the deadline (a
        time.monotonic() value) passed first."""
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if self._ended or left <= 0:
                return ""
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                return ""
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self._ended = True
                continue
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace") + "\n"


def _exit_state(proc: subprocess.Popen[str], timeout: float, waiting: str) -> str:
    """How a child that said nothing more stands: its exit code, or that it is still waiting."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)  # a pipe that ended: the process is ending, give it a moment
    if proc.returncode is not None:
        return f"exited with {proc.returncode}"
    return f"{waiting} in {timeout:.0f} s"


class Child:
    """A child process running bench/query_path.py with --role: started at once, `wait_ready()`
    reads its first message (so several can start side by side); then stats and stop over
    stdin/stdout."""

    def __init__(self, label: str, argv: list[str], log_path: Path) -> None:
        self.label = label
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(  # noqa: S603 - this benchmark's script, by this same interpreter
            [sys.executable, str(SCRIPT), *argv, "--label", label],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO,
        )
        self.pid = self._proc.pid
        assert self._proc.stdout is not None
        self._lines = LineReader(self._proc.stdout.fileno())
        self.info: dict[str, Any] = {}

    def wait_ready(self, timeout: float = SETUP_TIMEOUT) -> dict[str, Any]:
        self.info = self._read(timeout)
        if "error" in self.info:
            raise BenchError(f"the {self.label} process failed to start: {self.info['error']}")
        return self.info

    def processes(self) -> list[tuple[str, int]]:
        return [(self.label, self.pid)]

    def _read(self, timeout: float) -> dict[str, Any]:
        line = self._lines.readline(time.monotonic() + timeout)
        if not line:
            state = _exit_state(self._proc, timeout, "did not answer")
            raise BenchError(f"the {self.label} process {state}; {last_line(self.log_path)}")
        message: dict[str, Any] = json.loads(line)
        return message

    def stats(self) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write("stats\n")
        self._proc.stdin.flush()
        return self._read(30)

    def stop(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write("stop\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()


def last_line(log_path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [
            s
            for s in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            if s.strip()
        ]
        if lines:
            return f"its log ({log_path.name}) ends: {lines[-1].strip()[:300]}"
    return "its log is empty"


class CliGateway:
    """510000 as `tongban gateway serve --config FILE --workers N` (the real CLI): N=1 runs the
    gateway in the CLI process itself; N>1 forks N workers sharing the port (SO_REUSEPORT).
    Counters come from its `/metrics` (all workers added up)."""

    def __init__(
        self,
        config: Path,
        workers: int,
        env: dict[str, str],
        log_path: Path,
        command: list[str] | None = None,
    ) -> None:
        self.workers = workers
        self.log_path = log_path
        self.metrics_port = 0
        self._log = log_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(  # noqa: S603 - the project's own CLI, by this interpreter
            command
            or [sys.executable, "-m", "gateway.cli", "gateway", "serve", "--config", str(config),
                "--workers", str(workers)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "COLUMNS": "240"},
        )  # fmt: skip
        self.pid = self._proc.pid
        assert self._proc.stdout is not None
        self._lines = LineReader(self._proc.stdout.fileno())
        self.worker_pids: dict[int, int] = {}  # worker number -> pid

    def wait_ready(self, timeout: float = SETUP_TIMEOUT) -> None:
        """Until every worker says it listens (N=1: the gateway itself)."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while len(self.worker_pids) < self.workers:
            line = self._lines.readline(deadline)
            if not line:
                state = _exit_state(self._proc, timeout, "did not start")
                waiting = sorted(set(range(1, self.workers + 1)) - set(self.worker_pids))
                state += (
                    f" (workers {waiting} had not said they listen)" if self.workers > 1 else ""
                )
                said = f"; it printed: {seen[-1].strip()[:200]}" if seen else ""
                raise BenchError(
                    f"`tongban gateway serve --workers {self.workers}` {state}; "
                    f"{last_line(self.log_path)}{said}"
                )
            seen.append(line)
            if match := re.search(r"worker (\d+)/\d+ \(pid (\d+)\) listening", line):
                self.worker_pids[int(match.group(1))] = int(match.group(2))
            elif self.workers == 1 and re.search(r"Gateway \d+ listening on port \d+", line):
                self.worker_pids[1] = self.pid

    def processes(self) -> list[tuple[str, int]]:
        if self.workers == 1:
            return [(f"{REQUESTER} (CLI)", self.pid)]
        return [(f"{REQUESTER} supervisor", self.pid)] + [
            (f"{REQUESTER} worker {n}", pid) for n, pid in sorted(self.worker_pids.items())
        ]

    def stats(self) -> dict[str, Any]:
        """510000's counters from its /metrics: audit appends are counted as they happen; the
        cache and commit totals of a worker that did not answer the scrape lag by up to 5 s."""
        try:
            with urllib.request.urlopen(  # loopback, a port the harness chose
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
            ) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError) as exc:
            raise BenchError(f"the 510000 /metrics cannot be read: {exc}") from exc
        total: Counter[str] = Counter()
        for line in text.splitlines():
            if match := re.fullmatch(r"([a-z_]+)(\{[^}]*\})? (\S+)", line):
                name, labels, value = match.groups()
                if name == "tongban_cache_lookups_total":
                    result = re.search(r'result="(\w+)"', labels or "")
                    key = {"hit": "hits", "miss": "misses", "error": "errors"}.get(
                        result.group(1) if result else "", ""
                    )
                    if key:
                        total[f"cache.{key}"] += int(float(value))
                elif name == "tongban_audit_appends_total":
                    total["audit.appended"] += int(float(value))
                elif name == "tongban_audit_commits_total":
                    total["audit.commits"] += int(float(value))
        entry: dict[str, dict[str, int]] = {}
        for key, value in total.items():
            section, name = key.split(".")
            entry.setdefault(section, {})[name] = value
        return {"gateways": {REQUESTER: entry}, "gc": {}}

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # the supervisor stops its workers
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for pid in self.worker_pids.values():  # a worker left behind by a killed supervisor
            if pid != self.pid and Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()


class Harness:
    """Every process the harness started, the PostgreSQL schemas it made, and their ending."""

    def __init__(self, folder: Path, postgres: str) -> None:
        self.folder = folder
        self.postgres = postgres
        self.children: list[Child | CliGateway] = []
        self.schemas: list[str] = []

    def start(self, label: str, argv: list[str]) -> Child:
        child = Child(label, argv, self.folder / f"{re.sub(r'[^a-z0-9]+', '-', label)}.log")
        self.children.append(child)
        return child

    def start_cli(self, config: Path, workers: int, env: dict[str, str]) -> CliGateway:
        cli = CliGateway(config, workers, env, self.folder / f"cli-{workers}-workers.log")
        self.children.append(cli)
        return cli

    def stop(self, child: Child | CliGateway) -> None:
        child.stop()
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def pids(self) -> list[int]:
        return [pid for child in self.children for _, pid in child.processes()]

    def create_schema(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        self.schemas.append(name)
        try:
            with psycopg.connect(self.postgres, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise BenchError(f"PostgreSQL: cannot create schema {name}: {one_line(exc)}") from exc

    def close(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
        self.children.clear()
        if self.schemas:
            import psycopg
            from psycopg import sql

            try:
                with psycopg.connect(self.postgres, autocommit=True, connect_timeout=5) as conn:
                    for name in self.schemas:
                        conn.execute(
                            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                        )
            except psycopg.Error as exc:
                print(
                    f"bench: could not drop the schemas {', '.join(self.schemas)}: {one_line(exc)}",
                    file=sys.stderr,
                )
            self.schemas.clear()
