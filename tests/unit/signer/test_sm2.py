"""SM2 with SM3: the published GM/T 0003.5 example, OpenSSL 3's own SM2 in both directions
(signatures, keys, distinguishing ids), GB/T 38540 artefacts made by ofdrw, and every refusal.

OpenSSL is the system CLI (Debian's OpenSSL 3); its SM2 needs `-pkeyopt distid:...` on both
`pkeyutl -sign` and `-verify` (without it OpenSSL 3.0 hashes an empty id).
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from support import SHARED

from signer import (
    SM2_DEFAULT_ID,
    KeyFileError,
    SignerError,
    Sm2IdInvalid,
    Sm2KeyInvalid,
    Sm2PrivateKey,
    Sm2PublicKey,
    Sm2Refused,
    Sm2SignatureInvalid,
    Sm2SignatureMalformed,
    load_sm2_private_key,
    write_sm2_private_key,
)

# GM/T 0003.5-2012 (= GB/T 32918.5-2017) Annex A: signature on the recommended curve.
EXAMPLE_D = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
EXAMPLE_POINT = bytes.fromhex(
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)
EXAMPLE_MESSAGE = b"message digest"
EXAMPLE_Z = bytes.fromhex("B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3")
EXAMPLE_E = bytes.fromhex("F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640")
EXAMPLE_R = int("F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3", 16)
EXAMPLE_S = int("B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA", 16)
EXAMPLE_SIGNATURE = encode_dss_signature(EXAMPLE_R, EXAMPLE_S)
# r's 32 bytes without the 00 that keeps a DER INTEGER positive: r reads as negative.
NEGATIVE_R = (
    b"\x30\x45\x02\x20"
    + EXAMPLE_R.to_bytes(32, "big")
    + b"\x02\x21\x00"
    + EXAMPLE_S.to_bytes(32, "big")
)
N = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)

OTHER_ID = b"tongban@region-b.example"
IDS = pytest.mark.parametrize(
    "distinguishing_id", [SM2_DEFAULT_ID, OTHER_ID], ids=["default", "other"]
)
GM_VECTORS = SHARED / "vectors" / "gm"


def openssl(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which("openssl")
    assert binary, "the openssl CLI (Debian's OpenSSL 3) is needed to cross-check SM2"
    return subprocess.run(
        [binary, *map(str, args)], input=stdin, capture_output=True, check=False, timeout=30
    )


def openssl_verify(
    public_pem: Path, data: Path, signature: bytes, distinguishing_id: bytes
) -> bool:
    signature_file = data.with_suffix(".sig")
    signature_file.write_bytes(signature)
    result = openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", public_pem, "-in", data, "-rawin",
        "-digest", "sm3", "-sigfile", signature_file,
        "-pkeyopt", f"distid:{distinguishing_id.decode()}",
    )  # fmt: skip
    return result.returncode == 0 and b"Signature Verified Successfully" in result.stdout


def openssl_sign(private_pem: Path, data: Path, distinguishing_id: bytes) -> bytes:
    result = openssl(
        "pkeyutl", "-sign", "-inkey", private_pem, "-in", data, "-rawin", "-digest", "sm3",
        "-pkeyopt", f"distid:{distinguishing_id.decode()}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.fixture(scope="module")
def openssl_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("openssl") / "sm2.pem"
    result = openssl("genpkey", "-algorithm", "SM2", "-out", path)
    assert result.returncode == 0, result.stderr.decode()
    return path


@pytest.fixture(scope="module")
def key() -> Sm2PrivateKey:
    return Sm2PrivateKey.generate()


# --- the published example ---------------------------------------------------------------


def test_published_example_z_and_e_are_reproduced() -> None:
    public = Sm2PublicKey(EXAMPLE_POINT)
    assert public.z_value(SM2_DEFAULT_ID) == EXAMPLE_Z
    assert public.message_digest(EXAMPLE_MESSAGE) == EXAMPLE_E


def test_published_example_signature_verifies_here_and_in_openssl(tmp_path: Path) -> None:
    public = Sm2PublicKey(EXAMPLE_POINT)
    public.verify(EXAMPLE_SIGNATURE, EXAMPLE_MESSAGE)  # raises if it does not verify
    (tmp_path / "pub.pem").write_bytes(public.pem())
    (tmp_path / "m").write_bytes(EXAMPLE_MESSAGE)
    assert openssl_verify(tmp_path / "pub.pem", tmp_path / "m", EXAMPLE_SIGNATURE, SM2_DEFAULT_ID)


def test_published_example_private_key_pairs_with_its_public_key() -> None:
    # The constructor proves d·G = P by signing and verifying; the published pair passes and
    # signatures made with d verify under the published public key (k is random, so r and s
    # differ from the example's: gmssl_pyx takes no caller-chosen k).
    key = Sm2PrivateKey(EXAMPLE_D, Sm2PublicKey(EXAMPLE_POINT))
    Sm2PublicKey(EXAMPLE_POINT).verify(key.sign(EXAMPLE_MESSAGE), EXAMPLE_MESSAGE)
    other_point = Sm2PrivateKey.generate().public_key()
    with pytest.raises(Sm2KeyInvalid, match="does not belong"):
        Sm2PrivateKey(EXAMPLE_D, other_point)


@pytest.mark.parametrize(
    ("message", "distinguishing_id"),
    [(b"message digesT", SM2_DEFAULT_ID), (EXAMPLE_MESSAGE, b"ALICE123@YAHOO.COM")],
    ids=["other-message", "other-id"],
)
def test_published_example_signature_refused_for_other_input(
    message: bytes, distinguishing_id: bytes
) -> None:
    with pytest.raises(Sm2SignatureInvalid, match="does not verify"):
        Sm2PublicKey(EXAMPLE_POINT).verify(EXAMPLE_SIGNATURE, message, distinguishing_id)


# --- OpenSSL 3, both directions -----------------------------------------------------------


@IDS
def test_signature_made_here_verifies_in_openssl(
    key: Sm2PrivateKey, tmp_path: Path, distinguishing_id: bytes
) -> None:
    (tmp_path / "pub.pem").write_bytes(key.public_key().pem())
    data = tmp_path / "data"
    data.write_bytes(b"\x00tongban seal payload\xff" * 50)
    signature = key.sign(data.read_bytes(), distinguishing_id)
    assert openssl_verify(tmp_path / "pub.pem", data, signature, distinguishing_id)
    wrong_id = OTHER_ID if distinguishing_id == SM2_DEFAULT_ID else SM2_DEFAULT_ID
    assert not openssl_verify(tmp_path / "pub.pem", data, signature, wrong_id)


@IDS
def test_signature_made_by_openssl_verifies_here(
    openssl_key: Path, tmp_path: Path, distinguishing_id: bytes
) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"an answer sealed by a province")
    signature = openssl_sign(openssl_key, data, distinguishing_id)
    public = Sm2PrivateKey.from_pem(openssl_key.read_bytes()).public_key()
    public.verify(signature, data.read_bytes(), distinguishing_id)
    wrong_id = OTHER_ID if distinguishing_id == SM2_DEFAULT_ID else SM2_DEFAULT_ID
    with pytest.raises(Sm2SignatureInvalid):
        public.verify(signature, data.read_bytes(), wrong_id)


def test_empty_message_is_signed_and_verified_both_ways(key: Sm2PrivateKey, tmp_path: Path) -> None:
    (tmp_path / "pub.pem").write_bytes(key.public_key().pem())
    (tmp_path / "empty").write_bytes(b"")
    assert openssl_verify(tmp_path / "pub.pem", tmp_path / "empty", key.sign(b""), SM2_DEFAULT_ID)


def test_key_generated_by_openssl_loads_here_byte_for_byte(openssl_key: Path) -> None:
    loaded = Sm2PrivateKey.from_pem(openssl_key.read_bytes())
    assert loaded.pem() == openssl_key.read_bytes()
    public_pem = openssl("pkey", "-in", openssl_key, "-pubout").stdout
    assert Sm2PublicKey.from_pem(public_pem) == loaded.public_key()
    assert loaded.public_key().pem() == public_pem


def test_key_saved_here_loads_in_openssl(key: Sm2PrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "seal.pem"
    write_sm2_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    checked = openssl("pkey", "-in", path, "-check", "-noout")
    assert checked.returncode == 0, checked.stderr.decode()
    assert b"Key is valid" in checked.stdout
    assert openssl("pkey", "-in", path, "-pubout").stdout == key.public_key().pem()
    text = openssl("pkey", "-in", path, "-text", "-noout").stdout
    assert b"ASN1 OID: SM2" in text
    data = tmp_path / "data"
    data.write_bytes(b"signed by OpenSSL with a key Tongban made")
    signature = openssl_sign(path, data, OTHER_ID)
    key.public_key().verify(signature, data.read_bytes(), OTHER_ID)
    assert load_sm2_private_key(path).public_key() == key.public_key()


def test_certificate_made_by_openssl_gives_its_key_and_its_signature_verifies(
    openssl_key: Path, tmp_path: Path
) -> None:
    certificate_path = tmp_path / "seal.crt"
    made = openssl(
        "req", "-x509", "-new", "-key", openssl_key, "-subj", "/CN=SM2 seal test", "-days", "1",
        "-sm3", "-sigopt", f"distid:{SM2_DEFAULT_ID.decode()}", "-out", certificate_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr.decode()
    pem = certificate_path.read_bytes()
    public = Sm2PublicKey.from_certificate(pem)
    assert public == Sm2PrivateKey.from_pem(openssl_key.read_bytes()).public_key()
    certificate = x509.load_pem_x509_certificate(pem)
    assert (
        Sm2PublicKey.from_certificate(certificate.public_bytes(serialization.Encoding.DER))
        == public
    )
    assert certificate.signature_algorithm_oid.dotted_string == "1.2.156.10197.1.501"
    public.verify(certificate.signature, certificate.tbs_certificate_bytes)


# --- GB/T 38540 artefacts made by ofdrw ---------------------------------------------------


def ses_signature_parts() -> tuple[bytes, bytes, bytes]:
    """The DER TBS_Sign, the signer certificate and the signature of the shared SES_Signature."""
    with zipfile.ZipFile(GM_VECTORS / "ses-v4-signed.ofd") as archive:
        signed_value = archive.read("Doc_0/Signs/Sign_0/SignedValue.dat")
    # SES_Signature ::= SEQUENCE { toSign TBS_Sign, cert OCTET STRING,
    #                              signatureAlgorithm OID, signature BIT STRING }
    parts = asn1_core.Sequence.load(signed_value, strict=True)
    to_sign = parts[0].dump()
    certificate = asn1_core.OctetString.load(parts[1].dump()).native
    signature = asn1_core.OctetBitString.load(parts[3].dump()).native
    assert asn1_core.ObjectIdentifier.load(parts[2].dump()).dotted == "1.2.156.10197.1.501"
    return to_sign, certificate, signature


def test_ofdrw_ses_signature_verifies() -> None:
    to_sign, certificate, signature = ses_signature_parts()
    Sm2PublicKey.from_certificate(certificate).verify(signature, to_sign)


def test_ofdrw_ses_signature_refused_after_one_changed_byte() -> None:
    to_sign, certificate, signature = ses_signature_parts()
    changed = bytearray(to_sign)
    changed[len(changed) // 2] ^= 0x01
    with pytest.raises(Sm2SignatureInvalid, match="does not verify"):
        Sm2PublicKey.from_certificate(certificate).verify(signature, bytes(changed))


def test_ofdrw_root_certificate_is_an_sm2_key() -> None:
    root = Sm2PublicKey.from_certificate((GM_VECTORS / "ofdrw-root.pem").read_bytes())
    assert len(root.point) == 64


# --- signatures refused -------------------------------------------------------------------


def flip_last_bit(signature: bytes) -> bytes:
    return signature[:-1] + bytes([signature[-1] ^ 0x01])


def test_flipped_bit_other_id_and_other_key_are_refused(key: Sm2PrivateKey) -> None:
    data = b"sealed answer"
    signature = key.sign(data)
    key.public_key().verify(signature, data)
    with pytest.raises(Sm2SignatureInvalid, match="does not verify") as flipped:
        key.public_key().verify(flip_last_bit(signature), data)
    assert not isinstance(flipped.value, Sm2SignatureMalformed)
    with pytest.raises(Sm2SignatureInvalid, match="does not verify"):
        key.public_key().verify(signature, data, OTHER_ID)
    with pytest.raises(Sm2SignatureInvalid, match="does not verify"):
        Sm2PrivateKey.generate().public_key().verify(signature, data)
    with pytest.raises(Sm2SignatureInvalid, match="does not verify"):
        key.public_key().verify(signature, data + b"\x00")


def malformed_signatures() -> list[tuple[str, object, str]]:
    good = encode_dss_signature(EXAMPLE_R, EXAMPLE_S)
    return [
        ("truncated", good[:-1], "not a DER SEQUENCE"),
        ("truncated-to-header", good[:2], "not a DER SEQUENCE"),
        ("empty", b"", "not a DER SEQUENCE"),
        ("trailing-byte", encode_dss_signature(1, 1) + b"\x00", "not a DER SEQUENCE"),
        ("raw-r-and-s", EXAMPLE_R.to_bytes(32, "big") + EXAMPLE_S.to_bytes(32, "big"), "not a DER"),
        ("r-zero", encode_dss_signature(0, EXAMPLE_S), r"outside \[1, n-1\]"),
        ("s-equals-n", encode_dss_signature(EXAMPLE_R, N), r"outside \[1, n-1\]"),
        ("r-negative", NEGATIVE_R, r"not a DER SEQUENCE|outside \[1, n-1\]"),
        ("too-long", encode_dss_signature(2**300, EXAMPLE_S), "at most 72"),
        ("not-bytes", good.hex(), "must be bytes"),
    ]


@pytest.mark.parametrize(
    ("signature", "message"),
    [pytest.param(sig, msg, id=name) for name, sig, msg in malformed_signatures()],
)
def test_malformed_signatures_are_refused_with_a_reason(signature: object, message: str) -> None:
    with pytest.raises(Sm2SignatureMalformed, match=message) as refused:
        Sm2PublicKey(EXAMPLE_POINT).verify(signature, EXAMPLE_MESSAGE)  # type: ignore[arg-type]
    assert isinstance(refused.value, Sm2SignatureInvalid)
    assert isinstance(refused.value, SignerError)


def test_a_signature_is_der_of_two_integers_below_n(key: Sm2PrivateKey) -> None:
    signature = key.sign(b"x")
    r, s = decode_dss_signature(signature)
    assert 1 <= r < N
    assert 1 <= s < N
    assert encode_dss_signature(r, s) == signature


# --- distinguishing ids refused -------------------------------------------------------------


@pytest.mark.parametrize(
    ("distinguishing_id", "message"),
    [(b"", "is empty"), (b"x" * 8192, "at most 8191"), ("1234567812345678", "must be bytes")],
    ids=["empty", "too-long", "str"],
)
def test_unusable_ids_are_refused(
    key: Sm2PrivateKey, distinguishing_id: object, message: str
) -> None:
    with pytest.raises(Sm2IdInvalid, match=message):
        key.sign(b"x", distinguishing_id)  # type: ignore[arg-type]
    with pytest.raises(Sm2IdInvalid, match=message):
        key.public_key().verify(key.sign(b"x"), b"x", distinguishing_id)  # type: ignore[arg-type]


def test_longest_id_signs_and_verifies(key: Sm2PrivateKey) -> None:
    longest = b"i" * 8191
    key.public_key().verify(key.sign(b"x", longest), b"x", longest)


# --- keys refused ---------------------------------------------------------------------------


def pkcs8_pem(
    private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "curve P-256, not SM2"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "curve P-384, not SM2"),
        (ed25519.Ed25519PrivateKey.generate, "an Ed25519 key, not SM2"),
        (lambda: rsa.generate_private_key(65537, 2048), "an RSA key, not SM2"),
    ],
    ids=["p256", "p384", "ed25519", "rsa"],
)
def test_other_key_types_are_refused_by_name(make, message: str) -> None:  # type: ignore[no-untyped-def]
    private_key = make()
    with pytest.raises(Sm2KeyInvalid, match=message):
        Sm2PrivateKey.from_pem(pkcs8_pem(private_key))
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(Sm2KeyInvalid, match=message):
        Sm2PublicKey.from_pem(public_pem)


def sm2_pkcs8(scalar: int, point: bytes | None) -> bytes:
    inner = {"version": "ecPrivkeyVer1", "private_key": scalar}
    if point is not None:
        inner["public_key"] = point
    info = asn1_keys.PrivateKeyInfo(
        {
            "version": 0,
            "private_key_algorithm": {
                "algorithm": "ec",
                "parameters": asn1_keys.ECDomainParameters(
                    name="named", value="1.2.156.10197.1.301"
                ),
            },
            "private_key": asn1_keys.ECPrivateKey(inner),
        }
    )
    return bytes(info.dump())


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (lambda: sm2_pkcs8(int.from_bytes(EXAMPLE_D, "big"), None), "holds no public key"),
        (lambda: sm2_pkcs8(0, b"\x04" + EXAMPLE_POINT), r"outside \[1, n-2\]"),
        (lambda: sm2_pkcs8(N - 1, b"\x04" + EXAMPLE_POINT), r"outside \[1, n-2\]"),
        (
            lambda: sm2_pkcs8(int.from_bytes(EXAMPLE_D, "big") + 1, b"\x04" + EXAMPLE_POINT),
            "does not belong",
        ),
        (
            lambda: sm2_pkcs8(int.from_bytes(EXAMPLE_D, "big"), b"\x04" + bytes(64)),
            "not on the SM2 curve",
        ),
        (lambda: b"\x30\x03\x02\x01\x00", "not a DER PKCS#8"),
        (
            lambda: sm2_pkcs8(int.from_bytes(EXAMPLE_D, "big"), b"\x04" + EXAMPLE_POINT) + b"\x00",
            "not a DER PKCS#8",
        ),
    ],
    ids=[
        "no-public-key",
        "scalar-zero",
        "scalar-n-1",
        "mismatched-pair",
        "point-off-curve",
        "not-pkcs8",
        "trailing-bytes",
    ],
)
def test_bad_sm2_private_keys_are_refused(der, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Sm2KeyInvalid, match=message):
        Sm2PrivateKey.from_pkcs8(der())


def test_the_example_pkcs8_built_here_loads() -> None:
    der = sm2_pkcs8(int.from_bytes(EXAMPLE_D, "big"), b"\x04" + EXAMPLE_POINT)
    assert Sm2PrivateKey.from_pkcs8(der).public_key() == Sm2PublicKey(EXAMPLE_POINT)


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (b"not a key at all", "not PEM"),
        (asn1_pem.armor("PUBLIC KEY", b"\x30\x00"), "expected 'PRIVATE KEY'"),
        (asn1_pem.armor("EC PRIVATE KEY", b"\x30\x00"), "openssl pkcs8 -topk8"),
        (
            asn1_pem.armor("ENCRYPTED PRIVATE KEY", b"\x30\x00"),
            "encrypted SM2 key files are not supported",
        ),
    ],
    ids=["garbage", "public-key", "sec1", "encrypted"],
)
def test_wrong_pem_is_refused_with_a_hint(pem: bytes, message: str) -> None:
    with pytest.raises(Sm2KeyInvalid, match=message):
        Sm2PrivateKey.from_pem(pem)


def test_encrypted_openssl_key_is_refused(openssl_key: Path, tmp_path: Path) -> None:
    encrypted = openssl(
        "pkcs8", "-topk8", "-in", openssl_key, "-v2", "aes-256-cbc", "-passout", "pass:secret",
    )  # fmt: skip
    assert encrypted.returncode == 0, encrypted.stderr.decode()
    with pytest.raises(Sm2KeyInvalid, match="encrypted"):
        Sm2PrivateKey.from_pem(encrypted.stdout)


@pytest.mark.parametrize(
    ("point", "message"),
    [
        (EXAMPLE_POINT[:-1], "wrong length"),
        (b"\x05" + EXAMPLE_POINT, "not on the SM2 curve"),
        (EXAMPLE_POINT[:32] + bytes(32), "not on the SM2 curve"),
        ("04" + EXAMPLE_POINT.hex(), "wrong length"),
    ],
    ids=["short", "bad-prefix", "off-curve", "hex-string"],
)
def test_bad_public_points_are_refused(point: object, message: str) -> None:
    with pytest.raises(Sm2KeyInvalid, match=message):
        Sm2PublicKey(point)  # type: ignore[arg-type]


def test_point_formats_agree() -> None:
    x, y = EXAMPLE_POINT[:32], EXAMPLE_POINT[32:]
    compressed = bytes([2 + (y[-1] & 1)]) + x
    assert Sm2PublicKey(b"\x04" + EXAMPLE_POINT) == Sm2PublicKey(EXAMPLE_POINT)
    assert Sm2PublicKey(compressed) == Sm2PublicKey(EXAMPLE_POINT)


def test_not_a_certificate_is_refused() -> None:
    with pytest.raises(Sm2KeyInvalid, match=r"not a DER or PEM X\.509 certificate"):
        Sm2PublicKey.from_certificate(b"\x30\x03\x02\x01\x00")
    with pytest.raises(Sm2KeyInvalid, match="larger than"):
        Sm2PublicKey.from_certificate(b"\x30" * (64 * 1024 + 1))


def test_scalar_constructor_refuses_wrong_lengths() -> None:
    with pytest.raises(Sm2KeyInvalid, match="32 bytes"):
        Sm2PrivateKey(EXAMPLE_D[1:], Sm2PublicKey(EXAMPLE_POINT))
    with pytest.raises(Sm2KeyInvalid, match="needs an Sm2PublicKey, not bytes"):
        Sm2PrivateKey(EXAMPLE_D, EXAMPLE_POINT)  # type: ignore[arg-type]


# --- files and what errors show ---------------------------------------------------------------


def test_key_files_refused_name_the_file_and_never_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(KeyFileError, match="does not exist"):
        load_sm2_private_key(missing)
    p256 = tmp_path / "p256.pem"
    p256.write_bytes(pkcs8_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(KeyFileError, match=r"p256\.pem could not be loaded: .*P-256, not SM2"):
        load_sm2_private_key(p256)
    mismatched = tmp_path / "mismatched.pem"
    scalar = int.from_bytes(EXAMPLE_D, "big") + 1
    mismatched.write_bytes(
        asn1_pem.armor("PRIVATE KEY", sm2_pkcs8(scalar, b"\x04" + EXAMPLE_POINT))
    )
    with pytest.raises(KeyFileError) as refused:
        load_sm2_private_key(mismatched)
    secrets = (format(scalar, "x"), format(scalar, "X"), str(scalar))
    assert not any(secret in str(refused.value) for secret in secrets)
    with pytest.raises(KeyFileError, match="is a directory"):
        load_sm2_private_key(tmp_path)
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(KeyFileError, match="larger than"):
        load_sm2_private_key(huge)


def test_repr_never_shows_the_scalar() -> None:
    key = Sm2PrivateKey(EXAMPLE_D, Sm2PublicKey(EXAMPLE_POINT))
    assert EXAMPLE_D.hex() not in repr(key).lower()
    assert "Sm2PrivateKey(public=Sm2PublicKey(x=09f9df31" in repr(key)


def test_write_refuses_what_is_not_an_sm2_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not an SM2 key"):
        write_sm2_private_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]
    with pytest.raises(KeyFileError, match="cannot write"):
        write_sm2_private_key(tmp_path / "absent" / "k.pem", Sm2PrivateKey.generate())


def test_every_sm2_error_is_a_signer_error() -> None:
    for error in (Sm2KeyInvalid, Sm2IdInvalid, Sm2SignatureInvalid, Sm2SignatureMalformed):
        assert issubclass(error, Sm2Refused)
        assert issubclass(error, SignerError)
