"""Keys in a cryptographic module: SoftHSM2 over PKCS#11, with a token made here in a temporary
folder. `tongban keys generate|rotate --pkcs11` makes seal, token and audit keys in the token and
`tongban keys authority` the registry authority key; each signs what its file counterpart signs
(a seal the SealVerifier passes, a request token the TokenVerifier accepts, an audit checkpoint,
a registry snapshot), a rotation moves a region from one token key to the next, and no private
key is ever written to disk or readable from the token.

Never skipped: without SoftHSM2 the tests fail and say `make softhsm`. The PKCS#11 library is
loaded once per process (C_Initialize reads SOFTHSM2_CONF then), so the token is made once for
the module.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pkcs11
import pytest
from cli_support import Run
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from docs_support import REPO, section_commands
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters
from support import Federation, make_federation

from gateway._wiring import load_seal_keys
from gateway.audit import sign_checkpoint, verify_checkpoint
from gateway.config import GatewayConfig
from gateway.sealing import RegionSealer
from gateway.tokens import TokenVerifier, issue_agency_token
from registry import (
    CURRENT_SNAPSHOT,
    KeyRecord,
    KeyState,
    KeyUsage,
    Registry,
    RegistryTrust,
    SnapshotError,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import (
    PKCS11_MECHANISMS,
    Indication,
    KeyFileError,
    KeyModuleError,
    Pkcs11KeyProvider,
    SealVerifier,
    SignatureMechanism,
    generate_pkcs11_key,
    key_reference,
    open_pkcs11_key,
    open_signing_key,
    parse_compact,
    parse_pkcs11_uri,
    sign_json,
    verify_signature,
    x5t_s256_of_certificate,
)
from signer._pkcs11 import _token

pytestmark = pytest.mark.integration

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")  # Debian's softhsm2 package
LABEL = "tongban-test"
SPARE = "tongban-spare"  # a second token, to be refused a wrong PIN
PIN = "4711-user-pin"
SO_PIN = "0815-so-pin"
REGION = "330000"
EXPORTABLE = "exportable"  # the label of a key made extractable, to be refused


@dataclass(frozen=True)
class Token:
    folder: Path
    pin_file: Path

    def uri(self, label: str, *, token: str = LABEL, pin: str = "") -> str:
        source = f"pin-source=file:{self.pin_file}" if not pin else f"pin-source=file:{pin}"
        return f"pkcs11:token={token};object={label}?module-path={MODULE}&{source}"


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    util = shutil.which("softhsm2-util")
    if util is None or not MODULE.is_file():
        pytest.fail("SoftHSM2 is not installed: run `make softhsm` (Debian package softhsm2)")
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    config = folder / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n",
        encoding="utf-8",
    )
    pin_file = folder / "pin"
    pin_file.write_text(PIN + "\n", encoding="utf-8")
    pin_file.chmod(0o600)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(config))
        for label in (LABEL, SPARE):
            subprocess.run(
                [
                    util,
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--pin",
                    PIN,
                    "--so-pin",
                    SO_PIN,
                ],
                check=True,
                capture_output=True,
                env=os.environ,
            )
        yield Token(folder, pin_file)


def leaf_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def key_files(root: Path) -> set[Path]:
    """Every file under `root` that holds a PEM private key."""
    return {
        path
        for path in root.rglob("*")
        if path.is_file() and b"PRIVATE KEY-----" in path.read_bytes()
    }


def the_record(fed: Federation, owner: str, usage: KeyUsage, state: KeyState) -> KeyRecord:
    (record,) = fed.inventory().find(owner, usage, state)
    return record


def publish_twice(fed: Federation) -> Registry:
    """A rotation's two publishes: the pending key is published, then active."""
    fed.publish()
    return fed.publish().snapshot.registry


def seal_and_validate(
    registry: Registry, keys: dict[str, Pkcs11KeyProvider], payload: bytes
) -> str:
    sealed = asyncio.run(
        RegionSealer(REGION, keys).seal(
            registry, payload, content_type="application/json", now=datetime.now(UTC)
        )
    )
    report = SealVerifier(RegistryTrust(registry)).validate(sealed.jws)
    assert report.indication is Indication.TOTAL_PASSED, report.message
    return sealed.jws


