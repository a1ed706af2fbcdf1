"""The demo's scenarios: what agency and oversight clients do across three provinces.

Each scenario plays against the running federation (`gateway.demo.federation`) over mutual TLS,
with request tokens, through the public gRPC API only; it states what it expects and checks it.
The seal-key rotation is what `tongban keys rotate` (`registry.rotate_key`) and two `tongban
registry publish` do, with the gateway reloading its seal keys as SIGHUP makes `tongban gateway
serve` do.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.rpc import error_details_pb2
from rich.console import Console
from rich.table import Table

from gateway import rpcs
from gateway._tables import whole
from gateway.audit import CheckpointError, ProofError, verify_checkpoint, verify_inclusion
from gateway.demo._story import CALL_TIMEOUT, Result, Scenario, Story, mask, query, rpc_reason
from gateway.demo.case_stories import SI_FIELDS, case_cy, case_done, case_multi
from gateway.demo.config import config_for_dev_pki
from gateway.demo.federation import DemoError, Federation
from gateway.licences import RECORD_FILE
from registry import CURRENT_SNAPSHOT, KeyState, KeyUsage, rotate_key
from signer._ofd_package import read_package
from tongban.v1 import (
    common_pb2,
    credentials_pb2,
    credentials_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
)

__all__ = ["SCENARIOS", "Result", "Story", "play", "query", "rpc_reason"]

ROTATION_WORKERS = 3  # concurrent agency clients while 330000 rotates its seal key
ROTATION_PAUSE = 0.05  # seconds between one worker's requests (keeps within the agreement quota)


# helpers for the scenarios ---------------------------------------------------------------------
# grpc.StatusCode's values are (number, text) pairs: an item's status number is looked up here.
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def seal_of(record: credentials_pb2.SealedRecord) -> str:
    """A sealed record's seal, whatever its format (for comparing two answers)."""
    return record.jws or record.ses_signature.hex()


async def verify_sealed(
    credentials: credentials_pb2_grpc.CredentialsAsyncStub,
    record: credentials_pb2.SealedRecord,
) -> credentials_pb2.ValidationReport:
    """The report of the gateway behind `credentials` on a sealed record (Credentials.Verify): the JWS of
    a JAdES seal, the SES_Signature of a GB/T 38540 seal with the payload it signs, the OFD file
    of an e-licence (its seals are inside)."""
    if record.format == credentials_pb2.SEAL_FORMAT_GBT38540:
        request = credentials_pb2.VerifyRequest(
            document=record.ses_signature, detached_payload=record.payload
        )
    elif record.format == credentials_pb2.SEAL_FORMAT_OFD:
        request = credentials_pb2.VerifyRequest(document=record.payload)
    else:
        request = credentials_pb2.VerifyRequest(jws=record.jws)
    return await credentials.Verify(request, timeout=CALL_TIMEOUT)


def record_table(title: str, payload: bytes) -> Table:
    """The fields of a sealed record, ids masked."""
    table = Table(title=title, title_justify="left", show_header=True)
    table.add_column("field")
    table.add_column("value")
    for name, value in json.loads(payload).items():
        shown = mask(value) if name == "citizen_id" and isinstance(value, str) else value
        text = json.dumps(shown, ensure_ascii=False) if not isinstance(shown, str) else shown
        table.add_row(name, text if len(text) <= 60 else text[:57] + "…")
    return table


# the scenarios ---------------------------------------------------------------------------------
def _in_case(story: Story, *, fields: Sequence[str] = SI_FIELDS) -> exchange_pb2.QueryRequest:
    """重庆人社's question to 四川 about the 多地联办 case's applicant, made for the case."""
    return query(
        "510000",
        "si.participation",
        "SI-TRANSFER",
        story.citizen,
        fields=fields,
        case_id=story.case_id,
    )


async def si_transfer(fed: Federation, story: Story) -> Result:
    """川渝通办: 重庆人社 (500000), handling the open case, asks 四川 (510000) for the
    applicant's social-insurance record."""
    if not story.case_id:
        return Result(False, "no open case to ask for: the case-multi scenario did not open one")
    async with fed.channel(story.handler) as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        answer = await exchange.Query(
            _in_case(story), metadata=fed.token(story.handler), timeout=CALL_TIMEOUT
        )
        credentials = credentials_pb2_grpc.CredentialsStub(channel)
        report = await verify_sealed(credentials, answer.record)
    story.first_seal = seal_of(answer.record)
    story.audit_ids.append(answer.audit_id)
    passed = report.indication == credentials_pb2.TOTAL_PASSED
    ok = answer.record.sealer_region == "510000" and passed and not answer.cache_hit
    return Result(
        ok,
        f"allowed under {answer.agreement_id} for case {story.case_id}: {len(answer.fields)} "
        f"fields, sealed by {answer.record.sealer_region} (key {answer.record.sealer_kid[:12]}…), "
        f"seal {credentials_pb2.Indication.Name(report.indication)}, audit id {answer.audit_id}",
        record_table(f"si.participation of {mask(story.citizen)} from 四川", answer.record.payload),
    )


