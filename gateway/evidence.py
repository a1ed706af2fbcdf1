"""The evidence bundle (docs/audit.md "The evidence bundle"): one canonical JSON file holding
what proves that one audit record is in a region's log, which checkpoint its signed root is, who
cosigned it, when it existed, and the digest of the sealed answer the record names, so that
anyone can check it offline with only the registry snapshot.

`tongban.evidence/v1`, RFC 8785 (JCS) canonical JSON, one object with exactly these members:

    format            "tongban.evidence/v1"
    record            the record's canonical bytes (as hashed into its RFC 6962 leaf), as text
    inclusion_proof   {"leaf_index", "tree_size", "leaf_hash", "hashes"} (hashes base64)
    checkpoint        the C2SP signed note of size tree_size, signed by the region's audit key
    cosignatures      the C2SP cosignature/v1 lines of the other regions' witnesses on it
    time_stamps       base64 DER RFC 3161 tokens over the UTF-8 of `checkpoint`
    request_signature the signed request the record keeps, or null (it holds the raw subject
                      id: the record keeps it sealed, checked with the pseudonym key)
    answer_digest     the record's sealed_digest (hex SHA-256 of the sealed answer), or null
    registry          {"version", "payload_sha256", "audit_certificates",
                       "witness_certificates"}: the snapshot it is checked with, and copies of
                       the keys it names (a checker takes the keys from the snapshot, never
                       from here, and fails the part when the copies differ)
    absent            {part: reason} for each part that is null or empty, the reason fixed by
                      the record (so that no byte of the file goes unchecked)

`check_bundle` checks each part and returns one `PartCheck` per part; any changed byte of the
file makes at least the part holding it fail ("format" when the JSON no longer parses or is no
longer canonical).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from gateway._evidence_token import TokenProof, prove_token
from gateway.audit import (
    AuditRecord,
    Checkpoint,
    CheckpointError,
    KeptRequestError,
    ProofError,
    leaf_hash,
    verify_checkpoint,
    verify_inclusion,
)
from gateway.kept_request import prove_kept_request
from gateway.witnessing import audit_keys, cosignature_report, log_origin, witness_name
from registry import KeyUsage, Registry, snapshot_payload
from signer import canonical_json

__all__ = [
    "FORMAT",
    "MAX_BUNDLE_BYTES",
    "PARTS",
    "REQUEST_SIGNATURE_SEALED",
    "BundleParts",
    "PartCheck",
    "absent_reasons",
    "check_bundle",
    "make_bundle",
    "registry_part",
]

FORMAT = "tongban.evidence/v1"
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
PARTS = (
    "format",
    "registry",
    "checkpoint",
    "cosignatures",
    "time_stamps",
    "inclusion_proof",
    "record",
    "answer_digest",
    "request_signature",
    "absent",
)
_MEMBERS = frozenset(PARTS)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DASH = "\u2014"

NO_ANSWER = "the record names no sealed answer (nothing was released)"
NO_REQUEST_SIGNATURE = "the record keeps no signed request"
# A Peer.Forward record keeps the signed request's SHA-256 and the request sealed: its payload
# holds the subject's raw id, which no bundle may hold. The digest is in `record`.
REQUEST_SIGNATURE_SEALED = (
    "the record keeps the signed request's SHA-256 (request_digest) and the request itself "
    "sealed, as it holds the subject's id: tongban audit show-request opens and verifies it"
)
NO_TIME_STAMP = "the checkpoint was not time-stamped (no [timestamp] in the gateway's config)"
NO_COSIGNATURE = "no witness cosigned the checkpoint"
_REASONS = {
    "answer_digest": NO_ANSWER,
    "request_signature": NO_REQUEST_SIGNATURE,
    "time_stamps": NO_TIME_STAMP,
    "cosignatures": NO_COSIGNATURE,
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    """Strict base64: the canonical encoding only (a changed padding bit is a changed byte)."""
    if not isinstance(text, str):
        raise TypeError(f"{what} is not a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not base64") from exc
    if _b64(data) != text:
        raise ValueError(f"{what} is not canonical base64")
    return data


@dataclass(frozen=True)
class BundleParts:
    """What `make_bundle` puts together, read from a log's store."""

    record: bytes  # canonical record bytes
    index: int
    tree_size: int
    hashes: Sequence[bytes]
    checkpoint: Checkpoint
    cosignature_lines: Sequence[str]  # "— name base64" (no newline)
    request_signature: Mapping[str, Any] | None