def check_with_cryptography(jws: str, provider: Pkcs11KeyProvider) -> None:
    """An independent check of the JWS signature: cryptography on the certificate's key."""
    header, payload, signature = jws.split(".")
    raw = parse_compact(jws).signature
    public = provider.certificate_chain[0].public_key()
    signing_input = f"{header}.{payload}".encode()
    if isinstance(public, ec.EllipticCurvePublicKey):
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(raw, signing_input)
    assert signature


def gateway_config(folder: Path, pairs: list[tuple[Path, str]]) -> GatewayConfig:
    seal = "".join(
        f"\n[[seal.keys]]\ncertificate = {json.dumps(str(c))}\nprivate_key = {json.dumps(k)}\n"
        for c, k in pairs
    )
    path = folder / "gateway.toml"
    path.write_text(
        f'[gateway]\nregion = "{REGION}"\nlisten = "127.0.0.1:0"\n'
        '[tls]\ncertificate = "tls.pem"\nprivate_key = "tls.key"\n'
        '[registry]\nauthority_public_key = "a.pem"\nsnapshot_file = "current.jws"\n' + seal,
        encoding="utf-8",
    )
    return GatewayConfig.from_file(path)


def test_a_seal_key_in_the_token_seals_rotates_and_verifies(
    token: Token, tmp_path: Path, run: Run
) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    files_before = key_files(tmp_path)

    # (1) Rotate the region's file seal key to one generated in the token (ES256).
    code, out, err = run(
        "keys", "rotate", "--pki", fed.pki, "--owner", REGION, "--usage", "seal",
        "--pkcs11", token.uri("seal-1"),
    )  # fmt: skip
    assert code == 0, err
    assert "private key in the module (never exported): pkcs11:token=tongban-test" in out
    registry = publish_twice(fed)
    first = the_record(fed, REGION, KeyUsage.SEAL, KeyState.ACTIVE)
    assert first.private_key.startswith("pkcs11:")
    assert ";id=" in first.private_key
    assert not (fed.pki / first.certificate).with_suffix(".key").exists()

    # (2) The gateway holds it through [[seal.keys]] with its URI; the seal passes validation.
    config = gateway_config(tmp_path, [(fed.pki / first.certificate, first.private_key)])
    keys = load_seal_keys(config)
    assert list(keys) == [first.kid]
    assert isinstance(keys[first.kid], Pkcs11KeyProvider)
    held = {kid: p for kid, p in keys.items() if isinstance(p, Pkcs11KeyProvider)}
    first_seal = seal_and_validate(registry, held, b'{"answer": 1}')
    check_with_cryptography(first_seal, held[first.kid])

    # (3) Rotate again, to an Ed25519 key in the token: the second is active, the first retires
    # and what it sealed still verifies.
    code, _, err = run(
        "keys", "rotate", "--pki", fed.pki, "--owner", REGION, "--usage", "seal",
        "--algorithm", "EdDSA", "--pkcs11", token.uri("seal-2"),
    )  # fmt: skip
    assert code == 0, err
    registry = publish_twice(fed)
    second = the_record(fed, REGION, KeyUsage.SEAL, KeyState.ACTIVE)
    retiring = fed.inventory().find(REGION, KeyUsage.SEAL, KeyState.RETIRING)
    assert first.kid in {r.kid for r in retiring}
    config = gateway_config(
        tmp_path,
        [(fed.pki / r.certificate, r.private_key) for r in (first, second)],
    )
    held = {k: p for k, p in load_seal_keys(config).items() if isinstance(p, Pkcs11KeyProvider)}
    assert set(held) == {first.kid, second.kid}
    second_seal = seal_and_validate(registry, held, b'{"answer": 2}')
    assert parse_compact(second_seal).header["x5t#S256"] == second.kid
    assert parse_compact(second_seal).header["alg"] == "EdDSA"
    check_with_cryptography(second_seal, held[second.kid])
    report = SealVerifier(RegistryTrust(registry)).validate(first_seal)
    assert report.indication is Indication.TOTAL_PASSED, report.message

    # (4) No private key was written: the PEM private keys on disk are the dev PKI's own, and
    # the PIN is in neither the inventory nor anything printed.
    assert key_files(tmp_path) == files_before
    assert PIN not in (fed.pki / "keys.json").read_text(encoding="utf-8")
    assert PIN not in out


