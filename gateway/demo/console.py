"""The demo's web console: one console for 重庆 (500000), the home region of the demo's
citizen, started beside the gateways by `tongban demo --serve` (docs/console.md), and the
consent the served demo leaves for that citizen to see and revoke there."""

from __future__ import annotations

import asyncio
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from gateway._ports import free_loopback_port
from gateway.console import ConsoleConfig, EmbeddedServer
from gateway.demo._story import CALL_TIMEOUT
from gateway.demo.case_stories import MED_FIELDS, multi_applicant, open_cy_case
from gateway.demo.federation import Federation
from gateway.tokens import issue_agency_token
from registry import CURRENT_SNAPSHOT, KeyState, KeyUsage, pki_trusted_root_path
from tongban.v1 import consents_pb2, consents_pb2_grpc

__all__ = [
    "CONSENT_FILE",
    "CONSOLE_REGION",
    "OVERSIGHT_AGENCY",
    "PORTAL_AGENCY",
    "CitizenConsent",
    "DemoConsole",
    "leave_citizen_consent",
    "start_console",
]

CONSOLE_REGION: Final = "500000"
# The demo registry has no portal agency of its own: 重庆人社 plays the citizen portal.
PORTAL_AGENCY: Final = "cq.hrss"
OVERSIGHT_AGENCY: Final = "cq.data"
START_TIMEOUT: Final = 10.0  # seconds for uvicorn to listen
CONSENT_FILE: Final = "citizen-consent.jws"  # in the demo folder
CONSENT_LIFETIME: Final = timedelta(days=1)  # the served demo's consent, from when it starts
CONSENT_USES: Final = 20


@dataclass
class DemoConsole:
    url: str
    config_file: Path
    server: EmbeddedServer
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, START_TIMEOUT)


def write_config(fed: Federation, port: int) -> Path:
    """console.toml in the demo folder, naming the dev PKI's files."""
    inventory = fed.inventory()

    def tls(agency: str) -> tuple[Path, Path]:
        (record,) = inventory.find(agency, KeyUsage.TLS, KeyState.ACTIVE)
        return fed.pki / record.certificate, fed.pki / record.private_key

    portal, oversight = tls(PORTAL_AGENCY), tls(OVERSIGHT_AGENCY)
    ca = fed.pki / "regions" / CONSOLE_REGION / "ca" / "root.pem"
    text = f"""# The demo's console (tongban console serve --config this file)
[console]
listen = "127.0.0.1:{port}"
region = "{CONSOLE_REGION}"

[gateway]
address = "localhost:{fed.gateways[CONSOLE_REGION].port}"
ca_file = "{ca}"

[portal]
certificate = "{portal[0]}"
private_key = "{portal[1]}"

[oversight]
certificate = "{oversight[0]}"
private_key = "{oversight[1]}"

[registry]
snapshot_file = "{fed.published / CURRENT_SNAPSHOT}"
trusted_root = "{pki_trusted_root_path(fed.pki)}"
"""
    path = fed.folder / "console.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def start_console(fed: Federation) -> DemoConsole:
    """The console listening on a free loopback port (picked again if it was taken)."""
    problem: BaseException | None = None
    for _ in range(5):
        port = free_loopback_port()
        config_file = write_config(fed, port)
        server = EmbeddedServer(ConsoleConfig.from_file(config_file))
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            return DemoConsole(f"http://127.0.0.1:{port}/", config_file, server, task)
        problem = task.exception() if not task.cancelled() else None
    raise RuntimeError(f"the console did not start: {problem}")


def login_commands(fed: Federation) -> list[tuple[str, str]]:
    """(who, command printing a fresh token to paste) for the demo citizen and overseer."""
    tongban = shlex.quote(str(Path(sys.executable).parent / "tongban"))
    pki = shlex.quote(str(fed.pki))
    citizen = multi_applicant(fed)
    return [
        (
            "citizen (the 多地联办 case's applicant)",
            f"{tongban} token issue --pki {pki} --agency {PORTAL_AGENCY} --operator portal "
            f"--applicant {citizen}",
        ),
        (
            "overseer (重庆 数据局)",
            f"{tongban} token issue --pki {pki} --agency {OVERSIGHT_AGENCY} --operator 监督员",
        ),
    ]


@dataclass(frozen=True)
class CitizenConsent:
    """The consent the served demo left for its citizen: the artefact's file, its id, and the
    open case of the citizen that a query under it names."""

    path: Path
    consent_id: str
    case_id: str
    citizen: str


async def leave_citizen_consent(fed: Federation) -> CitizenConsent:
    """What a citizen portal does once 重庆's identity service issued a consent the citizen gave
    (重庆医保 and 四川 may read their 四川 medical insurance record for a 异地就医 filing): it
    registers the artefact at 重庆's gateway (Consents.Register, with a token naming the citizen
    as its applicant), so that the console lists it and the citizen can revoke it there. The
    artefact is written to the demo folder for an agency client (examples/client.py
    --consent), with the open case of the citizen that 重庆医保 handles, which such a query
    names (the dataset is conditional: cases bind its queries)."""
    citizen = multi_applicant(fed)
    now = datetime.now(UTC)
    artefact = fed.consent(
        CONSOLE_REGION,
        citizen,
        "MED-REG",
        [("510000", "medical.insurance", list(MED_FIELDS))],
        expires_at=now + CONSENT_LIFETIME,
        max_uses=CONSENT_USES,
    )
    token = issue_agency_token(
        fed.pki, PORTAL_AGENCY, "portal", lifetime_seconds=300, now=now, applicant=citizen
    )
    async with fed.channel(PORTAL_AGENCY) as channel:
        registered = await consents_pb2_grpc.ConsentsStub(channel).Register(
            consents_pb2.RegisterConsentRequest(consent=artefact),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=CALL_TIMEOUT,
        )
    case_id = await open_cy_case(fed, citizen)
    path = fed.folder / CONSENT_FILE
    path.write_text(artefact + "\n", encoding="utf-8")
    return CitizenConsent(path, registered.consent_id, case_id, citizen)
