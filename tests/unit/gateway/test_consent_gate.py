"""`ConsentGate.revoked` away from the home region: the home gateway's answer kept at most
`status_seconds`, a revocation kept for good, and no answer to be had refused
CONSENT_STATUS_UNAVAILABLE (fail closed); at home, the register itself, the consent
registered on first sight under the citizen's pseudonym."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.consent import (
    ConsentClaims,
    ConsentError,
    ConsentGate,
    ConsentScope,
    ConsentUses,
    MemoryConsentRegister,
)

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
CLAIMS = ConsentClaims(
    consent_id="consent-0001",
    region="500000",
    subject="11010519491231002X",
    agencies=frozenset(),
    regions=frozenset({"500000"}),
    purpose="MED-REG",
    datasets=(ConsentScope("510000", "medical.insurance", frozenset({"name"})),),
    not_before=NOW,
    expires_at=NOW + timedelta(days=1),
    issued_at=NOW,
    max_uses=2,
    kid="k",
)


class Home:
    """The home gateway as Peer.ConsentStatus answers (or fails to)."""

    def __init__(self) -> None:
        self.revoked = False
        self.up = True
        self.asked = 0

    async def __call__(self, region: str, consent_id: str) -> bool:
        assert (region, consent_id) == ("500000", "consent-0001")
        self.asked += 1
        if not self.up:
            raise ConnectionError("home gateway down")
        return self.revoked


def gate(region: str, home: Home, clock: list[float]) -> ConsentGate:
    return ConsentGate(
        region=region,
        register=MemoryConsentRegister(),
        uses=ConsentUses(),
        ask_status=home,
        pseudonym=lambda subject: "p" * 64,
        clock=lambda: NOW,
        status_seconds=30,
        monotonic=lambda: clock[0],
    )


async def test_another_regions_answer_is_kept_at_most_status_seconds() -> None:
    home, clock = Home(), [100.0]
    owner = gate("510000", home, clock)
    assert not await owner.revoked(CLAIMS)
    home.revoked = True
    clock[0] = 129.0  # within the bound: the kept answer
    assert not await owner.revoked(CLAIMS)
    assert home.asked == 1
    clock[0] = 130.0  # the bound reached: asked again, revoked
    assert await owner.revoked(CLAIMS)
    home.up = False
    clock[0] = 1000.0  # a revocation is kept for good: not asked again
    assert await owner.revoked(CLAIMS)
    assert home.asked == 2


async def test_no_fresh_answer_and_the_home_unreachable_is_refused() -> None:
    home, clock = Home(), [100.0]
    owner = gate("510000", home, clock)
    home.up = False
    with pytest.raises(ConsentError) as refused:
        await owner.revoked(CLAIMS)
    assert (refused.value.reason, refused.value.consent_id) == (
        "CONSENT_STATUS_UNAVAILABLE",
        "consent-0001",
    )
    home.up = True
    assert not await owner.revoked(CLAIMS)
    home.up, clock[0] = False, 131.0  # stale and unreachable again: refused, not assumed
    with pytest.raises(ConsentError):
        await owner.revoked(CLAIMS)


async def test_the_home_gateway_reads_its_register_and_never_asks() -> None:
    home, clock = Home(), [0.0]
    at_home = gate("500000", home, clock)
    assert not await at_home.revoked(CLAIMS)
    kept = await at_home.register.get("consent-0001")
    assert kept is not None
    assert kept.subject == "p" * 64  # the pseudonym, never the id
    await at_home.register.revoke("consent-0001", NOW)
    assert await at_home.revoked(CLAIMS)  # at once
    assert home.asked == 0


class FailingRedis:
    """A Redis client whose every script fails, as an unreachable server does."""

    async def eval(self, *_: object) -> int:
        raise ConnectionError("redis down")


async def test_a_use_given_back_is_taken_again_and_never_below_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`ConsentUses.give_back` returns a use taken for a query that released nothing (in this
    process's count; Redis's is the integration test's); never below none; with Redis failing
    it is logged and the use stays counted (the consent allows fewer queries, never more)."""
    uses = ConsentUses()
    assert await uses.take("consent-0001", NOW) == 1
    await uses.give_back("consent-0001")
    assert await uses.take("consent-0001", NOW) == 1
    await uses.give_back("consent-0001")
    await uses.give_back("consent-0001")  # nothing taken: stays at none
    assert await uses.take("consent-0001", NOW) == 1
    down = ConsentUses(FailingRedis())
    with pytest.raises(ConsentError) as refused:
        await down.take("consent-0001", NOW)
    assert refused.value.reason == "SHARED_STATE_UNAVAILABLE"
    await down.give_back("consent-0001")  # does not raise
    assert "could not be given back" in caplog.text
    assert "consent-0001" not in caplog.text