def test_token_and_audit_keys_in_the_token(token: Token, tmp_path: Path, run: Run) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    files_before = key_files(tmp_path)

    # A request token signed in the token (rotation: pending, then active) is accepted.
    code, _, err = run(
        "keys", "rotate", "--pki", fed.pki, "--owner", REGION, "--usage", "token",
        "--pkcs11", token.uri("token-1"),
    )  # fmt: skip
    assert code == 0, err
    registry = publish_twice(fed)
    token_key = the_record(fed, REGION, KeyUsage.TOKEN, KeyState.ACTIVE)
    assert token_key.private_key.startswith("pkcs11:")
    agency = next(r for r in fed.inventory().records() if r.region == REGION and r.owner != REGION)
    tls = the_record(fed, agency.owner, KeyUsage.TLS, KeyState.ACTIVE)
    now = datetime.now(UTC)
    issued = issue_agency_token(fed.pki, agency.owner, "op-1", lifetime_seconds=300, now=now)
    assert jwt.get_unverified_header(issued)["kid"] == token_key.kid
    thumbprint = x5t_s256_of_certificate(leaf_of(fed.pki / tls.certificate))
    claims = TokenVerifier(region=REGION, clock=lambda: now).verify(
        issued,
        registry=registry,
        caller_agency=agency.owner,
        caller_region=REGION,
        client_thumbprint=thumbprint,
    )
    assert (claims.kid, claims.operator) == (token_key.kid, "op-1")

    # A first audit key generated in the token (the file one revoked first) signs checkpoints.
    old = the_record(fed, REGION, KeyUsage.AUDIT, KeyState.ACTIVE)
    assert run("keys", "revoke", old.kid, "--pki", fed.pki, "--reason", "superseded")[0] == 0
    code, out, err = run(
        "keys", "generate", "--pki", fed.pki, "--owner", REGION, "--usage", "audit",
        "--algorithm", "EdDSA", "--pkcs11", token.uri("audit-1"),
    )  # fmt: skip
    assert code == 0, err
    assert "active" in out
    assert "never exported" in out
    audit = the_record(fed, REGION, KeyUsage.AUDIT, KeyState.ACTIVE)
    key = open_signing_key(key_reference(audit.private_key, fed.pki))
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    note = sign_checkpoint("audit.tongban/330000", 3, bytes(32), key, "audit.tongban/330000")
    leaf = leaf_of(fed.pki / audit.certificate).public_key()
    assert isinstance(leaf, ed25519.Ed25519PublicKey)
    assert verify_checkpoint(note.note, leaf, "audit.tongban/330000").size == 3
    assert key_files(tmp_path) == files_before


def test_the_registry_authority_key_in_the_token(token: Token, tmp_path: Path, run: Run) -> None:
    fed = make_federation(tmp_path / "fed")
    public = tmp_path / "authority.pub.pem"
    code, out, err = run(
        "keys", "authority", "--pkcs11", token.uri("authority-1"), "--out", public
    )  # fmt: skip
    assert code == 0, err
    uri = out.split("in the module: ", 1)[1].split()[0]
    published = tmp_path / "published-hsm"
    code, _, err = run(
        "registry", "publish", "--source", fed.source, "--pki", fed.pki, "--out", published,
        "--root", public, "--authority-key", uri,
    )  # fmt: skip
    assert code == 0, err
    verifier = SnapshotVerifier(load_trusted_root(public))
    snapshot = verifier.verify(
        (published / CURRENT_SNAPSHOT).read_bytes(), held_version=None, now=datetime.now(UTC)
    )
    assert snapshot.registry.version == 1
    # The dev PKI's own root does not name the token's key.
    installed = fed.pki / "authority/root.json"
    with pytest.raises(SnapshotError):
        SnapshotVerifier(load_trusted_root(installed)).verify(
            (published / CURRENT_SNAPSHOT).read_bytes(), held_version=None, now=None
        )
    # The token's key joins the federation's root (2 of 4), signing root 2 itself, and then
    # signs a snapshot with one file key: a gateway installed with root 1 follows and accepts.
    code, _, err = run(
        "registry", "rotate-root", "--root", installed, "--add-key", f"{public}=national HSM"
    )  # fmt: skip
    assert code == 0, err
    root_2 = fed.pki / "authority/root-2.json"
    for key in (uri, fed.pki / "authority/national.key", fed.pki / "authority/province-1.key"):
        code, _, err = run("registry", "sign-root", root_2, "--previous", installed, "--key", key)
        assert code == 0, err
    code, out, err = run(
        "registry", "publish", "--source", fed.source, "--pki", fed.pki, "--out", fed.published,
        "--authority-key", uri, "--authority-key", fed.pki / "authority/province-2.key",
    )  # fmt: skip
    assert code == 0, err
    assert "signed by 2 of 4 authority keys (2 needed)" in out
    hsm_kid = load_trusted_root(public).keys[0].keyid
    followed = SnapshotVerifier(load_trusted_root(installed)).verify(
        fed.current.read_bytes(), held_version=None, now=datetime.now(UTC)
    )
    assert hsm_kid in followed.signers
    assert followed.root is not None
    assert followed.root.version == 2


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "PS256"])
def test_each_algorithm_signs_in_the_module(token: Token, algorithm: str) -> None:
    """Each row of the mechanism table: the module's signature is the JWS one (checked by the
    algorithm policy, over cryptography), and the key object the JWS code takes signs too."""
    named = generate_pkcs11_key(parse_pkcs11_uri(token.uri(f"every-{algorithm}")), algorithm)
    key = open_pkcs11_key(named)
    assert key.algorithm == algorithm
    signature = key.sign(b"signing input")
    assert verify_signature(algorithm, key.public_key, b"signing input", signature)
    assert not verify_signature(algorithm, key.public_key, b"signing inpuT", signature)
    private = open_signing_key(named)
    document = sign_json(b'{"v":1}', private, typ="x", kid="k", algorithms=(algorithm,))
    assert jwt.PyJWS().decode(document, private.public_key(), algorithms=[algorithm]) == b'{"v":1}'


