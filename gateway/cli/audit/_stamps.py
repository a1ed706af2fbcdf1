"""The RFC 3161 time-stamps kept beside a log's checkpoints (`[timestamp]`), as `tongban audit
verify` checks them: each token must be over the UTF-8 of its checkpoint's signed note, signed by
a TSA whose certificate chains to a `--tsa-ca` anchor (`signer.proof_of_existence`); its genTime
then proves the checkpoint, and every record it covers, existed by that time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from rich.console import Console
from rich.text import Text

from gateway.cli._common import Failure, read_input
from signer import proof_of_existence

if TYPE_CHECKING:
    from gateway.audit import Checkpoint

__all__ = ["StampCheck", "check_stamps", "print_stamps", "stamps_json", "tsa_anchors"]

MAX_ANCHOR_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StampCheck:
    total: int  # checkpoints stored
    stamped: int  # of which carry a time-stamp
    checked: bool  # whether TSA anchors were given
    latest: tuple[int, datetime, str] | None  # (size, genTime, TSA) of the latest one proved
    problems: tuple[str, ...]  # one line per token that proves nothing


def tsa_anchors(paths: Sequence[Path]) -> tuple[x509.Certificate, ...]:
    anchors: list[x509.Certificate] = []
    for path in paths:
        data = read_input(path, "the --tsa-ca file", limit=MAX_ANCHOR_FILE_BYTES)
        try:
            anchors.extend(x509.load_pem_x509_certificates(data))
        except ValueError:
            raise Failure(
                f"{path}: --tsa-ca takes PEM certificates, and this file holds none"
            ) from None
    return tuple(anchors)


def check_stamps(
    checkpoints: Sequence[Checkpoint], anchors: Sequence[x509.Certificate]
) -> StampCheck:
    stamped = [c for c in checkpoints if c.time_stamp is not None]
    latest: tuple[int, datetime, str] | None = None
    problems = []
    if anchors:
        for checkpoint in stamped:
            assert checkpoint.time_stamp is not None
            proof = proof_of_existence(checkpoint.time_stamp, checkpoint.note.encode(), anchors)
            if proof.gen_time is None:
                problems.append(
                    f"the time-stamp of checkpoint size {checkpoint.size} proves nothing: {proof.problem}"
                )
            else:
                latest = (checkpoint.size, proof.gen_time, proof.tsa)
    return StampCheck(len(checkpoints), len(stamped), bool(anchors), latest, tuple(problems))


def print_stamps(out: Console, stamps: StampCheck) -> None:
    if not stamps.stamped:
        return
    if not stamps.checked:
        out.print(
            f"{stamps.stamped} of {stamps.total} checkpoints carry an RFC 3161 time-stamp "
            "(give --tsa-ca to check them)",
            soft_wrap=True,
        )
        return
    for problem in stamps.problems:
        out.print(Text(problem, style="red"), soft_wrap=True)
    if stamps.latest is not None:
        size, when, tsa = stamps.latest
        out.print(
            f"{stamps.stamped - len(stamps.problems)} of {stamps.total} checkpoints time-stamped; "
            f"the latest, size {size}, existed at {when:%Y-%m-%d %H:%M:%SZ} (time-stamp by {tsa})",
            soft_wrap=True,
        )


def stamps_json(stamps: StampCheck) -> dict[str, object]:
    latest = stamps.latest
    return {
        "stamped": stamps.stamped,
        "checked": stamps.checked,
        "problems": list(stamps.problems),
        "latest": (
            {"size": latest[0], "gen_time": f"{latest[1]:%Y-%m-%dT%H:%M:%SZ}", "tsa": latest[2]}
            if latest is not None
            else None
        ),
    }
