"""The home gateway's consent register: durable in its SQLite file (a revocation survives a
reopen, the first one stays), a citizen's consents newest first, the memory one alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.consent import MemoryConsentRegister, RegisteredConsent, SqliteConsentRegister

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def consent(consent_id: str, subject: str, issued: datetime) -> RegisteredConsent:
    return RegisteredConsent(
        consent_id=consent_id,
        subject=subject,
        agencies=("cq.hsa",),
        regions=(),
        purpose="MED-REG",
        datasets=("510000/medical.insurance",),
        valid_from=issued,
        valid_until=issued + timedelta(days=30),
        max_uses=3,
        issued_at=issued,
    )


async def test_a_revocation_survives_a_reopen_and_the_first_time_stays(tmp_path: Path) -> None:
    path = tmp_path / "audit.db-consents.sqlite"
    register = SqliteConsentRegister(path)
    kept = await register.register(consent("consent-0001", "a" * 64, T0))
    assert kept.revoked_at is None
    again = await register.register(consent("consent-0001", "b" * 64, T0 + timedelta(days=1)))
    assert again == kept  # idempotent: the first registration stays
    revoked = await register.revoke("consent-0001", T0 + timedelta(hours=1))
    assert revoked is not None
    assert revoked.revoked_at == T0 + timedelta(hours=1)
    later = await register.revoke("consent-0001", T0 + timedelta(hours=2))
    assert later is not None
    assert later.revoked_at == T0 + timedelta(hours=1)
    assert await register.revoke("consent-none", T0) is None
    register.close()
    reopened = SqliteConsentRegister(path)
    found = await reopened.get("consent-0001")
    assert found is not None
    assert found.revoked_at == T0 + timedelta(hours=1)
    assert found.datasets == ("510000/medical.insurance",)
    assert found.subject == "a" * 64
    reopened.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_citizens_consents_are_listed_newest_first_and_only_theirs(
    tmp_path: Path, kind: str
) -> None:
    register = (
        MemoryConsentRegister() if kind == "memory" else SqliteConsentRegister(tmp_path / "c.db")
    )
    for n, subject in enumerate(["a" * 64, "a" * 64, "c" * 64]):
        await register.register(consent(f"consent-000{n}", subject, T0 + timedelta(days=n)))
    listed = await register.of_subject("a" * 64)
    assert [c.consent_id for c in listed] == ["consent-0001", "consent-0000"]
    assert await register.of_subject("d" * 64) == []
