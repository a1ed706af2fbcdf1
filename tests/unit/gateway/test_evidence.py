"""The evidence bundle (`tongban audit evidence` / `check-evidence`): made from a log whose
checkpoint is time-stamped by a real TSA (`openssl ts -reply`) and cosigned by another region's
witness, it verifies offline with only the registry snapshot; a changed byte anywhere makes it
fail naming the part that holds it ("format" when the JSON is no longer canonical); and an
outsider checks every part with hashlib and the OpenSSL command line alone."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_contract import KEY, make_record
from cli_support import Run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from docs_support import REPO, section_commands
from support import Federation, make_federation
from tsa_support import Tsa, running_tsa

from gateway.audit import (
    AuditLog,
    AuditRecord,
    SqliteAuditStore,
    cosign,
    seal_kept_request,
    witness_store_for,
)
from gateway.evidence import PARTS, REQUEST_SIGNATURE_SEALED, absent_reasons, check_bundle
from gateway.timestamps import checkpoint_stamper
from registry import (
    KeyState,
    KeyUsage,
    SnapshotVerifier,
    load_trusted_root,
    pki_trusted_root_path,
)
from signer import TimeStampClient, canonical_json

REGION = "510000"
ORIGIN = f"audit.tongban/{REGION}"


@dataclass(frozen=True)
class Made:
    fed: Federation
    tsa: Tsa
    db: Path
    tsa_pem: Path
    bundle: Path


def _audit_key(fed: Federation, region: str) -> ed25519.Ed25519PrivateKey:
    (record,) = fed.inventory().find(region, KeyUsage.AUDIT, KeyState.ACTIVE)
    key = serialization.load_pem_private_key((fed.pki / record.private_key).read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


async def _fill(fed: Federation, db: Path, tsa: Tsa) -> None:
    """Seven records (req-0 … req-6; req-2 denied), a time-stamped checkpoint of size 7
    cosigned by the witness of 330000, and two more records not yet covered."""
    from gateway.audit import Outcome

    store = SqliteAuditStore(db)
    await store.open()
    try:
        log = AuditLog(store, origin=ORIGIN, key=_audit_key(fed, REGION), key_name=ORIGIN)
        log.time_stamper = checkpoint_stamper(TimeStampClient(tsa.url, anchors=[tsa.root]))
        for i in range(7):
            record = make_record(i)
            if i == 2:  # refused: no answer was sealed
                record = replace(make_record(i, outcome=Outcome.DENIED), sealed_digest="")
            await log.append(record)
        checkpoint = await log.checkpoint()
        made = cosign(checkpoint.body, _audit_key(fed, "330000"), "witness.tongban/330000", 1)
        await witness_store_for(store).add_cosignature(checkpoint.size, checkpoint.root, made)
        for i in range(7, 9):
            await log.append(make_record(i))
    finally:
        await store.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    folder = tmp_path_factory.mktemp("evidence")
    fed = make_federation(folder)
    fed.publish()
    with running_tsa(folder / "tsa") as tsa:
        db = folder / "audit-510000.db"
        asyncio.run(_fill(fed, db, tsa))
        tsa_pem = folder / "tsa.pem"
        tsa_pem.write_bytes(tsa.ca.root.read_bytes())
        yield Made(fed, tsa, db, tsa_pem, folder / "req-3.evidence.json")


def _evidence(run: Run, m: Made, request_id: str, out: Path) -> tuple[int, str, str]:
    return run(
        "audit", "evidence", "--sqlite", m.db, "--region", REGION, "--snapshot", m.fed.current,
        "--authority", pki_trusted_root_path(m.fed.pki), "--request-id", request_id, "--out", out,
    )  # fmt: skip


def _check(run: Run, m: Made, bundle: Path, *more: str | Path) -> tuple[int, str, str]:
    return run(
        "audit", "check-evidence", bundle, "--snapshot", m.fed.current,
        "--authority", pki_trusted_root_path(m.fed.pki), *more,
    )  # fmt: skip


def test_a_bundle_verifies_offline_part_by_part(run: Run, made: Made) -> None:
    code, out, err = _evidence(run, made, "req-3", made.bundle)
    assert (code, err) == (0, ""), err
    assert "checkpoint size 7, 1 cosignature(s), 1 time-stamp(s)" in out
    document = json.loads(made.bundle.read_bytes())
    assert document["format"] == "tongban.evidence/v1"
    assert json.loads(document["record"])["request_id"] == "req-3"
    assert document["inclusion_proof"]["leaf_index"] == 3
    assert document["inclusion_proof"]["tree_size"] == 7
    assert document["answer_digest"] == "ab" * 32
    assert document["request_signature"] is None
    assert document["absent"] == {"request_signature": "the record keeps no signed request"}
    assert "110105194912310021" not in made.bundle.read_text()  # pseudonymised only
    code, out, err = _check(run, made, made.bundle, "--tsa-ca", made.tsa_pem)
    assert (code, err) == (0, ""), out
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [["PASS", part] for part in PARTS]
    assert "cosigned by witness.tongban/330000 (1 required)" in out
    assert "(time-stamp by CN=tsa,O=Region)" in out
    # Without the TSA anchors the time-stamp is not taken on trust.
    code, out, err = _check(run, made, made.bundle)
    assert code == 1
    assert "UNCHECKED time_stamps" in out
    assert "give --tsa-ca" in out
    assert err == "tongban: the evidence does not hold: time_stamps\n"


def test_a_denied_record_has_no_answer_digest_and_says_why(
    run: Run, made: Made, tmp_path: Path
) -> None:
    bundle = tmp_path / "req-2.json"
    assert _evidence(run, made, "req-2", bundle)[0] == 0
    document = json.loads(bundle.read_bytes())
    assert document["answer_digest"] is None
    assert document["absent"]["answer_digest"].startswith("the record names no sealed answer")
    code, out, _ = _check(run, made, bundle, "--tsa-ca", made.tsa_pem)
    assert code == 0, out


@pytest.mark.parametrize(
    ("request_id", "problem"),
    [
        ("req-404", "tongban: no record of request req-404 in this log\n"),
        ("req-8", "tongban: no checkpoint signed by region 510000's audit key covers record 8"),
    ],
)
def test_no_bundle_without_a_record_or_a_checkpoint(
    run: Run, made: Made, tmp_path: Path, request_id: str, problem: str
) -> None:
    code, out, err = _evidence(run, made, request_id, tmp_path / "x.json")
    assert (code, out) == (1, "")
    assert err.startswith(problem)
    assert not (tmp_path / "x.json").exists()


def test_check_evidence_names_the_changed_part_and_refuses_unusable_input(
    run: Run, made: Made, tmp_path: Path
) -> None:
    bundle = tmp_path / "req-4.json"
    assert _evidence(run, made, "req-4", bundle)[0] == 0
    document = json.loads(bundle.read_bytes())
    changed = tmp_path / "changed.json"
    changed.write_bytes(bundle.read_bytes().replace(b'\\"CASE-4\\"', b'\\"CASE-5\\"'))
    assert changed.read_bytes() != bundle.read_bytes()
    code, out, err = _check(run, made, changed, "--tsa-ca", made.tsa_pem)
    assert code == 1
    assert (
        "FAIL      record            its RFC 6962 leaf hash is not in the checkpoint's tree" in out
    )
    assert err == "tongban: the evidence does not hold: record\n"
    changed.write_bytes(bundle.read_bytes().rstrip(b"\n") + b" \n")
    code, out, _ = _check(run, made, changed, "--tsa-ca", made.tsa_pem)
    assert (code, out.split()[:2]) == (1, ["FAIL", "format"])
    assert "not in canonical form" in out
    document["registry"]["version"] = 99
    changed.write_bytes(canonical_json(document) + b"\n")
    code, out, _ = _check(run, made, changed, "--tsa-ca", made.tsa_pem)
    assert code == 1
    assert "FAIL      registry          the bundle was made with registry version 99" in out
    code, out, err = _check(run, made, tmp_path / "missing.json")
    assert (code, out) == (2, "")
    assert err.startswith("tongban: ")
    assert "cannot be read" in err
    assert len(err.splitlines()) == 1
    code, out, err = _check(run, made, bundle, "--tsa-ca", bundle)
    assert (code, out) == (2, "")
    assert "--tsa-ca takes PEM certificates" in err


def _spans(data: bytes) -> dict[str, tuple[int, int]]:
    """Where each top-level member's value lies in the canonical bytes: `{"k":v,...}`, keys
    sorted, so each value follows the one before."""
    document = json.loads(data)
    spans, position = {}, 1
    for name in sorted(document):
        position += len(f'"{name}":'.encode())
        size = len(canonical_json(document[name]))
        spans[name] = (position, position + size)
        position += size + 1
    assert position == len(data) - 1  # the closing brace, then the final newline
    return spans


# Every byte of the small parts; every STRIDE-th of the large ones (the registry's certificate
# copies, the time-stamp token), to keep the test to seconds. Every byte of a bundle like this one
# was checked once by hand, with no miss (about 6,000 bytes, 12 s).
_SAMPLED = {"registry": 9, "time_stamps": 7, "record": 2}


def test_any_changed_byte_fails_naming_its_part(made: Made, run: Run) -> None:
    if not made.bundle.exists():
        assert _evidence(run, made, "req-3", made.bundle)[0] == 0
    data = made.bundle.read_bytes()
    trust = load_trusted_root(pki_trusted_root_path(made.fed.pki))
    snapshot_text = made.fed.current.read_text()
    registry = SnapshotVerifier(trust).verify(snapshot_text, held_version=None, now=None).registry
    anchors = [made.tsa.root]
    assert all(r.ok for r in check_bundle(data, registry, snapshot_text, anchors))
    spans = _spans(data)
    named: dict[str, int] = {}
    for position in range(len(data)):
        part = next((n for n, (a, b) in spans.items() if a <= position < b), "format")
        if position % _SAMPLED.get(part, 1):
            continue
        changed = data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]
        results = check_bundle(changed, registry, snapshot_text, anchors)
        failed = {r.part for r in results if not r.ok}
        assert part in failed or "format" in failed, (position, part, failed)
        if part in failed:  # else the JSON broke around it (a quote, an escape): "format"
            named[part] = named.get(part, 0) + 1
    assert set(named) == set(PARTS) - {"request_signature"}, named  # null: only breaks JSON


DASH = "\u2014"


def _payload(snapshot: Path) -> tuple[bytes, dict[str, object]]:
    text = json.loads(snapshot.read_text())["payload"]
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return data, json.loads(data)


def _root_from_proof(leaf: bytes, index: int, size: int, hashes: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2, with hashlib only."""
    fn, sn, node = index, size - 1, leaf
    for sibling in hashes:
        if sn == 0:
            raise ValueError("proof too long")
        if fn % 2 == 1 or fn == sn:
            node = hashlib.sha256(b"\x01" + sibling + node).digest()
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = hashlib.sha256(b"\x01" + node + sibling).digest()
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("proof too short")
    return node


