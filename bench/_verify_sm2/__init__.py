"""The SM2 half of bench/verify.py: a test SM2 PKI made in memory (a root, a seal maker and a
signer, issued with signer/_sm2_x509.py), a GB/T 38540 seal, an SES_Signature over the same
answer the ES256 half seals, and the two operations measured: the GM verifier's validation
and the raw SM2 check of the same signature by the same library."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from signer import GmVerifier, Sm2FileSigner, Sm2PrivateKey, make_seal, sign_with_seal
from signer._ses_asn1 import parse_signature
from signer._sm2_x509 import issue_sm2_certificate, sm2_public_key_of, sm2_subject_key_identifier

REGION = "330000"
# A 1×1 PNG: the seal's picture is carried, never drawn.
PICTURE = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f6ee"
    "ad0000000049454e44ae426082"
)


@dataclass(frozen=True)
class Sm2Setup:
    validate: Callable[[], object]  # (d): the same signature again
    raw_verify: Callable[[], None]  # (e)
    distinct: Callable[[], object]  # (f): the next of a pool of signatures, each made apart
    ses_signature: bytes


class _RegionTrust:
    """A trust source whose one region's anchor is the test SM2 root (as a registry would be)."""

    version = 1

    def __init__(self, root: x509.Certificate) -> None:
        self._root = root

    def key(self, kid: str) -> None:
        return None

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return ((self._root,), ()) if region == REGION else ((), ())

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return ()

    def regions(self) -> tuple[str, ...]:
        return (REGION,)


def _issue(
    name: str, key: Sm2PrivateKey, issuer: tuple[x509.Name, Sm2PrivateKey] | None, now: datetime
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tongban bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    issuer_name, issuer_key = issuer or (subject, key)
    ca = issuer is None
    usage = {
        "digital_signature": not ca,
        "content_commitment": not ca,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "key_cert_sign": ca,
        "crl_sign": ca,
        "encipher_only": False,
        "decipher_only": False,
    }
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier(sm2_subject_key_identifier(key.public_key())),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier(
                sm2_subject_key_identifier(issuer_key.public_key()), None, None
            ),
            critical=False,
        )
    )
    return issue_sm2_certificate(builder, key.public_key(), issuer_key)


def build_sm2(payload: bytes, now: datetime, pool_size: int) -> Sm2Setup:
    """The SM2 setup; `pool_size` distinct signatures (each with its own signing time) for (f):
    with more than the verifier remembers (MAX_CACHED), each is parsed and its path checked
    afresh, as a stream of signatures that never repeat would be."""
    root_key, maker_key, signer_key = (Sm2PrivateKey.generate() for _ in range(3))
    root = _issue("Bench region 330000 root CA", root_key, None, now)
    by_root = (root.subject, root_key)
    maker = Sm2FileSigner(maker_key, _issue("Bench seal maker", maker_key, by_root, now))
    signer = Sm2FileSigner(signer_key, _issue("Bench seal key", signer_key, by_root, now))
    seal = make_seal(
        maker=maker,
        es_id="33000000000000000001",
        name="浙江省测试专用章",
        seal_type=1,
        signer_certificates=[signer.certificate],
        picture=PICTURE,
        width_mm=40,
        height_mm=40,
        valid_from=now - timedelta(days=7),
        valid_until=now + timedelta(days=90),
        created=now - timedelta(days=7),
    )
    ses = sign_with_seal(
        payload, seal=seal, signer=signer, at=now - timedelta(minutes=1), property_info="bench"
    )
    base = now - timedelta(minutes=2)
    pool = [
        sign_with_seal(
            payload, seal=seal, signer=signer, at=base - timedelta(seconds=i), property_info="bench"
        )
        for i in range(pool_size)
    ]
    verifier = GmVerifier(_RegionTrust(root), clock=lambda: now)
    for candidate in (ses, pool[0], pool[-1]):
        report = verifier.validate_signature(candidate, payload)
        assert report.passed, report.message

    view = parse_signature(ses)
    public_key = sm2_public_key_of(signer.certificate)
    signature, tbs = view.signature, view.tbs

    def raw_verify() -> None:
        public_key.verify(signature, tbs)

    raw_verify()
    position = 0

    def distinct() -> object:
        nonlocal position
        position = (position + 1) % len(pool)
        return verifier.validate_signature(pool[position], payload)

    return Sm2Setup(lambda: verifier.validate_signature(ses, payload), raw_verify, distinct, ses)
