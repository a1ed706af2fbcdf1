"""The offline signing ceremony and a root rotation through `main(argv)`, with the command lines
of docs/registry.md as written (run in a folder holding `pki`): one party prepares a snapshot,
the holders sign in turn, it becomes current.jws at the threshold; a lost key is rotated out of
the root, and a gateway installed with root 1 follows to root 2."""

from __future__ import annotations

import json
import shlex
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import Run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import CollectorRegistry
from support import make_federation

from gateway.metrics import GatewayMetrics
from registry import (
    TRUSTED_ROOT,
    RegistryStore,
    SnapshotUntrustedSigner,
    SnapshotVerifier,
    authority_key_id,
    load_trusted_root,
    read_root,
    sign_snapshot,
)
from signer import load_private_key

DOCS = [  # docs/registry.md, "Signing ceremony" and "Rotating the root"
    "tongban registry publish --pki pki --out published --unsigned",
    "tongban registry sign published/registry-1.jws --pki pki --key pki/authority/national.key",
    "tongban registry sign published/registry-1.jws --pki pki --key pki/authority/province-1.key",
    "tongban registry show published/current.jws --pki pki",
    "tongban registry rotate-root --root pki/authority/root.json --remove-key=KEYID --add-key province-3.pub.pem=440000-security-team",
    "tongban registry sign-root pki/authority/root-2.json --previous pki/authority/root.json --key pki/authority/national.key",
    "tongban registry sign-root pki/authority/root-2.json --previous pki/authority/root.json --key pki/authority/province-1.key",
    "tongban registry publish --pki pki --out published",
]


def _keyid(path: Path) -> str:
    key = load_private_key(path)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return authority_key_id(key.public_key())


def test_three_parties_sign_in_turn_then_a_lost_key_is_rotated_out(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC) - timedelta(minutes=1)
    fed = make_federation(tmp_path / "fed", now=now)
    walk = tmp_path / "walk"
    shutil.copytree(fed.pki, walk / "pki")
    shutil.copytree(fed.source, walk / "source")
    monkeypatch.chdir(walk)
    newcomer = ed25519.Ed25519PrivateKey.generate()
    (walk / "province-3.pub.pem").write_bytes(
        newcomer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    lost = walk / "pki/authority/province-2.key"
    steps = [shlex.split(c.replace("KEYID", _keyid(lost)))[1:] for c in DOCS]
    for step in steps:
        if step[1] == "publish":
            step += ["--source", "source"]
    store = RegistryStore(SnapshotVerifier(load_trusted_root(walk / "pki" / TRUSTED_ROOT)))
    prepare, sign_national, sign_province, show, rotate, root_national, root_province, publish = (
        steps
    )

    # (1) prepared with no signature: nothing for gateways yet
    code, out, err = run(*prepare)
    assert code == 0, err
    assert "0 of 2 needed signatures" in out
    assert not (walk / "published/current.jws").exists()
    code, out, err = run(*sign_national)
    assert code == 0, err
    assert "1 of 2 needed" in out
    assert not (walk / "published/current.jws").exists()
    # (2) the same holder again, and a key the root does not name: refused, the file unchanged
    before = (walk / "published/registry-1.jws").read_bytes()
    code, _, err = run(*sign_national)
    assert (code, err.count("\n")) == (1, 1)
    assert "has signed this snapshot already" in err
    stranger = walk / "stranger.key"
    stranger.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    code, _, err = run(*sign_national[:-1], stranger)
    assert code == 1
    assert "is not named by root version 1" in err
    assert (walk / "published/registry-1.jws").read_bytes() == before
    # (3) the second holder meets the threshold: current.jws, which a gateway applies
    code, out, err = run(*sign_province)
    assert code == 0, err
    assert "threshold is met" in out
    assert store.offer((walk / "published/current.jws").read_bytes())
    # the third holder may still add theirs
    code, out, err = run(*sign_national[:-1], lost)
    assert code == 0, err
    assert "3 of 2 needed" in out
    code, out, err = run(*show)
    assert code == 0, err
    assert "signed by 3 of 3 authority keys (2 needed, root version 1)" in out

    # (4) province 2's key is lost: root 2 without it, with province 3's, signed by 2 old + 2 new
    code, out, err = run(*rotate)
    assert code == 0, err
    assert "Root version 2 written to pki/authority/root-2.json, unsigned" in out
    for step in (root_national, root_province):
        code, out, err = run(*step)
        assert code == 0, err
    assert "2 of its own 2 needed, 2 of root version 1's 2 needed" in out
    code, out, err = run(*publish)
    assert code == 0, err
    assert "Published registry version 2" in out
    assert "signed by 2 of 3 authority keys (2 needed)" in out
    assert store.offer((walk / "published/current.jws").read_bytes())
    assert store.status().root_version == 2
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.observe_registry(store.current(), store.status())
    assert metrics.registry.get_sample_value("tongban_registry_root_version") == 2
    # (5) the lost key, with the national one, no longer makes a snapshot this gateway takes
    registry = store.current()
    forged = sign_snapshot(
        registry.__class__(**{**registry.__dict__, "version": 3}),
        load_private_key(walk / "pki/authority/national.key"),  # type: ignore[arg-type]
        load_private_key(lost),  # type: ignore[arg-type]
        roots=(read_root(walk / "pki/authority/root-2.json"),),
    )
    with pytest.raises(SnapshotUntrustedSigner, match="which the trusted root does not name"):
        store.offer(forged.jws)
    assert store.status().refusals == {"UNTRUSTED_SIGNER": 1}
    document = json.loads((walk / "published/current.jws").read_text())
    assert len(document["roots"]) == 1


def test_a_folder_made_before_roots_publishes_with_its_one_key(tmp_path: Path, run: Run) -> None:
    """authority/authority.key and authority.pub.pem, no root.json: publish signs with that key
    (1 of 1) and a gateway installed with the PEM, as before, applies it."""
    fed = make_federation(tmp_path / "fed")
    authority = fed.pki / "authority"
    for path in authority.iterdir():
        path.unlink()
    key = ed25519.Ed25519PrivateKey.generate()
    (authority / "authority.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (authority / "authority.pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    code, out, err = run(
        "registry", "publish", "--source", fed.source, "--pki", fed.pki, "--out", fed.published
    )  # fmt: skip
    assert code == 0, err
    assert "signed by 1 of 1 authority keys (1 needed)" in out
    store = RegistryStore(SnapshotVerifier(load_trusted_root(authority / "authority.pub.pem")))
    assert store.offer(fed.current.read_bytes())
    assert store.snapshot is not None
    assert store.snapshot.signers == (authority_key_id(key.public_key()),)
