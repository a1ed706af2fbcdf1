"""No single authority key: k-of-n signed snapshots and the root chain, one table row per case.

Keys A, B, C form root 1 (threshold 2); rotations add D, drop keys, change the threshold. Each
refusal is its own error type with its own reason (the metric's label)."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from support import DEMO_SOURCE

from registry import (
    AuthorityKey,
    Registry,
    Root,
    RootChainBroken,
    RootExpired,
    RootRollback,
    SignedRoot,
    SnapshotBelowThreshold,
    SnapshotDuplicateSigner,
    SnapshotError,
    SnapshotSignatureInvalid,
    SnapshotSignatureMissing,
    SnapshotUntrustedSigner,
    SnapshotVerifier,
    add_signature,
    authority_key_id,
    load_source,
    load_trusted_root,
    next_root,
    sign_root,
    sign_snapshot,
    unsigned_snapshot,
)
from registry._root import walk_roots

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
KEYS = {name: ed25519.Ed25519PrivateKey.generate() for name in "ABCDE"}
P256 = ec.generate_private_key(ec.SECP256R1())


def kid(name: str) -> str:
    return authority_key_id(KEYS[name].public_key())


def root_of(names: str, threshold: int, version: int = 1, days: int = 365) -> Root:
    keys = tuple(AuthorityKey.of(KEYS[n].public_key(), f"holder {n}") for n in names)
    return Root(version, NOW + timedelta(days=days), keys, threshold)


def signed_by(root: Root, names: str) -> SignedRoot:
    signed = SignedRoot(root)
    for n in names:
        signed = sign_root(signed, KEYS[n], previous=root_of("ABCDE", 1))
    return signed


ROOT1 = root_of("ABC", 2)


def registry(version: int = 5) -> Registry:
    source = load_source(DEMO_SOURCE)
    return Registry(
        name=source.name,
        version=version,
        issued_at=NOW,
        expires_at=NOW + timedelta(days=7),
        refresh_seconds=source.refresh_seconds,
        regions=source.regions,
        agencies=source.agencies,
        datasets=source.datasets,
        purposes=source.purposes,
        agreements=source.agreements,
    )


def snapshot(names: str, roots: tuple[SignedRoot, ...] = ()) -> str:
    return sign_snapshot(registry(), *(KEYS[n] for n in names), roots=roots).jws


# ---------------------------------------------------------------------------------------------
# Snapshots against root 1 (2 of A, B, C)


@dataclass(frozen=True)
class SnapshotCase:
    make: Callable[[], str]
    error: type[SnapshotError] | None
    message: str = ""


SNAPSHOT_CASES = {
    "A+B": SnapshotCase(lambda: snapshot("AB"), None),
    "B+C": SnapshotCase(lambda: snapshot("BC"), None),
    "A+C": SnapshotCase(lambda: snapshot("CA"), None),
    "all three": SnapshotCase(lambda: snapshot("ABC"), None),
    "one key": SnapshotCase(
        lambda: snapshot("A"), SnapshotBelowThreshold, "2 of 3 needed, 1 valid"
    ),
    "no signature": SnapshotCase(
        lambda: unsigned_snapshot(registry()), SnapshotSignatureMissing, "not signed"
    ),
    "a key outside the root": SnapshotCase(
        lambda: snapshot("ABD"), SnapshotUntrustedSigner, "does not name"
    ),
    "only keys outside the root": SnapshotCase(
        lambda: snapshot("DE"), SnapshotUntrustedSigner, "does not name"
    ),
    "the same key twice": SnapshotCase(
        lambda: _twice("A"), SnapshotDuplicateSigner, "more than once"
    ),
    "a bad signature among good ones": SnapshotCase(
        lambda: _corrupt(snapshot("ABC"), 2), SnapshotSignatureInvalid, "does not verify"
    ),
    "signed by a 1-of-1 key (old compact form)": SnapshotCase(
        lambda: _compact(snapshot("A")), SnapshotBelowThreshold, "1 valid"
    ),
}


def _twice(name: str) -> str:
    """A snapshot with the same key's signature twice (add_signature refuses to make one)."""
    document = json.loads(snapshot(name))
    document["signatures"] *= 2
    return json.dumps(document)


def _corrupt(text: str, index: int) -> str:
    document = json.loads(text)
    signature = bytearray(
        base64.urlsafe_b64decode(document["signatures"][index]["signature"] + "==")
    )
    signature[0] ^= 1
    document["signatures"][index]["signature"] = (
        base64.urlsafe_b64encode(bytes(signature)).rstrip(b"=").decode()
    )
    return json.dumps(document)


def _compact(text: str) -> str:
    document = json.loads(text)
    (one,) = document["signatures"]
    return f"{one['protected']}.{document['payload']}.{one['signature']}"