def test_an_outsider_verifies_every_part_with_standard_tools(
    made: Made, run: Run, tmp_path: Path
) -> None:
    """docs/audit.md "Checking a bundle without Tongban", step by step."""
    bundle_file = tmp_path / "bundle.json"
    assert _evidence(run, made, "req-5", bundle_file)[0] == 0
    bundle = json.loads(bundle_file.read_bytes())
    payload, registry = _payload(made.fed.current)

    # registry: the snapshot it names (its payload's SHA-256)
    assert bundle["registry"]["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert bundle["registry"]["version"] == registry["version"]

    # record -> leaf hash -> inclusion proof -> the checkpoint's root
    record = bundle["record"].encode()
    proof = bundle["inclusion_proof"]
    leaf = hashlib.sha256(b"\x00" + record).digest()
    assert base64.b64encode(leaf).decode() == proof["leaf_hash"]
    hashes = [base64.b64decode(h) for h in proof["hashes"]]
    note = bundle["checkpoint"]
    body, _, signature_lines = note.partition("\n\n")
    origin, size, root = body.split("\n")
    assert int(size) == proof["tree_size"]
    root_found = _root_from_proof(leaf, proof["leaf_index"], proof["tree_size"], hashes)
    assert root_found == base64.b64decode(root)

    # checkpoint: Ed25519 by the region's audit key in the snapshot, under the origin's name;
    # then the cosignature, by another region's (its witness's) key, with the same commands
    keys = registry["keys"]
    assert isinstance(keys, list)
    (line,) = signature_lines.rstrip("\n").split("\n")
    dash, name, value = line.split(" ")
    assert (dash, name) == (DASH, origin)
    blob = base64.b64decode(value)
    region = origin.removeprefix("audit.tongban/")
    _check_signature(tmp_path, _audit_certificate(keys, region), (body + "\n").encode(), blob[4:])
    spki = base64.b64decode("".join((tmp_path / "audit.pub.pem").read_text().splitlines()[1:-1]))
    assert blob[:4] == hashlib.sha256(f"{origin}\n".encode() + b"\x01" + spki[-32:]).digest()[:4]
    with pytest.raises(AssertionError):  # the same check refuses another text
        _check_signature(tmp_path, _audit_certificate(keys, region), b"x", blob[4:])
    (cosignature,) = bundle["cosignatures"]
    dash, witness, value = cosignature.split(" ")
    blob = base64.b64decode(value)
    timestamp = int.from_bytes(blob[4:12], "big")
    message = f"cosignature/v1\ntime {timestamp}\n{body}\n".encode()
    witness_region = witness.removeprefix("witness.tongban/")
    _check_signature(tmp_path, _audit_certificate(keys, witness_region), message, blob[12:])
    assert witness_region != region
    assert registry["witness_threshold"] == 1

    # time-stamp: openssl ts -verify over the whole note, with the TSA's root
    (token,) = bundle["time_stamps"]
    (tmp_path / "token.der").write_bytes(base64.b64decode(token))
    (tmp_path / "checkpoint-note.txt").write_bytes(note.encode())
    (tmp_path / "tsa-root.pem").write_bytes(made.tsa_pem.read_bytes())
    (tmp_path / "tsa-chain.pem").write_bytes(made.tsa.ca.intermediate.read_bytes())
    assert "Verification: OK" in _doc_command(tmp_path, "openssl ts -verify")

    # answer digest: the record's own sealed_digest
    assert bundle["answer_digest"] == json.loads(record)["sealed_digest"]


def _audit_certificate(keys: list[dict[str, str]], region: str) -> bytes:
    return base64.b64decode(
        next(k for k in keys if k["owner"] == region and k["usage"] == "audit")["certificate"]
    )


def _check_signature(folder: Path, certificate: bytes, message: bytes, signature: bytes) -> None:
    """docs/audit.md's two commands: the key out of the certificate, the Ed25519 check."""
    (folder / "audit-certificate.der").write_bytes(certificate)
    (folder / "checkpoint-text.txt").write_bytes(message)
    (folder / "checkpoint.sig").write_bytes(signature)
    _doc_command(folder, "openssl x509")
    assert "Signature Verified Successfully" in _doc_command(folder, "openssl pkeyutl")


def _doc_command(folder: Path, start: str) -> str:
    """Run the command of docs/audit.md's "Checking a bundle without Tongban" that starts with
    `start`, as written, in `folder`; its output (AssertionError if it fails)."""
    (text,) = [
        c for c in section_commands(REPO / "docs" / "audit.md", "Checking a bundle without Tongban")
        if c.startswith(start)
    ]  # fmt: skip
    done = subprocess.run(
        ["bash", "-c", text], cwd=folder, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"$ {text}\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def test_a_kept_signed_request_is_not_copied_and_the_reason_says_where_it_is() -> None:
    """A record that keeps a signed request (its digest, the request sealed: its payload holds
    the subject's raw id) gets the reason that points to `show-request`, not "none"."""
    kept = {"record": json.dumps({"request_digest": "cd" * 32}), "request_signature": None}
    plain = {"record": json.dumps({"sealed_digest": "ab" * 32}), "request_signature": None}
    assert absent_reasons(kept)["request_signature"] == REQUEST_SIGNATURE_SEALED
    assert absent_reasons(plain)["request_signature"] == "the record keeps no signed request"
    assert "show-request" in REQUEST_SIGNATURE_SEALED


def test_an_unwitnessed_checkpoint_makes_a_bundle_that_says_it_does_not_hold(
    run: Run, made: Made, tmp_path: Path
) -> None:
    async def fill(db: Path) -> None:
        store = SqliteAuditStore(db)
        await store.open()
        try:
            log = AuditLog(store, origin=ORIGIN, key=_audit_key(made.fed, REGION), key_name=ORIGIN)
            for i in range(2):
                await log.append(make_record(i))
            await log.checkpoint()
        finally:
            await store.close()

    db, bundle = tmp_path / "unwitnessed.db", tmp_path / "req-1.json"
    asyncio.run(fill(db))
    witnessed = replace(made, db=db)
    code, _, err = _evidence(run, witnessed, "req-1", bundle)
    assert code == 0
    assert err.startswith("tongban: warning: no checkpoint covering record 1 holds the registry's")
    assert json.loads(bundle.read_bytes())["absent"]["cosignatures"] == (
        "no witness cosigned the checkpoint"
    )
    code, out, err = _check(run, made, bundle)
    assert code == 1
    assert (
        "FAIL      cosignatures      no witness cosigned the checkpoint: it does not count" in out
    )
    assert err == "tongban: the evidence does not hold: cosignatures\n"


# -- a Peer.Forward record keeping a signed request ------------------------------------------
CITIZEN = "330106198001010013"


def _forward_record(fed: Federation) -> AuditRecord:
    """The owner 510000's record of a forward signed by 330000's audit key, keeping the signed
    request sealed under the pseudonym key (as gateway/flows/_common.py writes it)."""
    from gateway.forward_signing import ForwardDocument, sign_forward
    from gateway.policy import DataRequest

    now = datetime.now(UTC)
    (entry,) = fed.inventory().find("330000", KeyUsage.AUDIT, KeyState.ACTIVE)
    document = ForwardDocument(
        requesting_region="330000",
        owner_region=REGION,
        request=DataRequest(
            provider_region=REGION, dataset="si.participation", purpose="SI-TRANSFER",
            subject_id=CITIZEN, fields=("name",), case_id="CASE-F", request_id="fwd-1",
        ),
        caller_agency="zj.hrss", caller_region="330000", caller_operator="operator-9",
        caller_thumbprint="t" * 43, credential_type="", requesting_gateway_audit_id="",
        issued_at=now,
    )  # fmt: skip
    jws = sign_forward(document, _audit_key(fed, "330000"), entry.kid)
    digest, sealed = seal_kept_request(jws, KEY)
    return replace(
        make_record(0, subject=CITIZEN), time=now, rpc="/tongban.v1.Peer/Forward",
        request_id="fwd-1", caller_agency="zj.hrss", caller_operator="operator-9",
        caller_region="330000", provider_region=REGION, case_id="CASE-F", fields=("name",),
        request_digest=digest, request_sealed=sealed,
    )  # fmt: skip


@pytest.fixture(scope="module")
def forwarded(made: Made, tmp_path_factory: pytest.TempPathFactory) -> Made:
    """A log whose one record is a forward's, in a witnessed checkpoint."""
    folder = tmp_path_factory.mktemp("forwarded")

    async def fill(db: Path) -> None:
        store = SqliteAuditStore(db)
        await store.open()
        try:
            key = _audit_key(made.fed, REGION)
            log = AuditLog(store, origin=ORIGIN, key=key, key_name=ORIGIN)
            await log.append(_forward_record(made.fed))
            checkpoint = await log.checkpoint()
            witness = _audit_key(made.fed, "330000")
            line = cosign(checkpoint.body, witness, "witness.tongban/330000", 1)
            await witness_store_for(store).add_cosignature(checkpoint.size, checkpoint.root, line)
        finally:
            await store.close()

    asyncio.run(fill(folder / "audit-510000.db"))
    (folder / "pseudonym.key").write_bytes(KEY + b"\n")
    (folder / "wrong.key").write_bytes(b"q" * 32)
    return replace(made, db=folder / "audit-510000.db", bundle=folder / "fwd-1.json")


def test_the_kept_signed_request_is_verified_with_the_pseudonym_key(
    run: Run, forwarded: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = forwarded
    code, _, err = _evidence(run, m, "fwd-1", m.bundle)
    assert (code, err) == (0, ""), err
    assert CITIZEN not in m.bundle.read_text()
    key = m.bundle.with_name("pseudonym.key")
    code, out, err = _check(run, m, m.bundle, "--pseudonym-key-file", key)
    assert (code, err) == (0, ""), out
    assert [line.split()[:2] for line in out.splitlines()] == [["PASS", part] for part in PARTS]
    (line,) = [line for line in out.splitlines() if "request_signature" in line]
    assert "signed by region 330000's audit key" in line
    assert "for agency zj.hrss" in line
    assert CITIZEN not in out
    monkeypatch.setenv("EVIDENCE_PSEUDONYM_KEY", KEY.decode())
    code, out, _ = _check(run, m, m.bundle, "--pseudonym-key-env", "EVIDENCE_PSEUDONYM_KEY")
    assert code == 0, out
    # Without the key: UNCHECKED, saying how to check it, and exit 1 (as time-stamps without
    # --tsa-ca).
    code, out, err = _check(run, m, m.bundle)
    assert code == 1
    assert "UNCHECKED request_signature not checked" in out
    assert "--pseudonym-key-file" in out
    assert err == "tongban: the evidence does not hold: request_signature\n"
    # Another deployment's key: FAIL, saying why.
    code, out, err = _check(run, m, m.bundle, "--pseudonym-key-file", key.with_name("wrong.key"))
    assert code == 1
    assert "FAIL      request_signature the record's signed request: the kept request does " in out
    assert "does not open with this pseudonym key" in out
    assert err == "tongban: the evidence does not hold: request_signature\n"
    # An unset variable cannot be used to check anything: exit 2.
    code, _, err = _check(run, m, m.bundle, "--pseudonym-key-env", "NOT_SET_ANYWHERE_EV")
    assert (code, err) == (2, "tongban: environment variable NOT_SET_ANYWHERE_EV (the pseudonym "
                                 "key) is not set\n")  # fmt: skip


def test_a_changed_byte_of_the_kept_request_fails_the_request_signature(
    run: Run, forwarded: Made
) -> None:
    m = forwarded
    if not m.bundle.exists():
        assert _evidence(run, m, "fwd-1", m.bundle)[0] == 0
    document = json.loads(m.bundle.read_bytes())
    record = document["record"]
    sealed = json.loads(record)["request_sealed"]
    at = record.index(sealed) + len(sealed) // 2
    record = record[:at] + ("A" if record[at] != "A" else "B") + record[at + 1 :]
    document["record"] = record
    changed = m.bundle.with_name("changed.json")
    changed.write_bytes(canonical_json(document) + b"\n")
    key = m.bundle.with_name("pseudonym.key")
    code, out, err = _check(run, m, changed, "--pseudonym-key-file", key)
    assert code == 1
    assert "FAIL      request_signature the record's signed request: the kept request " in out
    assert err == "tongban: the evidence does not hold: record, request_signature\n"
