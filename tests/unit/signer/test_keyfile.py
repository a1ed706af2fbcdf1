"""Private key files: modes, atomic writes, passphrases and the errors a person reads."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519

from signer import (
    KeyFileError,
    PrivateKey,
    SignerError,
    UnsupportedAlgorithm,
    _keyfile,
    algorithm_for_key,
    generate_private_key,
    load_private_key,
    write_private_key,
)

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(scope="module")
def rsa_key() -> PrivateKey:
    return generate_private_key("PS256")  # RSA 3072 keygen is slow: once per module


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_error_tree() -> None:
    assert issubclass(KeyFileError, SignerError)
    assert issubclass(UnsupportedAlgorithm, SignerError)
    assert issubclass(SignerError, Exception)


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_generated_key_round_trips_and_names_its_algorithm(tmp_path: Path, algorithm: str) -> None:
    key = generate_private_key(algorithm)
    path = tmp_path / "k.key"
    write_private_key(path, key)
    loaded = load_private_key(path)
    assert algorithm_for_key(loaded) == algorithm
    assert algorithm_for_key(loaded.public_key()) == algorithm
    assert loaded.public_key() == key.public_key()
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_ps256_is_rsa_3072(tmp_path: Path, rsa_key: PrivateKey) -> None:
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size == 3072
    write_private_key(tmp_path / "r.key", rsa_key, PASSPHRASE)
    loaded = load_private_key(tmp_path / "r.key", PASSPHRASE)
    assert algorithm_for_key(loaded.public_key()) == "PS256"


def test_generated_es256_key_is_p256() -> None:
    key = generate_private_key("ES256")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


@pytest.mark.parametrize("algorithm", ["RS256", "ES384", "es256", "", "none", "SM2"])
def test_unknown_algorithm_is_refused(algorithm: str) -> None:
    with pytest.raises(UnsupportedAlgorithm, match="unsupported algorithm"):
        generate_private_key(algorithm)


def test_algorithm_for_key_refuses_other_curves_short_rsa_and_other_types() -> None:
    with pytest.raises(UnsupportedAlgorithm, match="secp384r1"):
        algorithm_for_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(UnsupportedAlgorithm, match="too short"):
        algorithm_for_key(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(UnsupportedAlgorithm, match="X25519"):
        algorithm_for_key(x25519.X25519PrivateKey.generate().public_key())  # type: ignore[arg-type]


def test_key_file_is_0600_even_with_an_open_umask(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_private_key("ES256"))
    assert _mode(path) == 0o600


def test_replacing_a_readable_file_leaves_it_0600(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private_key(path, generate_private_key("EdDSA"))
    assert _mode(path) == 0o600
    assert load_private_key(path)


def test_key_is_never_readable_by_others_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None
) -> None:
    real_replace = os.replace
    seen: list[tuple[Path, int, bytes]] = []

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        source = Path(src)
        seen.append((source, _mode(source), source.read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = tmp_path / "k.key"
    write_private_key(path, generate_private_key("ES256"))

    [(temporary, mode, content)] = seen
    assert temporary.parent == tmp_path  # same folder, so the rename is atomic
    assert temporary != path
    assert mode == 0o600
    assert content == path.read_bytes()  # written in full before the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]


def test_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    path = tmp_path / "k.key"
    with pytest.raises(KeyFileError, match="Input/output error") as caught:
        write_private_key(path, generate_private_key("ES256"))
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    assert list(tmp_path.iterdir()) == []


def test_write_into_missing_folder_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "k.key"
    with pytest.raises(KeyFileError, match="cannot write private key file") as caught:
        write_private_key(path, generate_private_key("ES256"))
    assert str(path) in str(caught.value)


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="passphrase is empty"):
        write_private_key(tmp_path / "k.key", generate_private_key("ES256"), b"")


def test_unsupported_key_type_is_not_written(tmp_path: Path) -> None:
    key = x25519.X25519PrivateKey.generate()
    with pytest.raises(KeyFileError, match="unsupported key type"):
        write_private_key(tmp_path / "k.key", key)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_passphrase_round_trip(tmp_path: Path) -> None:
    key = generate_private_key("ES256")
    path = tmp_path / "k.key"
    write_private_key(path, key, PASSPHRASE)
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert _mode(path) == 0o600
    assert load_private_key(path, PASSPHRASE).public_key() == key.public_key()


def test_wrong_passphrase_names_the_file_and_not_the_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_private_key("ES256"), PASSPHRASE)
    wrong = b"Tr0ub4dor&3-not-it"
    with pytest.raises(KeyFileError) as caught:
        load_private_key(path, wrong)
    message = str(caught.value)
    assert str(path) in message
    assert "wrong passphrase" in message
    assert wrong.decode() not in message
    assert PASSPHRASE.decode() not in message
    assert isinstance(caught.value.__cause__, ValueError)


def test_encrypted_key_without_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_private_key("EdDSA"), PASSPHRASE)
    with pytest.raises(KeyFileError, match="encrypted and no passphrase was given"):
        load_private_key(path)


def test_passphrase_for_a_plain_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_private_key("EdDSA"))
    with pytest.raises(KeyFileError, match="not encrypted, but a passphrase was given"):
        load_private_key(path, PASSPHRASE)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileError, match="does not exist") as caught:
        load_private_key(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="is a directory"):
        load_private_key(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_private_key("ES256"))

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # chmod 0 does not stop root
    with pytest.raises(KeyFileError, match="not readable: permission denied"):
        load_private_key(path)


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"A" * (_keyfile.MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(KeyFileError, match="larger than"):
        load_private_key(path)


def test_corrupted_key_message_carries_no_key_material(tmp_path: Path) -> None:
    pem = generate_private_key("ES256").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    lines = pem.decode().splitlines()
    body = lines[1:-1]
    damaged = "\n".join([lines[0], body[0][:-4] + "!!!!", *body[1:], lines[-1]]) + "\n"
    path = tmp_path / "k.key"
    path.write_text(damaged)
    with pytest.raises(KeyFileError, match="not a PEM-encoded private key") as caught:
        load_private_key(path)
    message = str(caught.value)
    assert str(path) in message
    for line in body:
        assert line[:16] not in message


@pytest.mark.parametrize(
    "key",
    [ed448.Ed448PrivateKey.generate(), x25519.X25519PrivateKey.generate()],
    ids=["Ed448", "X25519"],
)
def test_unsupported_key_type_in_file(tmp_path: Path, key: ed448.Ed448PrivateKey) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="unsupported key type"):
        load_private_key(path)