async def cached(fed: Federation, story: Story) -> Result:
    """The same question again for the case: answered from 四川's cache, still audited."""
    async with fed.channel(story.handler) as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        started = time.perf_counter()
        answer = await exchange.Query(
            _in_case(story), metadata=fed.token(story.handler), timeout=CALL_TIMEOUT
        )
        elapsed = (time.perf_counter() - started) * 1000
    story.audit_ids.append(answer.audit_id)
    same = seal_of(answer.record) == story.first_seal
    return Result(
        answer.cache_hit and same,
        f"cache hit: {answer.cache_hit}, the same sealed bytes: {same}, {elapsed:.1f} ms, "
        f"audit id {answer.audit_id}",
    )


async def licence(fed: Federation, story: Story) -> Result:
    """A business licence e-credential issued in 浙江, fetched and verified in 四川."""
    business = fed.citizens("330000", "market.business_licence", 1)[0]
    async with fed.channel("sc.amr") as channel:
        credentials = credentials_pb2_grpc.CredentialsStub(channel)
        answer = await credentials.Fetch(
            credentials_pb2.FetchCredentialRequest(
                issuing_region="330000",
                credential_type="business_licence",
                subject_id=business,
                purpose="LICENCE-VERIFY",
                case_id=f"CASE-{datetime.now(UTC):%Y%m%d}-LIC",
                request_id=f"demo-{secrets.token_hex(8)}",
            ),
            metadata=fed.token("sc.amr"),
            timeout=CALL_TIMEOUT,
        )
        again = await verify_sealed(credentials, answer.credential)
    table = Table(title="validation report (ETSI EN 319 102-1)", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for check in again.checks:
        table.add_row(check.name, "pass" if check.passed else "FAIL", check.detail[:70])
    name = credentials_pb2.Indication.Name
    ok = (
        answer.credential.sealer_region == "330000"
        and answer.report.indication == credentials_pb2.TOTAL_PASSED
        and again.indication == credentials_pb2.TOTAL_PASSED
    )
    payload = answer.credential.payload
    if answer.credential.format == credentials_pb2.SEAL_FORMAT_OFD:  # an SM2 region's e-licence
        payload = read_package(payload).files[RECORD_FILE]
    company = json.loads(payload).get("company_name", "?")
    form = (
        "an OFD e-licence " if answer.credential.format == credentials_pb2.SEAL_FORMAT_OFD else ""
    )
    return Result(
        ok,
        f"{company}: {form}sealed by 330000, verified by 510000's gateway on fetch "
        f"({name(answer.report.indication)}) and again on request ({name(again.indication)})",
        table,
    )


async def over_broad(fed: Federation, story: Story) -> Result:
    """A query asking for a field the purpose does not allow is refused before it leaves 重庆."""
    request = _in_case(story, fields=("name", "citizen_id", "gender"))
    story.denials_expected += 1
    async with fed.channel(story.handler) as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        try:
            await exchange.Query(request, metadata=fed.token(story.handler), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            reason = rpc_reason(exc)
            ok = exc.code() == grpc.StatusCode.PERMISSION_DENIED and reason == "FIELD_NOT_ALLOWED"
            expected = "" if ok else "; expected PERMISSION_DENIED FIELD_NOT_ALLOWED"
            return Result(ok, f"denied: {exc.code().name} {reason}: {exc.details()}{expected}")
    return Result(False, "the query was answered: expected PERMISSION_DENIED FIELD_NOT_ALLOWED")


async def batch(fed: Federation, story: Story) -> Result:
    """One BatchQuery from 重庆 to 四川 and 浙江 at once, for the case; each item stands on its
    own: a dataset the case's matter does not allow is refused, the others answered."""
    business = fed.citizens("330000", "market.business_licence", 1)[0]
    items = [
        _in_case(story),
        query(
            "330000", "market.business_licence", "LICENCE-VERIFY", business, case_id=story.case_id
        ),
        query(
            "510000",
            "medical.insurance",
            "MED-REG",
            story.citizen,
            case_id=story.case_id,
            fields=("name", "citizen_id", "status"),
        ),
    ]
    story.denials_expected += 1  # the medical-insurance item: not a query of the case's matter
    async with fed.channel(story.handler) as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        answer = await exchange.BatchQuery(
            exchange_pb2.BatchQueryRequest(items=items, request_id=f"demo-{secrets.token_hex(8)}"),
            metadata=fed.token(story.handler),
            timeout=CALL_TIMEOUT,
        )
    table = Table(title="BatchQuery items", title_justify="left")
    for column in ("#", "provider", "dataset", "subject", "status", "sealed by", "cache"):
        table.add_column(column)
    refused: list[str] = []
    for result in answer.items:
        item = items[result.index]
        status = "OK"
        if result.status.code != 0:
            status = f"{_STATUS_NAMES.get(result.status.code, result.status.code)} {_item_reason(result.status)}"
            refused.append(_item_reason(result.status))
        table.add_row(
            str(result.index),
            item.provider_region,
            item.dataset,
            mask(item.subject_id) if item.dataset != "market.business_licence" else item.subject_id,
            status,
            result.response.record.sealer_region,
            "hit" if result.response.cache_hit else "",
        )
    sealers = {r.response.record.sealer_region for r in answer.items if r.status.code == 0}
    answered = sum(r.status.code == 0 for r in answer.items)
    ok = len(answer.items) == len(items) and answered == 2 and refused == ["CASE_QUERY_NOT_ALLOWED"]
    return Result(
        ok and sealers == {"330000", "510000"},
        f"{answered}/{len(items)} items answered, sealed by {', '.join(sorted(sealers))}; "
        f"refused: {', '.join(refused) or 'none'}",
        table,
    )


def _item_reason(status: Any) -> str:
    """The contract reason of a BatchQuery item's status ("" when it carries none)."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def rotation(fed: Federation, story: Story) -> Result:
    """浙江 rotates its e-seal key while 四川 and 重庆 keep asking it for business licences."""
    gateway = fed.gateways["330000"]
    (old,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    businesses = fed.citizens("330000", "market.business_licence", 400, skip=1)
    stop = asyncio.Event()
    seen: dict[str, int] = {}
    failures: list[str] = []
    served = 0

    async def traffic(agency: str, offset: int) -> None:
        nonlocal served
        async with fed.channel(agency) as channel:
            exchange = exchange_pb2_grpc.DataExchangeStub(channel)
            n = offset
            while not stop.is_set():
                subject = businesses[n % len(businesses)]
                n += ROTATION_WORKERS
                try:
                    answer = await exchange.Query(
                        query("330000", "market.business_licence", "LICENCE-VERIFY", subject),
                        metadata=fed.token(agency),
                        timeout=CALL_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name} {rpc_reason(exc)}")
                else:
                    served += 1
                    kid = answer.record.sealer_kid
                    seen[kid] = seen.get(kid, 0) + 1
                await asyncio.sleep(ROTATION_PAUSE)

    agencies = ("sc.amr", "cq.amr", "sc.amr")
    workers = [asyncio.create_task(traffic(a, i)) for i, a in enumerate(agencies)]
    try:
        await asyncio.sleep(0.5)
        # `tongban keys rotate --owner 330000 --usage seal`: a pending successor.
        issued = rotate_key(fed.pki, "330000", KeyUsage.SEAL, now=datetime.now(UTC)).successor
        # The gateway holding the key takes it (what SIGHUP does to `tongban gateway serve`).
        reread = config_for_dev_pki(
            fed.pki,
            "330000",
            listen=gateway.config.listen,
            snapshot_file=fed.published / CURRENT_SNAPSHOT,
        )
        gateway.reload_seal_keys(reread.seal_keys)
        pending_version = fed.publish()  # every gateway learns the successor, still pending
        await fed.wait_version(pending_version)
        await asyncio.sleep(0.5)
        active_version = fed.publish()  # the successor signs, the old key retires
        await fed.wait_version(active_version)
        deadline = time.monotonic() + 5
        while seen.get(issued.kid, 0) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    table = Table(title="answers from 330000 by sealing key", title_justify="left")
    table.add_column("key")
    table.add_column("state now")
    table.add_column("answers", justify="right")
    states = {r.kid: r.state.value for r in fed.inventory().find("330000", KeyUsage.SEAL)}
    for kid, count in seen.items():
        table.add_row(kid[:16] + "…", states.get(kid, "?"), str(count))
    ok = (
        not failures
        and seen.get(old.kid, 0) > 0
        and seen.get(issued.kid, 0) > 0
        and issued.algorithm == old.algorithm  # a rotation keeps the key's algorithm
    )
    detail = f"; failures: {', '.join(sorted(set(failures)))}" if failures else ""
    return Result(
        ok,
        f"{served} answers during the rotation, {len(failures)} failed; registry v"
        f"{pending_version} published the successor (pending), v{active_version} activated it; "
        f"{seen.get(old.kid, 0)} sealed by the old key, {seen.get(issued.kid, 0)} by the new "
        f"({issued.algorithm}){detail}",
        table,
    )


async def subject_access(fed: Federation, story: Story) -> Result:
    """Oversight: who saw this 重庆 citizen's data, when and why — on both gateways; the
    case's own records (its submission, each change) are in the citizen's trail too."""
    rows: list[tuple[str, oversight_pb2.SubjectAccessEntry]] = []
    for region, agency in (("510000", "sc.data"), ("500000", "cq.data")):
        async with fed.channel(agency) as channel:
            oversight = oversight_pb2_grpc.OversightStub(channel)
            token = ""
            while True:  # one page at a time, as a data tracker reads a long trail
                answer = await oversight.SubjectAccess(
                    oversight_pb2.SubjectAccessRequest(subject_id=story.citizen, page_token=token),
                    timeout=CALL_TIMEOUT,
                )
                rows.extend((region, entry) for entry in answer.entries)
                token = answer.next_page_token
                if not token:
                    break
    table = Table(title=f"the trail of {mask(story.citizen)}", title_justify="left")
    for column in ("time (UTC)", "recorded by", "call", "requester", "purpose", "case", "outcome"):
        table.add_column(column)
    for region, entry in rows:
        table.add_row(
            entry.time.ToDatetime().strftime("%H:%M:%S.%f")[:-3],
            region,
            entry.rpc.removeprefix("/tongban.v1."),
            f"{entry.requester_agency} {entry.requester_agency_name}",
            f"{entry.purpose} {entry.purpose_name}",
            entry.case_id,
            common_pb2.Outcome.Name(entry.outcome).removeprefix("OUTCOME_").lower(),
        )
    data_calls = {rpcs.QUERY, rpcs.BATCH_QUERY, rpcs.FORWARD, rpcs.FETCH}
    provider = [e for r, e in rows if r == "510000" and e.rpc in data_calls]
    requester = [e for r, e in rows if r == "500000" and e.rpc in data_calls]
    case_records = sum(e.rpc.startswith("/tongban.v1.Cases/") for _, e in rows)
    allowed = common_pb2.OUTCOME_ALLOWED
    denied = common_pb2.OUTCOME_DENIED
    refused = sum(e.outcome == denied for e in requester)
    ok = (
        sum(e.outcome == allowed for e in provider) >= 3  # query, cached query, batch item
        and sum(e.outcome == allowed for e in requester) >= 3
        and refused == story.denials_expected  # each refusal the scenarios expected, no other
        and not any(e.outcome == denied for e in provider)  # none of them left 重庆
        and all(e.case_id == story.case_id for e in provider)  # each made for the case
    )
    return Result(
        ok,
        f"{len(provider)} accesses recorded by 四川 (the data owner), {len(requester)} by 重庆 "
        f"(the requester), {refused} of them denied (expected {story.denials_expected}); "
        f"{case_records} records of the case's calls",
        table,
    )


PROOF_REGION = "510000"  # 四川: the data owner of the query stories


async def audit_proof(fed: Federation, story: Story) -> Result:
    """Oversight checks 四川's log (the data owner's) against a signed checkpoint, as an
    outsider would."""
    gateway = fed.gateways[PROOF_REGION]
    if gateway.audit is None:
        return Result(False, f"the {PROOF_REGION} gateway has no audit log")
    async with fed.channel("sc.data") as channel:
        oversight = oversight_pb2_grpc.OversightStub(channel)
        # The log signs its head every N records or seconds; oversight may ask for one now.
        await oversight.SignCheckpoint(oversight_pb2.SignCheckpointRequest(), timeout=CALL_TIMEOUT)
        records = [
            r
            async for r in oversight.QueryAudit(
                oversight_pb2.QueryAuditRequest(subject_id=story.citizen, page_size=100),
                timeout=CALL_TIMEOUT,
            )
        ]
        if not records:
            return Result(False, f"no audit record of the citizen on {PROOF_REGION}")
        proof = await oversight.GetProof(
            oversight_pb2.GetProofRequest(
                inclusion=oversight_pb2.InclusionProofRequest(index=records[0].index)
            ),
            timeout=CALL_TIMEOUT,
        )
        checkpoint = proof.checkpoint
        try:
            # The checkpoint's signature, checked with the audit key the registry certifies.
            signed = verify_checkpoint(
                checkpoint.note,
                fed.audit_public_key(PROOF_REGION),
                checkpoint.key_name,
                origin=checkpoint.origin,
            )
            verify_inclusion(
                proof.leaf_hash, records[0].index, signed.size, list(proof.hashes), signed.root
            )
        except (CheckpointError, ProofError) as exc:
            return Result(False, f"the evidence does not hold: {exc}")
        verified = await oversight.VerifyAudit(
            oversight_pb2.VerifyAuditRequest(trusted_checkpoint=checkpoint),
            timeout=CALL_TIMEOUT,
        )
    cosigned, needed = await _cosignatures(fed, signed.size, signed.root)
    ok = verified.intact and proof.leaf_hash == records[0].leaf_hash and cosigned >= needed
    return Result(
        ok,
        f"checkpoint {signed.origin} size {signed.size} signed by {signed.key_name}: signature "
        f"valid; record #{records[0].index} included (proof of {len(proof.hashes)} hashes); "
        f"whole log {'intact' if verified.intact else 'NOT intact: ' + verified.problem} "
        f"({verified.records_checked} records, {verified.checkpoints_checked} checkpoints); "
        f"cosigned by {cosigned} witness(es), {needed} required",
    )


async def _cosignatures(fed: Federation, size: int, root: bytes) -> tuple[int, int]:
    """How many witnesses have cosigned 四川's checkpoint (waiting a little: it is offered to
    them in the background), and how many the registry requires."""
    gateway = fed.gateways[PROOF_REGION]
    needed = gateway.store.current().witness_threshold
    if gateway.witnessing is None:
        return 0, needed
    kept = gateway.witnessing.submitter.cosignatures
    deadline = time.monotonic() + CALL_TIMEOUT
    while len(lines := await kept.cosignatures(size, root)) < needed:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return len(lines), needed


SCENARIOS: tuple[tuple[str, str, Scenario], ...] = (
    ("case-cy", "川渝异地代收: a 重庆 matter received at a 四川 window, handled in 重庆", case_cy),
    ("case-multi", "多地联办 across 四川, 浙江 and 重庆: the pension transfer case", case_multi),
    (
        "si-transfer",
        "川渝通办 social-insurance transfer: 重庆 asks 四川, for the case",
        si_transfer,
    ),
    ("cache", "the same query again for the case: served from 四川's cache", cached),
    ("licence", "business licence e-credential from 浙江, verified in 四川", licence),
    ("over-broad", "over-broad query (a field outside the purpose)", over_broad),
    ("batch", "multi-region BatchQuery: 重庆 asks 四川 and 浙江 at once", batch),
    ("case-done", "重庆 completes the pension transfer; the case's queries end", case_done),
    ("rotation", "浙江 rotates its seal key in the middle of traffic", rotation),
    ("subject-access", "SubjectAccess: the audit trail of one citizen", subject_access),
    ("audit-proof", "audit verified against 四川's signed checkpoint", audit_proof),
)


# the run ---------------------------------------------------------------------------------------
async def play(fed: Federation, out: Console) -> bool:
    story = Story()
    passed = 0
    total = len(SCENARIOS)
    for number, (name, title, scenario) in enumerate(SCENARIOS, 1):
        out.print(f"[bold]\\[{number}/{total}] {name}[/]  {title} …", soft_wrap=True)
        started = time.perf_counter()
        try:
            result = await scenario(fed, story)
        except grpc.aio.AioRpcError as exc:
            result = Result(False, f"{exc.code().name} {rpc_reason(exc)}: {exc.details()}")
        except DemoError as exc:
            result = Result(False, str(exc))
        seconds = time.perf_counter() - started
        if result.table is not None:
            out.print(whole(result.table))
        verdict = "[green]OK[/]" if result.ok else "[red]UNEXPECTED[/]"
        out.print(
            f"\\[{number}/{total}] {name}  {verdict}  {result.summary} ({seconds:.2f} s)",
            soft_wrap=True,
            markup=True,
        )
        passed += result.ok
    colour = "green" if passed == total else "red"
    out.print(f"[bold {colour}]{passed} of {total} scenarios behaved as expected.[/]")
    return passed == total
