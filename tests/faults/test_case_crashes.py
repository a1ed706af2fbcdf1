"""A gateway SIGKILLed between the steps of a case loses no case and makes no step twice
(issue 19, "durable and exactly once"): the three regions' gateways of `case_processes`, each its
own process, run 多地联办 (matter 000112003100: 四川 receives, 浙江 assists, 重庆 handles, with a
request for material and its supplement) once per kill point:

- "actor": the gateway that just acted is killed as soon as its call returned (its event may
  not have left yet), then started again; the agency's client sends the same call again (same
  request id), as a client that lost its connection would: it is answered with the case as it
  is, the step not made twice; the event reaches the other regions from the restarted
  gateway's outbox;
- "unacknowledged": the same, but the other two gateways are frozen (SIGSTOP) while the step
  is made and until the actor is killed: its delivery is sent, or about to be, and certainly
  not acknowledged; thawed, a receiver may still take the dead sender's call, and then gets the
  event again from the restarted one (the acknowledgement lost), which it holds once;
- "receiver": a gateway that should receive the step is killed before it is made: the step
  succeeds where it is made, and reaches the returning gateway once it is back.

After each run every region holds the same history, each event once, all applied, the case
completed. The deployment is shared by every kill point (one per module), a new case each.

`make test` kills a gateway after every step, the three kinds of kill taken in turn (each kind
at every third step); `make faults` (TONGBAN_FAULTS_LONG=1) tries every kind after every step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from case_processes import (
    CHONGQING,
    REGIONS,
    SICHUAN,
    ZHEJIANG,
    Regions,
    act,
    assert_recorded_once,
    id_card,
    ids,
    kinds,
    new_request_id,
    three_regions,
)
from faults.harness import LONG

from gateway.demo.data import DemoData
from tongban.v1 import cases_pb2

pytestmark = pytest.mark.integration

TRANSFER = "000112003100"  # 养老保险关系转移接续


@dataclass(frozen=True)
class Step:
    region: str  # the region whose agency acts
    agency: str
    kind: str  # the event it makes
    receiver: str  # a region that should receive the event (killed before it is made)


STEPS = (
    Step(SICHUAN, "sc.hrss", "submitted", ZHEJIANG),  # 浙江's part is ready
    Step(ZHEJIANG, "zj.hrss", "accepted", CHONGQING),
    Step(ZHEJIANG, "zj.hrss", "approved", CHONGQING),  # 重庆's part is ready
    Step(CHONGQING, "cq.hrss", "accepted", ZHEJIANG),
    Step(CHONGQING, "cq.hrss", "material_requested", SICHUAN),  # the window supplements
    Step(SICHUAN, "sc.hrss", "supplemented", CHONGQING),
    Step(CHONGQING, "cq.hrss", "approved", SICHUAN),  # the window learns it is done
)
VICTIMS = ("actor", "unacknowledged", "receiver")
KILLS = [
    (i, victim)
    for i in range(len(STEPS))
    for j, victim in enumerate(VICTIMS)
    if LONG or j == i % len(VICTIMS)
]
IN_FLIGHT_SECONDS = 0.3  # for the frozen receivers' delivery to be sent before the kill


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regions]:
    with three_regions(tmp_path_factory.mktemp("case-crashes")) as made:
        yield made


@pytest.fixture(autouse=True)
async def _all_three_up(regions: Regions) -> AsyncIterator[None]:
    yield
    await regions.revive()


async def make_call(regions: Regions, i: int, case_id: str, applicant: str) -> Any:
    """Step i's request, its materials sealed by the acting agency's region."""
    agency = STEPS[i].agency
    if i == 0:
        return cases_pb2.SubmitCaseRequest(
            request_id=new_request_id(),
            matter_code=TRANSFER,
            applicant_id=applicant,
            materials=[
                await id_card(regions, agency, applicant),
                await regions.material(agency, "transfer-application", {"from": ZHEJIANG}),
            ],
        )
    part = 1 if STEPS[i].region == ZHEJIANG else 2
    if STEPS[i].kind == "accepted":
        call = act(case_id, part, cases_pb2.CASE_ACTION_ACCEPT)
    elif STEPS[i].kind == "material_requested":
        call = act(
            case_id,
            part,
            cases_pb2.CASE_ACTION_REQUEST_MATERIAL,
            material_ids=["contribution-proof"],
            note="请补交参保缴费凭证",
        )
    elif STEPS[i].kind == "supplemented":
        proof = await regions.material(agency, "contribution-proof", {"months": 86})
        call = act(case_id, part, cases_pb2.CASE_ACTION_SUPPLEMENT, materials=[proof])
    else:
        result = await regions.material(agency, "result", {"step": i})
        call = act(case_id, part, cases_pb2.CASE_ACTION_APPROVE, result=result)
    call.request_id = new_request_id()
    return call


async def send(regions: Regions, i: int, call: Any) -> cases_pb2.Case:
    case: cases_pb2.Case = await regions.cases(STEPS[i].agency, "Submit" if i == 0 else "Act", call)
    return case


@pytest.mark.parametrize(
    ("after", "victim"), KILLS, ids=[f"{STEPS[i].kind}{i}-{v}" for i, v in KILLS]
)
async def test_a_gateway_killed_between_two_steps_loses_nothing_and_repeats_nothing(
    regions: Regions, after: int, victim: str
) -> None:
    applicant = DemoData(SICHUAN).population(60)[20 + KILLS.index((after, victim))]
    case_id = ""
    for i, step in enumerate(STEPS):
        if i:  # the acting agency's gateway holds every step before (delivered, maybe late)
            await regions.until(
                step.agency, case_id, lambda c, n=i: len(c.history) == n, f"step {i - 1}"
            )
        call = await make_call(regions, i, case_id, applicant)
        others = [r for r in REGIONS if r != step.region]
        if i == after and victim == "receiver":
            regions.kill(step.receiver)
        elif i == after and victim == "unacknowledged":
            for region in others:
                regions.freeze(region)
        case = await send(regions, i, call)
        case_id = case.case_id
        # Made and kept where it was made, whether or not the receiver is up.
        assert [e.kind for e in case.history] == [s.kind for s in STEPS[: i + 1]]
        if i != after:
            continue
        if victim == "receiver":
            assert not regions.gateways[step.receiver].alive()
            await regions.restart(step.receiver)
        else:
            if victim == "unacknowledged":
                await asyncio.sleep(IN_FLIGHT_SECONDS)
            regions.kill(step.region)
            for region in others if victim == "unacknowledged" else ():
                regions.thaw(region)
            await regions.restart(step.region)
            again = await send(regions, i, call)  # the client did not see the answer: again
            assert ids(again) == ids(case), "the step was made twice"

    held = {
        agency: await regions.until(
            agency,
            case_id,
            lambda c: len(c.history) == len(STEPS),
            f"every step at {agency}",
        )
        for agency in ("sc.hrss", "zj.hrss", "cq.hrss")
    }
    window = held["sc.hrss"]
    assert kinds(window) == [s.kind for s in STEPS]
    assert [e.region for e in window.history] == [s.region for s in STEPS]
    assert len(set(ids(window))) == len(STEPS), "an event is held twice"
    for agency, copy in held.items():
        assert ids(copy) == ids(window), agency
        assert all(e.applied for e in copy.history), agency
        assert copy.state == cases_pb2.CASE_STATE_COMPLETED, agency
    assert_recorded_once(regions, case_id, (SICHUAN, ZHEJIANG, CHONGQING), len(STEPS))
    assert [c.case_id for c in await regions.listed("sc.hrss", matter_code=TRANSFER)].count(
        case_id
    ) == 1