@dataclass(frozen=True)
class PartCheck:
    part: str
    ok: bool
    detail: str
    checked: bool = True  # False: the part could not be checked (e.g. no TSA anchor given)

    @property
    def status(self) -> str:
        if not self.checked:
            return "UNCHECKED"
        return "PASS" if self.ok else "FAIL"


def payload_sha256(snapshot_text: str) -> str:
    """Hex SHA-256 of the snapshot's payload (the canonical registry JSON, base64url-decoded)."""
    return hashlib.sha256(snapshot_payload(snapshot_text)).hexdigest()


def _certificates(registry: Registry, region: str) -> list[str]:
    return [_b64(entry.certificate) for entry in registry.keys_of(region, KeyUsage.AUDIT)]


def registry_part(registry: Registry, snapshot_text: str, log_region: str) -> dict[str, Any]:
    """The `registry` member: the snapshot's version and payload hash, with copies of the log's
    audit certificates and of each other region's witness certificates (its audit ones)."""
    return {
        "version": registry.version,
        "payload_sha256": payload_sha256(snapshot_text),
        "audit_certificates": _certificates(registry, log_region),
        "witness_certificates": {
            witness_name(r.code): _certificates(registry, r.code)
            for r in registry.regions
            if r.code != log_region
        },
    }


def absent_reasons(document: Mapping[str, Any]) -> dict[str, str]:
    """Why each empty part is empty (null or []): a fixed text per part (for the request
    signature, one of two, by whether the record keeps one), so that the `absent` member is
    checked byte for byte like the rest."""
    reasons = {part: reason for part, reason in _REASONS.items() if not document.get(part)}
    if "request_signature" in reasons and _keeps_request(document.get("record")):
        reasons["request_signature"] = REQUEST_SIGNATURE_SEALED
    return reasons


def _keeps_request(record: object) -> bool:
    """Whether the record's text holds a kept signed request's digest (`request_digest`)."""
    try:
        fields = json.loads(record) if isinstance(record, str) else None
    except json.JSONDecodeError:
        return False
    return isinstance(fields, dict) and bool(fields.get("request_digest"))


def make_bundle(parts: BundleParts, registry_member: Mapping[str, Any]) -> bytes:
    """The bundle's bytes: canonical JSON and a final newline."""
    record = AuditRecord.from_canonical(parts.record)
    stamps = [_b64(parts.checkpoint.time_stamp)] if parts.checkpoint.time_stamp else []
    lines = [line.rstrip("\n") for line in parts.cosignature_lines]
    document = {
        "format": FORMAT,
        "record": parts.record.decode("utf-8"),
        "inclusion_proof": {
            "leaf_index": parts.index,
            "tree_size": parts.tree_size,
            "leaf_hash": _b64(leaf_hash(parts.record)),
            "hashes": [_b64(h) for h in parts.hashes],
        },
        "checkpoint": parts.checkpoint.note,
        "cosignatures": lines,
        "time_stamps": stamps,
        "request_signature": (
            dict(parts.request_signature) if parts.request_signature is not None else None
        ),
        "answer_digest": record.sealed_digest or None,
        "registry": dict(registry_member),
    }
    document["absent"] = absent_reasons(document)
    return canonical_json(document) + b"\n"