def test_the_mechanism_table_is_the_providers_parameter(token: Token, tmp_path: Path) -> None:
    """What a module does for an algorithm is a row of the table the provider is given (how an
    SM2 row would plug in): a key no row serves is refused, and a row's parts are what runs."""
    named = generate_pkcs11_key(parse_pkcs11_uri(token.uri("table")), "ES256")
    with pytest.raises(KeyModuleError, match="no row of this provider's mechanism table"):
        open_pkcs11_key(named, {"EdDSA": PKCS11_MECHANISMS["EdDSA"]})
    digested: list[bytes] = []

    def digest(data: bytes, public_key: object) -> bytes:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)  # an SM2 row needs it for Z
        digested.append(data)
        return hashlib.sha256(data).digest()

    row = dataclasses.replace(PKCS11_MECHANISMS["ES256"], digest=digest)
    assert isinstance(row, SignatureMechanism)
    key = open_pkcs11_key(named, {"ES256": row})
    signature = key.sign(b"through the row")
    assert digested == [b"through the row"]
    assert verify_signature("ES256", key.public_key, b"through the row", signature)


def test_no_private_key_can_be_read_out_of_the_token(token: Token) -> None:
    """Every private key Tongban made there is sensitive and never extractable, the module will
    not give its value, and the key objects Tongban hands out refuse to serialise it."""
    uri = parse_pkcs11_uri(token.uri("never-out"))
    named = generate_pkcs11_key(uri, "ES256")
    opened = _token(named)
    with opened.lock:
        privates = [
            private
            for private in opened.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            if private.label != EXPORTABLE  # the one test_refusals makes outside Tongban
        ]
        assert privates
        for private in privates:
            rsa_key = private[Attribute.KEY_TYPE] == KeyType.RSA
            secret = Attribute.PRIVATE_EXPONENT if rsa_key else Attribute.VALUE
            assert private[Attribute.SENSITIVE]
            assert private[Attribute.ALWAYS_SENSITIVE]
            assert not private[Attribute.EXTRACTABLE]
            assert private[Attribute.NEVER_EXTRACTABLE]
            with pytest.raises(pkcs11.AttributeSensitive):
                private[secret]
    key = open_signing_key(named)
    with pytest.raises(KeyModuleError, match="never read out"):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def test_a_forked_worker_signs_with_its_own_session(token: Token) -> None:
    """The gateway's workers are forked: a child initialises the library again, logs in afresh
    and signs; the parent's session still works afterwards."""
    named = generate_pkcs11_key(parse_pkcs11_uri(token.uri("forked")), "ES256")
    key = open_pkcs11_key(named)  # the parent has the library loaded and a session open
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its signature verifies
        code = 1
        try:
            child = open_pkcs11_key(named)
            der_check(child.public_key, child.sign(b"from the child"), b"from the child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    der_check(key.public_key, key.sign(b"from the parent"), b"from the parent")


def der_check(public: object, raw: bytes, data: bytes) -> None:
    assert isinstance(public, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, data, ec.ECDSA(hashes.SHA256()))


def test_a_lost_session_is_logged_in_again_at_the_next_open(token: Token) -> None:
    """A module restart loses the session: signing says so, and the next open of the key (what
    a gateway's reload does) logs in afresh."""
    named = generate_pkcs11_key(parse_pkcs11_uri(token.uri("session-lost")), "EdDSA")
    key = open_pkcs11_key(named)
    _token(named).session.close()  # what a restarted module leaves behind
    with pytest.raises(KeyModuleError, match=r"the module refused \(Session"):
        key.sign(b"x")
    again = open_pkcs11_key(named)
    assert verify_signature("EdDSA", again.public_key, b"x", again.sign(b"x"))


def test_refusals(token: Token, tmp_path: Path) -> None:
    # An extractable key made outside Tongban is refused.
    opened = _token(parse_pkcs11_uri(token.uri("x")))
    with opened.lock:
        opened.session.generate_keypair(
            KeyType.EC,
            label=EXPORTABLE,
            id=b"\x99",
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
    with pytest.raises(KeyModuleError, match="extractable or not sensitive"):
        open_pkcs11_key(parse_pkcs11_uri(token.uri(EXPORTABLE)))
    # A label already used is never replaced.
    with pytest.raises(KeyModuleError, match="already holds a key labelled 'exportable'"):
        generate_pkcs11_key(parse_pkcs11_uri(token.uri(EXPORTABLE)), "ES256")
    # No such key; no such token; a wrong PIN (said without repeating it); no PIN variable.
    with pytest.raises(KeyModuleError, match="0 private keys in token 'tongban-test'"):
        open_pkcs11_key(parse_pkcs11_uri(token.uri("missing")))
    with pytest.raises(KeyModuleError, match="no token of module"):
        open_pkcs11_key(parse_pkcs11_uri(token.uri("k", token="nowhere")))
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("not-the-pin", encoding="utf-8")
    with pytest.raises(KeyModuleError, match="refused the PIN") as caught:
        open_pkcs11_key(parse_pkcs11_uri(token.uri("k", token=SPARE, pin=str(wrong))))
    assert "not-the-pin" not in str(caught.value)
    unset = f"pkcs11:token={SPARE};object=k?module-path={MODULE}&x-pin-env=TONGBAN_UNSET_PIN_VAR"
    with pytest.raises(KeyModuleError, match=r"TONGBAN_UNSET_PIN_VAR \(the token PIN\) is not set"):
        open_pkcs11_key(parse_pkcs11_uri(unset))
    with pytest.raises(KeyModuleError, match="names no module"):
        open_pkcs11_key(parse_pkcs11_uri(f"pkcs11:token={LABEL};object=k?pin-source=/p"))


def test_the_operators_guide_commands_run(tmp_path: Path) -> None:
    """docs/operators.md, "Keys in a cryptographic module": its commands, each a process of its
    own (so a token made by one is there for the next), on a fresh SoftHSM2 token folder."""
    if shutil.which("softhsm2-util") is None or not MODULE.is_file():
        pytest.fail("SoftHSM2 is not installed: run `make softhsm` (Debian package softhsm2)")
    fed = make_federation(tmp_path)
    fed.publish()
    (tmp_path / "tokens").mkdir()
    config = tmp_path / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n", encoding="utf-8")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SOFTHSM2_CONF": str(config),
        "TONGBAN_HSM_PIN": PIN,
        "TONGBAN_HSM_SO_PIN": SO_PIN,
        "COLUMNS": "250",
    }
    texts = section_commands(REPO / "docs" / "operators.md", "Keys in a cryptographic module")
    assert len(texts) == 4
    for text in texts:
        done = subprocess.run(
            ["bash", "-c", text],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{text}\n{done.stdout}\n{done.stderr}"
        assert PIN not in done.stdout + done.stderr
    pending = the_record(fed, REGION, KeyUsage.SEAL, KeyState.PENDING)
    assert pending.private_key.startswith("pkcs11:token=tongban-330000;object=seal-2027;id=")
    verifier = SnapshotVerifier(load_trusted_root(tmp_path / "authority-hsm.pub.pem"))
    snapshot = verifier.verify(
        (tmp_path / "published-hsm" / CURRENT_SNAPSHOT).read_bytes(), held_version=None, now=None
    )
    assert pending.kid in {k.kid for k in snapshot.registry.keys}


@pytest.mark.parametrize(
    ("pin_file", "message"),
    [
        (b"", "the token PIN is empty"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"1" * 2000, "is larger than 1024 bytes"),
        (None, "could not be read"),
    ],
)
def test_pin_files_that_are_refused(
    token: Token, tmp_path: Path, pin_file: bytes | None, message: str
) -> None:
    path = tmp_path / "pin"
    if pin_file is not None:
        path.write_bytes(pin_file)
    with pytest.raises(KeyModuleError, match=message) as caught:
        open_pkcs11_key(parse_pkcs11_uri(token.uri("k", token=SPARE, pin=str(path))))
    assert "1111" not in str(caught.value)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"pkcs11:token={SPARE};object=k?module-path={MODULE}", "says nowhere where the PIN"),
        (f"pkcs11:object=k?module-path={MODULE}&x-pin-env=P", "names no token"),
        (f"pkcs11:token={LABEL};object=k;type=public?module-path={MODULE}", "type=private"),
        (f"pkcs11:token={LABEL}?module-path={MODULE}", "names no key"),
    ],
)
def test_uris_that_name_no_usable_key(token: Token, uri: str, message: str) -> None:
    with pytest.raises(KeyModuleError, match=message):
        open_pkcs11_key(parse_pkcs11_uri(uri))