@pytest.mark.parametrize("name", list(SNAPSHOT_CASES))
def test_snapshot_threshold_table(name: str) -> None:
    case = SNAPSHOT_CASES[name]
    verifier = SnapshotVerifier(ROOT1)
    if case.error is None:
        verified = verifier.verify(case.make(), held_version=4, now=NOW)
        assert len(verified.signers) >= 2
        assert set(verified.signers) <= {kid("A"), kid("B"), kid("C")}
        return
    with pytest.raises(case.error) as caught:
        verifier.verify(case.make(), held_version=4, now=NOW)
    assert case.message in str(caught.value)
    assert "PRIVATE" not in str(caught.value)


def test_a_compact_snapshot_still_counts_against_a_root_of_threshold_1() -> None:
    verifier = SnapshotVerifier(KEYS["A"].public_key())
    assert verifier.verify(_compact(snapshot("A")), held_version=None, now=NOW).signers == (
        kid("A"),
    )


def test_a_p256_authority_key_signs_among_ed25519_ones() -> None:
    keys = (*root_of("AB", 2).keys, AuthorityKey.of(P256.public_key(), "P-256 holder"))
    root = Root(1, NOW + timedelta(days=1), keys, 2)
    text = sign_snapshot(registry(), KEYS["A"], P256).jws
    assert len(SnapshotVerifier(root).verify(text, held_version=None, now=NOW).signers) == 2


def test_add_signature_refuses_a_stranger_a_second_signature_and_a_non_snapshot() -> None:
    text = add_signature(unsigned_snapshot(registry()), KEYS["A"], ROOT1)
    with pytest.raises(SnapshotDuplicateSigner, match="signed this snapshot already"):
        add_signature(text, KEYS["A"], ROOT1)
    with pytest.raises(SnapshotUntrustedSigner, match="not named by root version 1"):
        add_signature(text, KEYS["D"], ROOT1)
    document = json.loads(text)
    document["payload"] = base64.urlsafe_b64encode(b'{"format":"x"}').rstrip(b"=").decode()
    with pytest.raises(SnapshotError, match="format is not"):
        add_signature(json.dumps(document), KEYS["B"], ROOT1)