@dataclass
class _Context:
    """What the checks learn from one another (each check still names only its own part)."""

    document: dict[str, Any]
    registry: Registry
    snapshot_text: str
    anchors: Sequence[x509.Certificate]
    region: str = ""
    checkpoint: Checkpoint | None = None
    at: datetime | None = None  # when the checkpoint provably existed (a time-stamp's genTime)
    record: AuditRecord | None = None
    pseudonym_key: bytes | None = None  # opens the signed request a record keeps
    now: datetime | None = None
    proofs: dict[bytes, TokenProof] = field(default_factory=dict)

    def proof(self, token: bytes, note: str) -> TokenProof:
        """What `token` proves about `note` (once per token: the chain is built once)."""
        if token not in self.proofs:
            self.proofs[token] = prove_token(token, note.encode(), self.anchors)
        return self.proofs[token]


def _parse(data: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        text = data.decode("utf-8")
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"not JSON ({exc.__class__.__name__})"
    if not isinstance(document, dict) or set(document) != _MEMBERS:
        return None, f"not a bundle: its members are not {', '.join(sorted(_MEMBERS))}"
    if document["format"] != FORMAT:
        return None, f"format is not {FORMAT}"
    if canonical_json(document) + b"\n" != data:
        return None, "not in canonical form (JCS, one final newline): the bytes were changed"
    return document, f"{FORMAT}, canonical"


def check_bundle(
    data: bytes,
    registry: Registry,
    snapshot_text: str,
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
    pseudonym_key: bytes | None = None,
) -> list[PartCheck]:
    """Check every part of the bundle in `data` against the (verified) registry snapshot and
    the TSA trust anchors; the first entry is the format's. With the deployment's pseudonym
    key, the signed request a Peer.Forward record keeps sealed is opened and verified too."""
    document, detail = _parse(data)
    if document is None:
        return [PartCheck("format", False, detail)]
    context = _Context(document, registry, snapshot_text, anchors, pseudonym_key=pseudonym_key)
    context.at = context.now = now or datetime.now(UTC)
    results = [PartCheck("format", True, detail)]
    for part, check in _CHECKS:
        try:
            ok, detail, *checked = check(context)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            ok, detail, checked = False, f"malformed: {exc}", []
        results.append(PartCheck(part, ok, detail, checked[0] if checked else True))
    return results


def _check_registry(context: _Context) -> tuple[bool, str]:
    member = context.document["registry"]
    registry = context.registry
    if not isinstance(member, dict):
        return False, "not an object"
    checkpoint_text = context.document["checkpoint"]
    origin = checkpoint_text.split("\n", 1)[0] if isinstance(checkpoint_text, str) else ""
    region = origin.removeprefix("audit.tongban/")
    expected = registry_part(registry, context.snapshot_text, region)
    if member.get("version") != registry.version:
        return False, (
            f"the bundle was made with registry version {member.get('version')}, the snapshot "
            f"given is version {registry.version}: give the one it names"
        )
    if member.get("payload_sha256") != expected["payload_sha256"]:
        return False, f"payload_sha256 is not the snapshot's ({expected['payload_sha256']})"
    if member != expected:
        return False, "the certificates copied in are not the snapshot's"
    return True, (
        f"registry version {registry.version}, payload sha256 {expected['payload_sha256'][:16]}…"
    )


def _check_checkpoint(context: _Context) -> tuple[bool, str]:
    note = context.document["checkpoint"]
    if not isinstance(note, str):
        return False, "not a signed note"
    origin = note.split("\n", 1)[0]
    region = origin.removeprefix("audit.tongban/")
    if origin != log_origin(region) or context.registry.region(region) is None:
        return False, f"not the log of a region in the registry: {origin!r}"
    context.region = region
    for line in note.partition("\n\n")[2].split("\n")[:-1]:
        _unb64(line.rpartition(" ")[2], "a signature")
    at = _stamp_time(context, note)
    context.at = at or context.at
    assert context.at is not None
    for key in audit_keys(context.registry, region, context.at):
        for name in (origin, f"audit-{region}"):
            try:
                checkpoint = verify_checkpoint(note, key, name, origin=origin)
            except CheckpointError:
                continue
            context.checkpoint = checkpoint
            return True, f"{origin} size {checkpoint.size}, signed by the region's audit key"
    return False, f"not signed by an audit key of region {region} in the registry"


def _stamp_time(context: _Context, note: str) -> datetime | None:
    """The earliest genTime a valid token proves for `note` (the time the keys are taken at)."""
    stamps = context.document["time_stamps"]
    if not context.anchors or not isinstance(stamps, list):
        return None
    times = []
    for text in stamps:
        try:
            proof = context.proof(_unb64(text, "token"), note)
        except (ValueError, TypeError):
            continue
        if proof.gen_time is not None:
            times.append(proof.gen_time)
    return min(times, default=None)


def _check_cosignatures(context: _Context) -> tuple[bool, str]:
    lines = context.document["cosignatures"]
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        return False, "not a list of signature lines"
    if not lines and context.registry.witness_threshold > 0:
        return False, f"{NO_COSIGNATURE}: it does not count"
    note = context.document["checkpoint"]
    if context.checkpoint is None or not isinstance(note, str):
        return False, "no verified checkpoint to cosign (see checkpoint)"
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH:
            return False, f"a malformed line: {line[:40]!r}"
        _unb64(parts[2], f"the cosignature by {parts[1]}")
    assert context.at is not None
    report = cosignature_report(
        context.checkpoint.body, [f"{line}\n" for line in lines], context.registry,
        context.region, context.at,
    )  # fmt: skip
    if report.problems:
        return False, "; ".join(report.problems)
    if len(report.witnesses) != len(lines):
        return False, "a line is not a valid cosignature by a witness of the registry"
    if not report.enough:
        return False, (
            f"{len(report.witnesses)} valid cosignature(s), the registry's witness_threshold "
            f"is {report.threshold}"
        )
    return True, (
        f"cosigned by {', '.join(report.witnesses) or 'no witness'} ({report.threshold} required)"
    )


def _check_time_stamps(context: _Context) -> tuple[bool, str, bool]:
    stamps = context.document["time_stamps"]
    if not isinstance(stamps, list):
        return False, "not a list", True
    if not stamps:
        return True, f"none: {NO_TIME_STAMP}", True
    note = context.document["checkpoint"]
    if not isinstance(note, str):
        return False, "no checkpoint note to prove", True
    tokens = [_unb64(text, f"token {i}") for i, text in enumerate(stamps)]
    if not context.anchors:
        return False, f"{len(tokens)} token(s) not checked: give --tsa-ca", False
    found = []
    for i, token in enumerate(tokens):
        proof = context.proof(token, note)
        if proof.gen_time is None:
            return False, f"token {i} proves nothing: {proof.problem}", True
        found.append(f"existed at {proof.gen_time:%Y-%m-%d %H:%M:%SZ} (time-stamp by {proof.tsa})")
    return True, "; ".join(found), True


def _proof_member(context: _Context) -> tuple[int, int, bytes, list[bytes]]:
    proof = context.document["inclusion_proof"]
    if not isinstance(proof, dict) or set(proof) != {
        "leaf_index", "tree_size", "leaf_hash", "hashes",
    }:  # fmt: skip
        raise ValueError("not an inclusion proof object")
    index, size, hashes = proof["leaf_index"], proof["tree_size"], proof["hashes"]
    if type(index) is not int or type(size) is not int or not isinstance(hashes, list):
        raise ValueError("leaf_index and tree_size are integers, hashes a list")
    return (
        index,
        size,
        _unb64(proof["leaf_hash"], "leaf_hash"),
        [_unb64(h, "a proof hash") for h in hashes],
    )


def _check_inclusion(context: _Context) -> tuple[bool, str]:
    index, size, leaf, hashes = _proof_member(context)
    checkpoint = context.checkpoint
    if checkpoint is None:
        return False, "no verified checkpoint to prove against (see checkpoint)"
    if size != checkpoint.size:
        return False, f"tree_size {size} is not the checkpoint's {checkpoint.size}"
    try:
        verify_inclusion(leaf, index, size, hashes, checkpoint.root)
    except ProofError as exc:
        return False, f"does not lead to the checkpoint's root: {exc}"
    return True, f"leaf {index} of {size} leads to the checkpoint's root"


def _check_record(context: _Context) -> tuple[bool, str]:
    text = context.document["record"]
    if not isinstance(text, str):
        return False, "not the record's canonical text"
    data = text.encode("utf-8")
    try:
        record = AuditRecord.from_canonical(data)
    except (ValueError, KeyError, TypeError) as exc:
        return False, f"not an audit record: {exc}"
    if record.canonical != data:
        return False, "not the canonical encoding of an audit record"
    context.record = record
    leaf = leaf_hash(data)
    checkpoint = context.checkpoint
    try:
        index, size, claimed, hashes = _proof_member(context)
    except (ValueError, TypeError):
        return False, "no inclusion proof to check the leaf hash with (see inclusion_proof)"
    if leaf != claimed:
        # The proof's leaf_hash may be the damaged byte: the record still counts when its own
        # leaf hash leads to the signed root.
        if checkpoint is None:
            return False, "its leaf hash is not the inclusion proof's"
        try:
            verify_inclusion(leaf, index, size, hashes, checkpoint.root)
        except ProofError:
            return False, "its RFC 6962 leaf hash is not in the checkpoint's tree"
    if context.region and record.region != context.region:
        return False, f"a record of region {record.region}, in the log of {context.region}"
    return True, f"request {record.request_id}, {record.outcome.value}, at {record.time_text}"


def _check_answer(context: _Context) -> tuple[bool, str]:
    digest = context.document["answer_digest"]
    record = context.record
    if record is None:
        return False, "no record to compare with (see record)"
    if digest is None:
        if record.sealed_digest:
            return False, "null, but the record names a sealed answer"
        return True, f"none: {NO_ANSWER}"
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        return False, "not a hex SHA-256"
    if digest != record.sealed_digest:
        return False, "not the sealed answer's digest the record holds"
    return True, f"sha256 {digest} (as the record holds it)"


def _check_request(context: _Context) -> tuple[bool, str, bool]:
    signature = context.document["request_signature"]
    if signature is not None:
        return False, "this tongban reads no signed request in a bundle", True
    record = context.record
    if record is None:
        return False, "no record to compare with (see record)", True
    if not _keeps_request(context.document["record"]):
        return True, f"none: {NO_REQUEST_SIGNATURE}", True
    if context.pseudonym_key is None:
        return (
            False,
            (
                "not checked: the record keeps the signed request sealed (its SHA-256 is "
                "request_digest): give the pseudonym key (--pseudonym-key-file or "
                "--pseudonym-key-env) to open and verify it"
            ),
            False,
        )
    assert context.now is not None
    try:
        _, signed = prove_kept_request(
            record, context.pseudonym_key, context.registry, now=context.now
        )
    except KeptRequestError as exc:
        return False, f"the record's signed request: {exc}", True
    document = signed.document
    return (
        True,
        (
            f"signed by region {document.requesting_region}'s audit key {signed.kid} at "
            f"{document.issued_at:%Y-%m-%dT%H:%M:%SZ} for agency {document.caller_agency}; it opens "
            "to the record's request_digest and says what the record says"
        ),
        True,
    )


def _check_absent(context: _Context) -> tuple[bool, str]:
    absent = context.document["absent"]
    expected = absent_reasons(context.document)
    if absent != expected:
        return False, "does not give the fixed reason of exactly the empty parts"
    return True, f"{len(expected)} part(s) empty, each with its reason"


_CHECKS = (
    ("registry", _check_registry),
    ("checkpoint", _check_checkpoint),
    ("cosignatures", _check_cosignatures),
    ("time_stamps", _check_time_stamps),
    ("inclusion_proof", _check_inclusion),
    ("record", _check_record),
    ("answer_digest", _check_answer),
    ("request_signature", _check_request),
    ("absent", _check_absent),
)