def test_generation_refusals(token: Token) -> None:
    with pytest.raises(KeyModuleError, match="no key generation for HS256"):
        generate_pkcs11_key(parse_pkcs11_uri(token.uri("g")), "HS256")
    with pytest.raises(KeyModuleError, match="names no key to generate"):
        generate_pkcs11_key(parse_pkcs11_uri(f"pkcs11:token={LABEL}?module-path={MODULE}"), "ES256")
    typed = f"pkcs11:token={LABEL};object=g;type=cert?module-path={MODULE}"
    with pytest.raises(KeyModuleError, match="type=private"):
        generate_pkcs11_key(parse_pkcs11_uri(typed), "ES256")


def test_a_provider_refuses_a_certificate_of_another_key(token: Token, tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "fed")
    record = the_record(fed, REGION, KeyUsage.SEAL, KeyState.ACTIVE)
    named = generate_pkcs11_key(parse_pkcs11_uri(token.uri("not-that-cert")), "ES256")
    with pytest.raises(KeyModuleError, match="is not the key of the certificate"):
        Pkcs11KeyProvider(named, fed.pki / record.certificate)
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(KeyFileError, match=r"holds no certificate|not a readable"):
        Pkcs11KeyProvider(named, empty)
    assert "Pkcs11Key(" in repr(open_pkcs11_key(named))


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "PS256"])
def test_key_objects_refuse_every_way_out(token: Token, algorithm: str) -> None:
    """What cryptography's key classes offer beyond signing, refused; other signature
    schemes than the key's own, refused."""
    private = open_signing_key(
        generate_pkcs11_key(parse_pkcs11_uri(token.uri(f"out-{algorithm}")), algorithm)
    )
    assert copy.copy(private) is private
    assert copy.deepcopy(private) is private
    assert algorithm in repr(private)
    with pytest.raises(KeyModuleError, match="never read out"):
        private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    if isinstance(private, ec.EllipticCurvePrivateKey):
        assert private.key_size == 256
        assert isinstance(private.curve, ec.SECP256R1)
        with pytest.raises(KeyModuleError, match="never read out"):
            private.private_numbers()
        with pytest.raises(KeyModuleError, match="never read out"):
            private.exchange(ec.ECDH(), private.public_key())
        with pytest.raises(KeyModuleError, match="ECDSA with SHA-256 only"):
            private.sign(b"x", ec.ECDSA(hashes.SHA384()))
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        with pytest.raises(KeyModuleError, match="never read out"):
            private.private_bytes_raw()
    else:
        assert isinstance(private, rsa.RSAPrivateKey)
        assert private.key_size == 3072
        with pytest.raises(KeyModuleError, match="never read out"):
            private.private_numbers()
        with pytest.raises(KeyModuleError, match="never read out"):
            private.decrypt(b"x", padding.PKCS1v15())
        with pytest.raises(KeyModuleError, match="RSASSA-PSS SHA-256"):
            private.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        signature = private.sign(b"x", pss, hashes.SHA256())
        private.public_key().verify(signature, b"x", pss, hashes.SHA256())