def test_one_signature_checks_with_the_openssl_command_line(tmp_path: Path) -> None:
    """Each signature is an ordinary JWS signature over `protected.payload`: OpenSSL agrees."""
    document = json.loads(snapshot("AB"))
    for entry, name in zip(document["signatures"], "AB", strict=True):
        signing_input = f"{entry['protected']}.{document['payload']}".encode()
        (tmp_path / "input").write_bytes(signing_input)
        (tmp_path / "sig").write_bytes(base64.urlsafe_b64decode(entry["signature"] + "=="))
        (tmp_path / "pub.pem").write_bytes(
            KEYS[name]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin"]
        command += ["-in", "input", "-sigfile", "sig"]
        good = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert good.returncode == 0
        assert "Signature Verified Successfully" in good.stdout
        (tmp_path / "input").write_bytes(signing_input + b"x")
        bad = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert bad.returncode != 0


# ---------------------------------------------------------------------------------------------
# Root rotation: root 2 must carry a threshold of root 1's keys and of its own


ROOT2 = root_of("BCD", 2, version=2)  # A leaves, D joins


@dataclass(frozen=True)
class RotationCase:
    chain: Callable[[], tuple[SignedRoot, ...]]
    error: type[SnapshotError] | None
    message: str = ""


ROTATION_CASES = {
    "2 old (B, C) who are also 2 new": RotationCase(lambda: (signed_by(ROOT2, "BC"),), None),
    "old A+B, new C+D": RotationCase(lambda: (signed_by(ROOT2, "ABCD"),), None),
    "old A+B and new D+B": RotationCase(lambda: (signed_by(ROOT2, "ABD"),), None),
    "only new signatures (D, and B as new)": RotationCase(
        lambda: (signed_by(ROOT2, "D"),), RootChainBroken, "counted against the keys of root 1"
    ),
    "only old signatures (A)": RotationCase(
        lambda: (signed_by(ROOT2, "A"),), RootChainBroken, "counted against the keys of root 1"
    ),
    "old threshold but not its own (A+B: B only of the new)": RotationCase(
        lambda: (signed_by(ROOT2, "AB"),), RootChainBroken, "counted against the keys of its own"
    ),
    "a skipped version": RotationCase(
        lambda: (signed_by(root_of("BCD", 2, version=3), "ABCD"),),
        RootChainBroken,
        "root version 3 does not follow root version 1",
    ),
    "expired newest root": RotationCase(
        lambda: (signed_by(root_of("BCD", 2, version=2, days=-1), "ABCD"),),
        RootExpired,
        "root version 2 expired",
    ),
    "signed by a key in neither root": RotationCase(
        lambda: (signed_by(ROOT2, "BCE"),), RootChainBroken, "named by neither"
    ),
    "two steps: 2 then 3 (threshold 3 of B, C, D, E)": RotationCase(
        lambda: (
            signed_by(ROOT2, "BCD"),
            signed_by(root_of("BCDE", 3, version=3), "BCDE"),
        ),
        None,
    ),
}


@pytest.mark.parametrize("name", list(ROTATION_CASES))
def test_root_rotation_table(name: str) -> None:
    case = ROTATION_CASES[name]
    chain = case.chain()
    newest = chain[-1].root
    names = "".join(n for n in "ABCDE" if newest.key(kid(n)) is not None)
    text = snapshot(names[: newest.threshold], chain)
    verifier = SnapshotVerifier(ROOT1)
    if case.error is None:
        verified = verifier.verify(text, held_version=None, now=NOW)
        assert verified.root == newest
        return
    with pytest.raises(case.error) as caught:
        verifier.verify(text, held_version=None, now=NOW)
    assert case.message in str(caught.value)


def test_after_a_rotation_the_old_keys_no_longer_sign_and_roots_never_go_back() -> None:
    chain = (signed_by(ROOT2, "ABCD"),)
    verifier = SnapshotVerifier(ROOT1)
    held = verifier.verify(snapshot("BD", chain), held_version=None, now=NOW).root
    assert held == ROOT2
    # Signed by A and B (a threshold of root 1) with no chain: a root rollback.
    with pytest.raises(RootRollback, match="signed under root version 1"):
        verifier.verify(snapshot("AB"), held_version=5, now=NOW, root=held)
    # With the chain, A is no longer a key of the newest root.
    with pytest.raises(SnapshotUntrustedSigner):
        verifier.verify(snapshot("AB", chain), held_version=None, now=NOW, root=held)


def test_the_chain_must_carry_the_same_root_as_the_one_held() -> None:
    other = signed_by(root_of("BCE", 2, version=2), "ABCE")
    with pytest.raises(RootChainBroken, match="other than the one held"):
        walk_roots(ROOT2, (other,), NOW)


def test_an_expired_installed_root_refuses_until_a_newer_one_arrives() -> None:
    old = root_of("ABC", 2, days=-1)
    with pytest.raises(RootExpired):
        SnapshotVerifier(old).verify(snapshot("AB"), held_version=None, now=NOW)
    chain = (signed_by(root_of("ABC", 2, version=2), "ABC"),)
    assert SnapshotVerifier(old).verify(snapshot("AB", chain), held_version=None, now=NOW)


def test_root_documents_round_trip_and_refuse_tampering() -> None:
    signed = signed_by(ROOT2, "ABCD")
    again = SignedRoot.parse(signed.to_bytes(), "root-2.json")
    assert again == signed
    document = json.loads(signed.to_bytes())
    document["signed"]["threshold"] = 1  # loosened after signing
    tampered = SignedRoot.from_document(document)
    with pytest.raises(RootChainBroken):
        walk_roots(ROOT1, (tampered,), NOW)


@pytest.mark.parametrize(
    ("threshold", "keys"),
    [(0, "AB"), (3, "AB"), (1, "")],
)
def test_a_root_refuses_to_exist_inconsistent(threshold: int, keys: str) -> None:
    with pytest.raises(RootChainBroken, match="threshold"):
        root_of(keys, threshold)


def test_next_root_adds_removes_and_refuses_unknown_keys() -> None:
    made = next_root(
        ROOT1,
        add=[(KEYS["D"].public_key(), "new province")],
        remove=[kid("A")],
        threshold=2,
        now=NOW,
    )
    assert made.root.version == 2
    assert made.signatures == ()
    assert {k.keyid for k in made.root.keys} == {kid("B"), kid("C"), kid("D")}
    with pytest.raises(RootChainBroken, match="is not in root version 1"):
        next_root(ROOT1, remove=[kid("E")], now=NOW)
    with pytest.raises(RootChainBroken, match="threshold 4 of 3"):
        next_root(ROOT1, threshold=4, now=NOW)


def test_a_gateway_installed_with_one_key_moves_to_a_k_of_n_root() -> None:
    """The 1-of-1 root of `[registry] authority_public_key`: root 2 signed by that key and by
    a threshold of its own keys moves the gateway on, with no reinstallation."""
    root2 = root_of("BCD", 2, version=2)
    chain = (signed_by(root2, "ABC"),)
    verifier = SnapshotVerifier(KEYS["A"].public_key())
    assert verifier.verify(snapshot("BC", chain), held_version=None, now=NOW).root == root2
    with pytest.raises(RootChainBroken, match="counted against the keys of root 1"):
        verifier.verify(snapshot("BC", (signed_by(root2, "BC"),)), held_version=None, now=NOW)


def test_an_installed_root_must_carry_its_own_threshold(tmp_path: Path) -> None:
    path = tmp_path / "root.json"
    path.write_bytes(signed_by(ROOT1, "A").to_bytes())
    with pytest.raises(RootChainBroken, match="2 of 3 needed, 1 valid"):
        load_trusted_root(path)
    path.write_bytes(signed_by(ROOT1, "AC").to_bytes())
    assert load_trusted_root(path) == ROOT1
    path.write_bytes(b"{}")
    with pytest.raises(RootChainBroken, match="exactly 'signed' and 'signatures'"):
        load_trusted_root(path)
