"""The committed generated code in proto/tongban/v1 matches the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_matches_proto_files() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "proto" / "build.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "proto: generated code matches" in result.stdout
