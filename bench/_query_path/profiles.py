"""py-spy profiles of the per-region processes, summarised by area and by frame."""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

from .common import REPO

# Where a sample's time goes: walking from the leaf frame towards the root, the first frame that
# names one of these (in its file, or its function for the collector) decides. Native frames
# (libc, libpython) name none, so a syscall made by gRPC's Cython code counts as gRPC's.
AREAS: Final = (  # (area, substring of "function (file)")
    ("garbage collector", "gc_collect"),
    ("grpc (aio, cython, C core)", "/grpc/"),
    ("redis-py", "/redis/"),
    ("asyncio event loop", "/asyncio/"),
    ("asyncio event loop", "_asynciomodule"),
    ("audit log (gateway/audit, sqlite3)", "/gateway/audit/"),
    ("audit log (gateway/audit, sqlite3)", "sqlite3"),
    ("seal sign/verify (signer)", "/signer/"),
    ("cryptography", "/cryptography/"),
    ("registry", "/registry/"),
    ("tokens (gateway/tokens.py, PyJWT)", "/gateway/tokens.py"),
    ("tokens (gateway/tokens.py, PyJWT)", "/jwt/"),
    ("metrics (gateway/metrics, prometheus_client)", "/gateway/metrics/"),
    ("metrics (gateway/metrics, prometheus_client)", "/prometheus_client/"),
    ("protobuf", "/google/protobuf/"),
    ("json", "/json/"),
    ("demo data system", "/gateway/demo/"),
    ("other gateway code", "/gateway/"),
    ("threading / queue", "/threading.py"),
    ("threading / queue", "/queue.py"),
)


def _area(frames: list[tuple[str, str]]) -> str:
    for function, path in reversed(frames):
        text = f"{function} ({path})"
        for area, part in AREAS:
            if part in text:
                return area
    return "other (stdlib, interpreter)"


def _frame(text: str) -> tuple[str, str]:
    """("function", "file") of a py-spy raw frame "function (file:line)"."""
    match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", text)
    return (match.group(1), match.group(2)) if match else (text, "")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(REPO))
    return path


def _self_name(frames: list[tuple[str, str]]) -> str:
    """The frame a sample's self time is charged to. A native leaf (a syscall, the interpreter)
    is charged to the nearest frame of Python or of an extension module, naming the leaf:
    "grpc/_cython/cygrpc… > sendmsg" says that gRPC's Cython code was in sendmsg."""
    function, path = frames[-1]
    if path.endswith((".py", ">")):
        return f"{_short(path)}:{function}"
    for owner_function, owner_path in reversed(frames[:-1]):
        if owner_path.endswith((".py", ">")):
            return f"{_short(owner_path)}:{owner_function} > {function}"
        if ".cpython-" in owner_path:  # an extension module: its functions have no names
            return f"{_short(owner_path).split('.cpython-')[0]} > {function}"
    return f"{path}:{function}"


def summarise_profile(raw: Path, rate: int, seconds: float, top: int = 15) -> dict[str, Any]:
    """From a py-spy raw (collapsed) file of GIL-holding samples: the share of samples by area
    (see AREAS), the frames with the most self time, and the gateway, signer and registry
    functions with the most inclusive time."""
    leaf: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        leaf[_self_name(frames)] += count
        areas[_area(frames)] += count
        own = {
            f"{_short(p)}:{f}"
            for f, p in frames
            if any(f"/{pkg}/" in p for pkg in ("gateway", "signer", "registry"))
            and "/site-packages/" not in p
        }
        for name in own:
            inclusive[name] += count
    if not total:
        return {"samples": 0}

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(n)]

    return {
        "samples": total,
        "gil_busy": total / (rate * seconds),  # share of the time some thread held the GIL
        "areas": shares(areas, len(AREAS)),
        "self": shares(leaf, top),
        "inclusive_gateway": shares(inclusive, top),
    }


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")
