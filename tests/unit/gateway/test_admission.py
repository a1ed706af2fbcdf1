"""CallAdmission: calls in flight per client certificate and per pool (docs/threats.md T15)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from gateway.admission import DEFAULT_LIMITS, CallAdmission, Limits, Pool, Refusal

SMALL = MappingProxyType(
    {
        Pool.PEERS: Limits(per_certificate=3, pool=4),
        Pool.AGENCIES: Limits(per_certificate=2, pool=3),
        Pool.OTHERS: Limits(per_certificate=1, pool=1),
    }
)


@pytest.mark.parametrize(
    ("held", "pool", "certificate", "expected"),
    [
        # (calls already admitted, as (pool, certificate)), the next call, what it gets
        ((), Pool.AGENCIES, "a", None),
        ((("agencies", "a"),), Pool.AGENCIES, "a", None),
        (
            (("agencies", "a"), ("agencies", "a")),
            Pool.AGENCIES,
            "a",
            Refusal(Pool.AGENCIES, whole_pool=False, limit=2),
        ),
        ((("agencies", "a"), ("agencies", "a")), Pool.AGENCIES, "b", None),
        (
            (("agencies", "a"), ("agencies", "a"), ("agencies", "b")),
            Pool.AGENCIES,
            "c",
            Refusal(Pool.AGENCIES, whole_pool=True, limit=3),
        ),
        # the agencies' pool full: peers keep theirs
        ((("agencies", "a"), ("agencies", "a"), ("agencies", "b")), Pool.PEERS, "g", None),
        # one certificate in two pools is counted in each apart
        ((("agencies", "a"), ("agencies", "a")), Pool.PEERS, "a", None),
        ((("others", "x"),), Pool.OTHERS, "y", Refusal(Pool.OTHERS, whole_pool=True, limit=1)),
        ((("others", "x"),), Pool.OTHERS, "x", Refusal(Pool.OTHERS, whole_pool=False, limit=1)),
    ],
)
def test_admit(
    held: tuple[tuple[str, str], ...], pool: Pool, certificate: str, expected: Refusal | None
) -> None:
    admission = CallAdmission(SMALL)
    for held_pool, held_certificate in held:
        assert admission.admit(Pool(held_pool), held_certificate) is None
    assert admission.admit(pool, certificate) == expected
    taken = 0 if expected else 1
    assert admission.in_flight(pool, certificate) == taken + sum(
        1 for p, c in held if (Pool(p), c) == (pool, certificate)
    )


def test_a_refused_call_takes_nothing_and_a_released_one_gives_its_slot_back() -> None:
    admission = CallAdmission(SMALL)
    assert admission.admit(Pool.AGENCIES, "a") is None
    assert admission.admit(Pool.AGENCIES, "a") is None
    for _ in range(3):
        assert admission.admit(Pool.AGENCIES, "a") is not None
    assert admission.in_flight(Pool.AGENCIES) == 2
    admission.release(Pool.AGENCIES, "a")
    assert admission.in_flight(Pool.AGENCIES, "a") == 1
    assert admission.admit(Pool.AGENCIES, "a") is None
    admission.release(Pool.AGENCIES, "a")
    admission.release(Pool.AGENCIES, "a")
    assert admission.in_flight(Pool.AGENCIES) == 0
    assert admission._certificates == {}  # a certificate with nothing in flight is forgotten


def test_refusals_explain_themselves_without_naming_the_certificate() -> None:
    admission = CallAdmission(SMALL)
    admission.admit(Pool.OTHERS, "5f3c-thumbprint")
    refusal = admission.admit(Pool.OTHERS, "5f3c-thumbprint")
    assert refusal is not None
    assert "1 at most" in refusal.explain()
    assert "5f3c" not in refusal.explain()
    refusal = admission.admit(Pool.OTHERS, "another")
    assert refusal is not None
    assert "others" in refusal.explain()


@pytest.mark.parametrize(
    ("per_certificate", "pool"), [(0, 10), (11, 10), (-1, 5)], ids=["zero", "over", "negative"]
)
def test_limits_refuse_to_exist_inconsistent(per_certificate: int, pool: int) -> None:
    with pytest.raises(ValueError, match="per_certificate"):
        Limits(per_certificate=per_certificate, pool=pool)


def test_every_pool_needs_limits() -> None:
    with pytest.raises(ValueError, match="no limits"):
        CallAdmission(MappingProxyType({Pool.PEERS: Limits(1, 1)}))


def test_the_defaults_keep_peers_apart_and_under_the_transport_backstop() -> None:
    from gateway.server import MAX_CONCURRENT_RPCS

    assert set(DEFAULT_LIMITS) == set(Pool)
    assert sum(limits.pool for limits in DEFAULT_LIMITS.values()) < MAX_CONCURRENT_RPCS
    # one agency cannot take the agencies' pool, one peer cannot take the peers'
    assert DEFAULT_LIMITS[Pool.AGENCIES].per_certificate < DEFAULT_LIMITS[Pool.AGENCIES].pool
    assert DEFAULT_LIMITS[Pool.PEERS].per_certificate < DEFAULT_LIMITS[Pool.PEERS].pool
