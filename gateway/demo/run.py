"""`tongban demo`: three provinces on loopback, scripted scenarios, a readable transcript.

The demo builds what a federation needs from the demo registry source shipped in the package
(`registry.DEMO_SOURCE`, `conf/registry/` in a clone) — a dev PKI, a signed registry — then
starts, in this process, the gateways of 浙江 (330000), 四川 (510000) and 重庆 (500000) with their
demo data systems on free loopback ports (`gateway.demo.federation`), and plays the scenarios of
`gateway.demo.stories` as agency and oversight clients would. The exit code is 0 only when every
scenario behaved as expected.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from gateway._tables import whole
from gateway.demo.case_stories import MED_FIELDS
from gateway.demo.federation import (
    REGIONS,
    DemoError,
    DemoOptions,
    Federation,
    build_pki,
    start_federation,
    stop_federation,
)
from gateway.demo.stories import play
from registry import CURRENT_SNAPSHOT, KeyState, KeyUsage

if TYPE_CHECKING:
    from gateway.demo.console import CitizenConsent, DemoConsole

__all__ = ["DemoError", "DemoOptions", "run_demo"]

# The example agency client lives in a clone of Tongban, beside the package, not in an install.
EXAMPLE_CLIENT = Path(__file__).resolve().parents[2] / "examples" / "client.py"


def describe(fed: Federation, out: Console, options: DemoOptions) -> None:
    table = Table(title="three regions on loopback", title_justify="left")
    for column in ("region", "gateway (mTLS)", "metrics", "data system", "audit log"):
        table.add_column(column, no_wrap=True)
    for region, name in REGIONS.items():
        gateway = fed.gateways[region]
        audit = gateway.config.audit
        where = (
            f"postgres schema {audit.schema}"
            if audit is not None and audit.store == "postgres"
            else f"sqlite {audit.path.name}"
            if audit is not None and audit.path is not None
            else "memory"
        )
        table.add_row(
            f"{region} {name}",
            f"localhost:{gateway.port}",
            f"http://127.0.0.1:{gateway.metrics_port}/metrics",
            f"127.0.0.1:{fed.providers[region][1]}",
            where,
        )
    out.print(whole(table))
    cache = f"Redis at {options.redis_url}" if options.redis_url else "in memory (one per gateway)"
    out.print(f"Answer cache, replay window and quotas: {cache}.", soft_wrap=True)


def client_command(fed: Federation) -> str:
    """A ready-to-paste `examples/client.py` call as 四川人社 (sc.hrss) to its own gateway: a
    重庆 business licence (无条件共享: no open case needed, unlike a citizen's records)."""
    business = fed.citizens("500000", "market.business_licence", 2)[1]
    return _client_call(
        fed,
        "sc.hrss",
        [
            ("--provider-region", "500000"),
            ("--dataset", "market.business_licence"),
            ("--purpose", "LICENCE-VERIFY"),
            ("--subject", business),
            ("--case-id", f"CASE-{datetime.now(UTC):%Y%m%d}-0001"),
        ],
    )


def consent_command(fed: Federation, consent: CitizenConsent) -> str:
    """A ready-to-paste `examples/client.py` call as 重庆医保 (cq.hsa) to its own gateway: the
    citizen's 四川 medical insurance record (requires_consent) for their open case, under the
    consent the served demo left (`--consent`)."""
    arguments = [
        ("--provider-region", "510000"),
        ("--dataset", "medical.insurance"),
        ("--purpose", "MED-REG"),
        ("--subject", consent.citizen),
        ("--case-id", consent.case_id),
        ("--consent", str(consent.path)),
    ]
    return _client_call(fed, "cq.hsa", arguments + [("--field", f) for f in MED_FIELDS])


def _client_call(fed: Federation, agency: str, arguments: list[tuple[str, str]]) -> str:
    """`examples/client.py` as `agency` to its region's gateway, with its TLS key and a request
    token printed by `tongban token issue`, then `arguments`."""
    region = fed.region_of(agency)
    (tls,) = fed.inventory().find(agency, KeyUsage.TLS, KeyState.ACTIVE)
    python = Path(sys.executable)
    tongban = python.parent / "tongban"
    token = f"$({shlex.quote(str(tongban))} token issue --pki {shlex.quote(str(fed.pki))} --agency {agency} --operator 张三)"
    connection = [
        ("--gateway", f"localhost:{fed.gateways[region].port}"),
        ("--cert", str(fed.pki / tls.certificate)),
        ("--key", str(fed.pki / tls.private_key)),
        ("--ca", str(fed.pki / "regions" / region / "ca" / "root.pem")),
    ]
    # Named wholly, so that the command works from any folder; without a clone, the path in one.
    client = str(EXAMPLE_CLIENT) if EXAMPLE_CLIENT.is_file() else "examples/client.py"
    lines = [f"{shlex.quote(str(python))} {shlex.quote(client)}"]
    lines += [f"{flag} {shlex.quote(value)}" for flag, value in connection + arguments]
    lines.append(f'--token "{token}"')
    return " \\\n    ".join(lines)


async def _serve_console(fed: Federation, out: Console) -> DemoConsole:
    from gateway.demo.console import CONSOLE_REGION, login_commands, start_console

    console = await start_console(fed)
    out.print(
        f"[bold]The web console[/] of {CONSOLE_REGION} {REGIONS[CONSOLE_REGION]}: {console.url} "
        "(docs/console.md). Log in by pasting a token (it lives 5 minutes) that one of these "
        "prints:",
        soft_wrap=True,
    )
    for who, command in login_commands(fed):
        out.print(f"  {who}:", soft_wrap=True)
        out.print(f"  {command}", soft_wrap=True, markup=False, highlight=False)
    return console


async def _leave_consent(fed: Federation, out: Console) -> None:
    from gateway.demo.console import CONSOLE_REGION, leave_citizen_consent

    consent = await leave_citizen_consent(fed)
    out.print(
        f"[bold]The citizen's consent[/] {consent.consent_id}: issued by the identity service of "
        f"{CONSOLE_REGION} {REGIONS[CONSOLE_REGION]}, registered at its gateway by the citizen "
        f"portal (the console lists it under 我的授权 / My consents), written to {consent.path}. "
        f"重庆医保 asks 四川 for the citizen's medical insurance under it, for their open case "
        f"{consent.case_id}; once the citizen revokes the consent in the console, the same query "
        "is refused CONSENT_REVOKED:",
        soft_wrap=True,
    )
    out.print(consent_command(fed, consent), soft_wrap=True, markup=False, highlight=False)


async def _serve_until_interrupted(fed: Federation, out: Console, options: DemoOptions) -> None:
    out.print()
    describe(fed, out, options)
    out.print("[bold]The three gateways keep running.[/] Try an agency client (mutual TLS, token):")
    out.print(client_command(fed), soft_wrap=True, markup=False, highlight=False)
    out.print(f"Registry: {fed.published / CURRENT_SNAPSHOT}; PKI: {fed.pki}", soft_wrap=True)
    tongban = shlex.quote(str(Path(sys.executable).parent / "tongban"))
    out.print(
        "The cases the scenarios made, as 四川医保 sees them (docs/cases.md):", soft_wrap=True
    )
    out.print(
        f"{tongban} case list --gateway localhost:{fed.gateways['510000'].port} "
        f"--pki {shlex.quote(str(fed.pki))} --agency sc.hsa",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    console = await _serve_console(fed, out)
    await _leave_consent(fed, out)
    out.print("Ctrl-C stops them.", soft_wrap=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    out.print("Stopping the console and the gateways.")
    await console.stop()


async def _run(options: DemoOptions, out: Console, folder: Path) -> int:
    run_id = secrets.token_hex(3)
    out.print(f"[bold]Tongban demo[/] in {folder}", soft_wrap=True)
    out.print("Dev PKI for 330000 浙江, 510000 四川, 500000 重庆 and a signed registry …")
    if options.seal_algorithm == "SM2":
        out.print(
            "The regions seal with SM2: GB/T 38540 seals, each region's SESeal beside its key."
        )
    await asyncio.to_thread(build_pki, folder, options.source, options.seal_algorithm)
    fed = Federation(folder=folder, source=options.source, seal_algorithm=options.seal_algorithm)
    try:
        await start_federation(fed, options, run_id)
        describe(fed, out, options)
        ok = await play(fed, out)
        if options.serve:
            await _serve_until_interrupted(fed, out, options)
    finally:
        await stop_federation(fed, options)
    return 0 if ok else 1


def run_demo(options: DemoOptions, out: Console) -> int:
    """Play the demo; 0 when every scenario behaved as expected, 1 otherwise."""
    if not (options.source / "regions.toml").is_file():
        raise DemoError(
            f"{options.source}: no registry source here (regions.toml); give the folder of "
            "one with --source, or leave it out for the demo's own"
        )
    if options.folder is not None:
        if options.folder.exists() and not options.folder.is_dir():
            raise DemoError(f"{options.folder}: not a folder")
        if options.folder.exists() and any(options.folder.iterdir()):
            raise DemoError(f"{options.folder}: not empty; give a new or empty folder")
        options.folder.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(options, out, options.folder))
    folder = Path(tempfile.mkdtemp(prefix="tongban-demo-"))
    try:
        return asyncio.run(_run(options, out, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
