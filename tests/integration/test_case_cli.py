"""`tongban case` against three real gateways on loopback (their own event loop, in a thread):
the 川渝 case from the window's submission to its completion, each step a command as an agency's
operator types it, materials sealed with `tongban seal` by the regions' seal keys; a submission
sent again makes no second case; an agency acting on another region's part is refused in one
line with its reason; the applicant, through the portal's token, sees the case and may not act
on it; the applicant's id never appears whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import Run
from query_support import Cluster, running_cluster
from support import Federation, make_federation

from registry import KeyState, KeyUsage

pytestmark = pytest.mark.integration

DELIVERY_TIMEOUT = 30.0  # seconds for an event to reach another region's gateway
MATTER = "000125002100"  # 异地就医登记备案: 510000 receives, 500000 handles


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    fed = make_federation(tmp_path_factory.mktemp("case-cli"))
    fed.publish()
    return fed


@contextlib.contextmanager
def cluster_in_a_thread(fed: Federation, folder: Path) -> Iterator[Cluster]:
    """Three gateways on their own event loop in a thread, for a CLI that runs its own loop."""
    started: queue.Queue[tuple[Cluster, asyncio.Event] | BaseException] = queue.Queue()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        try:
            async with running_cluster(fed, folder) as cluster:
                stop = asyncio.Event()
                started.put((cluster, stop))
                await stop.wait()
        except BaseException as exc:  # a cluster that does not start fails the test, not hangs it
            started.put(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        got = started.get(timeout=120)
        if isinstance(got, BaseException):
            raise got
        cluster, stop = got
        try:
            yield cluster
        finally:
            loop.call_soon_threadsafe(stop.set)
    finally:
        thread.join(60)
        loop.close()


def _seal(run: Run, fed: Federation, region: str, document: dict[str, Any], out: Path) -> Path:
    """`tongban seal` with the region's seal key: what its seal service would make."""
    (seal,) = fed.inventory().find(region, KeyUsage.SEAL, KeyState.ACTIVE)
    source = out.with_suffix(".json")
    source.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    code, _, err = run(
        "seal", source, "--key", fed.pki / seal.private_key, "--cert", fed.pki / seal.certificate,
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    return out


def _until(run: Run, argv: list[Any], holds: Any) -> dict[str, Any]:
    """Run `argv` (a --json verb) until `holds(answer)`: another region's change arriving."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        code, out, err = run(*argv, "--json")
        if code == 0 and holds(answer := json.loads(out)):
            return answer  # type: ignore[no-any-return]
        assert code == 0 or "CASE_NOT_FOUND" in err, err
        assert time.monotonic() < deadline, f"not seen in time: {argv}"
        time.sleep(0.2)


def test_a_case_from_the_window_to_its_result_with_the_command_line(
    fed: Federation, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cluster_in_a_thread(fed, tmp_path) as cluster:
        sc = ["--gateway", f"localhost:{cluster.ports['510000']}", "--pki", fed.pki]
        cq = ["--gateway", f"localhost:{cluster.ports['500000']}", "--pki", fed.pki]
        citizen = cluster.subject("500000", "medical.insurance")
        card = _seal(run, fed, "500000", {"credential_type": "id_card", "citizen_id": citizen},
                     tmp_path / "id-card.jws")  # fmt: skip
        form = _seal(run, fed, "510000", {"form": "备案表", "citizen_id": citizen},
                     tmp_path / "filing-form.jws")  # fmt: skip
        submit = [
            "case", "submit", "--matter", MATTER, "--applicant", citizen,
            "--material", f"id-card={card}", "--material", f"filing-form={form}",
            "--request-id", "form-0001", *sc, "--agency", "sc.hsa",
        ]  # fmt: skip
        code, out, err = run(*submit, "--json")
        assert code == 0, err
        case = json.loads(out)
        case_id = case["case_id"]
        assert case_id.startswith("510000-")
        assert [p["state"] for p in case["parts"]] == ["done", "ready"]
        assert {m["material_id"]: m["signer_region"] for m in case["materials"]} == {
            "id-card": "500000",
            "filing-form": "510000",
        }
        code, out, err = run(*submit)  # sent again: the same case, not a second one
        assert code == 0, err
        assert f"Case {case_id}:" in out
        # 重庆医保 finds it in its inbox, accepts, asks for a better form.
        _until(run, ["case", "list", *cq, "--agency", "cq.hsa"],
               lambda cases: [c["case_id"] for c in cases] == [case_id])  # fmt: skip
        act = ["case", "act", case_id, "--part", "1"]
        code, _, err = run(*act, "--accept", *cq, "--agency", "cq.hsa")
        assert code == 0, err
        code, _, err = run(*act, "--request-material", "filing-form", "--note", "缺少参保地",
                           *cq, "--agency", "cq.hsa")  # fmt: skip
        assert code == 0, err
        # 四川 may not act on 重庆's part.
        code, out, err = run(*act, "--approve", *sc, "--agency", "sc.hsa")
        assert (code, out) == (1, "")
        assert "the gateway refused: PERMISSION_DENIED CASE_PART_NOT_YOURS" in err
        assert len(err.strip().splitlines()) == 1
        # The window supplements once the request has arrived.
        _until(run, ["case", "show", case_id, *sc, "--agency", "sc.hsa"],
               lambda c: c["parts"][1]["state"] == "awaiting_material")  # fmt: skip
        better = _seal(run, fed, "510000", {"form": "备案表", "insured_region": "500000"},
                       tmp_path / "filing-form-2.jws")  # fmt: skip
        code, _, err = run(*act, "--supplement", f"filing-form={better}", *sc, "--agency", "sc.hsa")
        assert code == 0, err
        _until(run, ["case", "show", case_id, *cq, "--agency", "cq.hsa"],
               lambda c: c["parts"][1]["state"] == "in_progress")  # fmt: skip
        receipt = _seal(run, fed, "500000", {"document": "备案回执", "case_id": case_id},
                        tmp_path / "receipt.jws")  # fmt: skip
        code, out, err = run(*act, "--approve", "--result", receipt, *cq, "--agency", "cq.hsa")
        assert code == 0, err
        assert "Done: approve on part 1" in out
        # The window sees it completed, with the result, and can save what it holds.
        done = _until(run, ["case", "show", case_id, *sc, "--agency", "sc.hsa"],
                      lambda c: c["state"] == "completed")  # fmt: skip
        assert done["parts"][1]["result"]["signer_region"] == "500000"
        assert [e["kind"] for e in done["history"]] == [
            "submitted", "accepted", "material_requested", "supplemented", "approved",
        ]  # fmt: skip
        saved = tmp_path / "held"
        code, out, err = run("case", "show", case_id, "--contents-to", saved, *sc,
                             "--agency", "sc.hsa")  # fmt: skip
        assert code == 0, err
        assert (saved / "id-card.bin").read_bytes() == card.read_bytes().rstrip()
        assert (saved / "result-1.bin").read_bytes() == receipt.read_bytes().rstrip()
        assert citizen not in out
        code, out, err = run("case", "list", *sc, "--agency", "sc.hsa", "--state", "completed")
        assert code == 0, err
        assert case_id in out
        # The applicant's own view, through the region's portal (a token with the applicant claim).
        code, token, err = run("token", "issue", "--pki", fed.pki, "--agency", "sc.hsa",
                               "--operator", "portal", "--applicant", citizen)  # fmt: skip
        assert code == 0, err
        monkeypatch.setenv("TONGBAN_TEST_APPLICANT_TOKEN", token.strip())
        portal = [*sc, "--agency", "sc.hsa", "--token-env", "TONGBAN_TEST_APPLICANT_TOKEN"]
        code, out, err = run("case", "list", *portal, "--json")
        assert code == 0, err
        assert [c["case_id"] for c in json.loads(out)] == [case_id]
        code, out, err = run(*act, "--accept", *portal)
        assert (code, out) == (1, "")
        assert "NOT_AUTHORISED_ROLE" in err
        assert citizen not in err
