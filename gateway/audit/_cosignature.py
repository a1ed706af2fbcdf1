"""Witness cosignatures of checkpoints, in the C2SP tlog-cosignature format (cosignature/v1).

A cosignature is one more signed-note signature line on a checkpoint:

    — <witness name> base64(key id (4 bytes) || timestamp (8 bytes, big-endian) || Ed25519 signature)

The signature covers ``"cosignature/v1\\ntime <timestamp>\\n"`` followed by the checkpoint's
body (the note text above the blank line), so a witness states "at <timestamp> I had verified
this checkpoint consistent with every earlier one I cosigned". The key id is the first 4 bytes
of SHA-256(name || "\\n" || 0x04 || public key): type 0x04 keeps a cosignature key apart from a
checkpoint key (type 0x01) even when one Ed25519 key serves both under different names, and the
"cosignature/v1" prefix keeps the signed messages apart. The name is not signed; only the key id
binds it, so a verifier looks keys up by (name, key id) and ignores lines it has no key for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit._checkpoint import CheckpointError

__all__ = [
    "COSIGNATURE_TYPE",
    "Cosignature",
    "cosign",
    "cosignature_key_id",
    "cosigned_message",
    "signature_lines",
    "verify_cosignature",
]

COSIGNATURE_TYPE = 0x04  # the signed-note signature type of a timestamped Ed25519 cosignature
_DASH = "\u2014"
_BLOB_BYTES = 4 + 8 + 64
_MAX_TIMESTAMP = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Cosignature:
    """One verified (or freshly made) cosignature: who, when (Unix seconds), and its note line."""

    witness: str
    timestamp: int
    line: str  # "— <name> <base64>\n", exactly as it is appended to the note


def cosignature_key_id(name: str, public_key: ed25519.Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_TYPE]) + raw).digest()[:4]


def cosigned_message(body: str, timestamp: int) -> bytes:
    """The exact bytes a cosignature signs: the cosignature/v1 header, then the note text."""
    if not body.endswith("\n"):
        raise CheckpointError("a checkpoint body ends with a newline")
    return f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()


def cosign(body: str, key: ed25519.Ed25519PrivateKey, name: str, timestamp: int) -> Cosignature:
    """Cosign the checkpoint whose note text is `body`, at `timestamp`, as witness `name`."""
    if not name or any(c.isspace() or c == "+" for c in name):
        raise CheckpointError("a witness name has no white space and no '+'")
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise CheckpointError("a cosignature's timestamp is a non-negative 63-bit number")
    signature = key.sign(cosigned_message(body, timestamp))
    blob = cosignature_key_id(name, key.public_key()) + timestamp.to_bytes(8, "big") + signature
    return Cosignature(name, timestamp, f"{_DASH} {name} {base64.b64encode(blob).decode()}\n")


def signature_lines(note: str) -> tuple[str, list[tuple[str, str]]]:
    """(the note's text, [(key name, base64 value)] of its signature lines)."""
    text, sep, signatures = note.partition("\n\n")
    if not sep or not text:
        raise CheckpointError("not a signed note (no blank line before the signatures)")
    found: list[tuple[str, str]] = []
    for line in signatures.split("\n"):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH:
            raise CheckpointError("a signature line is malformed")
        found.append((parts[1], parts[2]))
    return text + "\n", found


def verify_cosignature(
    value: str, body: str, public_key: ed25519.Ed25519PublicKey, name: str
) -> Cosignature | None:
    """The cosignature in `value` (a line's base64 value) by `name`'s `public_key` on `body`.

    None when the value is not this key's (another key id: ignored, as the format says);
    `CheckpointError` when it claims this key but is malformed or does not verify."""
    try:
        blob = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"the cosignature by {name} is not base64") from exc
    if blob[:4] != cosignature_key_id(name, public_key):
        return None
    if len(blob) != _BLOB_BYTES:
        raise CheckpointError(f"the cosignature by {name} is not {_BLOB_BYTES} bytes")
    timestamp = int.from_bytes(blob[4:12], "big")
    if timestamp > _MAX_TIMESTAMP:
        raise CheckpointError(f"the cosignature by {name} has an impossible timestamp")
    try:
        public_key.verify(blob[12:], cosigned_message(body, timestamp))
    except InvalidSignature as exc:
        raise CheckpointError(f"the cosignature by {name} does not verify") from exc
    return Cosignature(name, timestamp, f"{_DASH} {name} {value}\n")
