"""CPU accounting from /proc: by process and thread, Redis and PostgreSQL, the whole machine;
and the TCP connections each process holds."""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .common import SERVICE_PROCESSES

TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class PidTimes:
    user: float  # seconds
    system: float  # seconds
    threads: dict[str, float]  # seconds of user + system time by thread group

    @property
    def total(self) -> float:
        return self.user + self.system


def _comm(stat: str) -> str:
    """The (thread) name in a /proc/<pid>/stat line, digits dropped so numbered threads group."""
    return re.sub(r"[\d_-]+$", "", stat[stat.index("(") + 1 : stat.rindex(")")]) or "?"


def _times(stat: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks, fields 14 and 15 of a /proc/<pid>/stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def pid_times(pid: int) -> PidTimes | None:
    """CPU time used so far by a process: user and system time of the whole process, and user +
    system time by thread: "main (event loop)" is the thread that runs every Python handler; the
    others by their kernel name (gRPC's C-core threads name themselves; Python's own threads,
    the audit writers among them, show as "python"). None when the process is gone."""
    try:
        user, system = _times(Path(f"/proc/{pid}/stat").read_text())
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    threads: Counter[str] = Counter()
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = "main (event loop)" if task.name == str(pid) else _comm(stat)
        if name.startswith("python"):
            name = "Python threads (audit writers, gRPC poller)"
        threads[name] += sum(_times(stat))
    return PidTimes(user / TICKS, system / TICKS, {name: t / TICKS for name, t in threads.items()})


def service_ticks() -> dict[int, int]:
    """CPU ticks so far of every Redis and PostgreSQL server process on the machine (by pid)."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] in SERVICE_PROCESSES:
            out[int(entry.name)] = sum(_times(stat))
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / TICKS  # guest time is in user already


def connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on local `port` held by each pid (from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = pid
    counts = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01" and fields[9] in inodes:
                    counts[inodes[fields[9]]] += 1
    return counts
