"""Scanning text for what must never leave a gateway: private keys, dev secrets, tokens, bearer
values and raw subject ids (citizen ids, business credit codes). Used by the demo hygiene test
and the hostile-input log test."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.demo.data import DemoData
from gateway.demo.federation import REGIONS

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")  # a JWS/JWT: header.payload
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
BEARER = re.compile(r"Bearer\s+\S", re.I)


def demo_subjects() -> set[str]:
    """Every subject the demo can have asked about (it draws from the start of these lists)."""
    found: set[str] = set()
    for region in REGIONS:
        data = DemoData(region)
        found.update(data.population(600))
        found.update(data.businesses(1300))
    return found


def pki_secrets(folder: Path) -> list[tuple[str, str]]:
    """(what, text) of every secret a demo folder's PKI holds: private key bodies, dev secrets."""
    found = []
    for key in (folder / "pki").rglob("*.key"):
        body = "".join(
            line for line in key.read_text().splitlines() if line and not line.startswith("-----")
        )
        found.append((f"private key {key.name}", body[20:60]))  # a slice of the base64 body
    for secret in (folder / "pki").glob("*.secret"):
        found.append((f"dev secret {secret.name}", secret.read_text().strip()))
    return found


def leaks(where: str, text: str, subjects: set[str], secrets: list[tuple[str, str]]) -> list[str]:
    """What of the above `text` holds, each named without repeating it whole."""
    problems = [f"{where}: {p.pattern}" for p in (JWT, PEM_PRIVATE, BEARER) if p.search(text)]
    problems += [f"{where}: {what}" for what, value in secrets if value and value in text]
    for candidate in re.findall(r"(?<![0-9A-Z])[0-9A-Z]{18}(?![0-9A-Z])", text):
        if candidate in subjects:
            problems.append(f"{where}: a raw subject id {candidate[:6]}…")
    return problems
