"""Signed tree heads in the C2SP tlog-checkpoint format, as C2SP signed notes (Ed25519).

    <origin>\\n<tree size, decimal>\\n<root hash, base64>\\n
    \\n
    — <key name> <base64(4-byte key hash || Ed25519 signature of the text above the blank line)>\\n

The key hash is the first 4 bytes of SHA-256(key name || "\\n" || 0x01 || public key), as the
signed-note format defines for Ed25519 keys. As C2SP tlog-checkpoint recommends, the key name is
the log's origin (e.g. `audit.tongban/510000`); logs signed before that used `audit-<region>`,
and `AuditLog` still verifies those notes under their old name (`former_key_names`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway._errors import GatewayError

__all__ = ["Checkpoint", "CheckpointError", "key_hash", "sign_checkpoint", "verify_checkpoint"]

_DASH = "\u2014"  # the em dash that starts a signature line


class CheckpointError(GatewayError, ValueError):
    """A checkpoint that is malformed or whose signature does not verify."""


def key_hash(name: str, public_key: ed25519.Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + raw).digest()[:4]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    note: str  # the whole signed note, exactly as signed and stored
    key_name: str
    # When the log signed it (not part of the signed note: the store keeps it beside the note).
    signed_at: datetime | None = field(default=None, compare=False)
    # An RFC 3161 token over the UTF-8 of `note` (`[timestamp]`), kept beside it likewise.
    time_stamp: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def sign_checkpoint(
    origin: str,
    size: int,
    root: bytes,
    key: ed25519.Ed25519PrivateKey,
    key_name: str,
    *,
    signed_at: datetime | None = None,
) -> Checkpoint:
    if (
        not origin
        or "\n" in origin
        or not key_name
        or any(c.isspace() or c == "+" for c in key_name)
    ):
        raise CheckpointError(
            "origin and key name are single lines (the key name without spaces and '+')"
        )
    body = f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"
    signature = key.sign(body.encode())
    line = f"{_DASH} {key_name} {base64.b64encode(key_hash(key_name, key.public_key()) + signature).decode()}\n"
    return Checkpoint(origin, size, root, body + "\n" + line, key_name, signed_at)


def verify_checkpoint(
    note: str, public_key: ed25519.Ed25519PublicKey, key_name: str, *, origin: str | None = None
) -> Checkpoint:
    """Parse a signed checkpoint and check the signature by `key_name`; raise CheckpointError."""
    body, sep, signatures = note.partition("\n\n")
    if not sep or not body:
        raise CheckpointError("not a signed note (no blank line before the signatures)")
    body += "\n"
    lines = body.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root hash")
    note_origin, size_text, root_text = lines[0], lines[1], lines[2]
    if origin is not None and note_origin != origin:
        raise CheckpointError(f"checkpoint of log {note_origin!r}, not {origin!r}")
    if not (size_text.isascii() and size_text.isdigit()) or (
        size_text != "0" and size_text.startswith("0")
    ):
        raise CheckpointError("the tree size is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError("the root hash is not base64") from exc
    if len(root) != 32:
        raise CheckpointError("the root hash is not 32 bytes")
    expected = key_hash(key_name, public_key)
    for line in signatures.split("\n"):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH:
            raise CheckpointError("a signature line is malformed")
        if parts[1] != key_name:
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CheckpointError("a signature is not base64") from exc
        if blob[:4] != expected:
            continue
        try:
            public_key.verify(blob[4:], body.encode())
        except InvalidSignature as exc:
            raise CheckpointError(f"the signature by {key_name} does not verify") from exc
        return Checkpoint(note_origin, int(size_text), root, note, key_name)
    raise CheckpointError(f"the checkpoint is not signed by {key_name}")
