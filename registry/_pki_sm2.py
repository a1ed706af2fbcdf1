"""A region's SM2 seal: its seal maker, and the GB/T 38540 `SESeal` that lists an SM2 seal key.

A region that seals with SM2 seals as GB/T 38540 `SES_Signature`, and such a signature carries
the electronic seal (`SESeal`, 印章) it was made with: the seal's id, name, picture and validity
and the certificates that may use it, signed by a seal maker (制章人). This module is that maker
for a PKI folder: each region has one SM2 maker key and certificate (issued once, under the
region's P-256 issuing CA like the seal keys, a mixed chain), and each SM2 seal key the region's
CA issues gets its own seal, written beside its certificate::

    regions/<code>/keys/seal-maker.pem, seal-maker.key   the region's seal maker (SM2)
    regions/<code>/keys/seal-<kid8>.esl                   the SESeal (DER) of seal-<kid8>.pem

A rotation issues a new seal key and with it a new seal listing only that key, so the old seal
keeps verifying what it sealed while the new one takes over at the activating publish.
"""

from __future__ import annotations

import math
import struct
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509

from registry._pki import (
    CLOCK_SKEW,
    IssuedKey,
    Issuer,
    Manifest,
    crl_distribution_point,
    load_region_issuer,
    pem,
    region_keys_dir,
    write_private_sm2,
    write_public,
)
from registry._profiles import authority_key_identifier, leaf_subject, signing_key_usage
from registry.errors import PkiError
from signer import Sm2FileSigner, Sm2PrivateKey, _oids, load_sm2_private_key, make_seal
from signer._sm2_x509 import issue_sm2_certificate, sm2_subject_key_identifier
from signer.errors import SignerError

__all__ = [
    "ESEAL_SUFFIX",
    "SEAL_MAKER",
    "add_region_eseal",
    "eseal_path",
    "region_seal_maker",
    "seal_picture_png",
    "write_region_eseal",
]

SEAL_MAKER: Final = "seal-maker"  # the maker's files' stem in the region's keys folder
ESEAL_SUFFIX: Final = ".esl"
SEAL_TYPE_OFFICIAL: Final = 1  # GB/T 38540 §7.1: 1 单位印章 (an organisation's seal), 2 个人印章
SEAL_SIZE_MM: Final = 40  # an official round seal's diameter
PICTURE_PIXELS: Final = 96


def eseal_path(certificate_path: Path) -> Path:
    """Where the seal of the seal key whose certificate is `certificate_path` is written."""
    return certificate_path.with_suffix(ESEAL_SUFFIX)


def add_region_eseal(
    pki_root: Path, key: IssuedKey, *, passphrase: bytes | None, now: datetime
) -> Path:
    """The seal of a newly issued SM2 seal key of a region (`tongban keys generate|rotate`)."""
    region = Manifest.read(pki_root).region(key.region)
    issuer = load_region_issuer(pki_root, region, passphrase)
    return write_region_eseal(pki_root, issuer, key, now=now)


def write_region_eseal(pki_root: Path, issuer: Issuer, key: IssuedKey, *, now: datetime) -> Path:
    """Make the `SESeal` listing `key` (an SM2 seal key of `issuer`'s region) with the region's
    seal maker, and write it beside the key's certificate; its path."""
    if key.algorithm != "SM2" or key.usage != "seal" or key.owner != issuer.region.code:
        raise PkiError(
            f"a region seal lists one of the region's SM2 seal keys, not {key.owner}'s "
            f"{key.algorithm} {key.usage} key"
        )
    region = issuer.region
    leaf = x509.load_pem_x509_certificates(key.certificate_path.read_bytes())[0]
    maker = region_seal_maker(pki_root, issuer, now=now)
    try:
        seal = make_seal(
            maker=maker,
            es_id=f"{region.code}-{key.kid[:8]}",
            name=f"{region.name}电子印章",
            seal_type=SEAL_TYPE_OFFICIAL,
            signer_certificates=(leaf,),
            picture=seal_picture_png(),
            picture_type="PNG",
            width_mm=SEAL_SIZE_MM,
            height_mm=SEAL_SIZE_MM,
            valid_from=key.not_before,
            valid_until=min(key.not_after, maker.certificate.not_valid_after_utc),
            created=now,
        )
    except ValueError as exc:
        raise PkiError(f"cannot make the seal of {key.kid}: {exc}") from exc
    path = eseal_path(key.certificate_path)
    write_public(path, seal)
    return path


def region_seal_maker(pki_root: Path, issuer: Issuer, *, now: datetime) -> Sm2FileSigner:
    """The region's seal maker: its SM2 key and certificate, issued the first time they are
    needed (and again once the certificate has expired)."""
    folder = region_keys_dir(pki_root, issuer.region.code)
    certificate_path = folder / f"{SEAL_MAKER}.pem"
    key_path = folder / f"{SEAL_MAKER}.key"
    if certificate_path.exists():
        try:
            certificate = x509.load_pem_x509_certificates(certificate_path.read_bytes())[0]
            maker = Sm2FileSigner(load_sm2_private_key(key_path), certificate)
        except (OSError, ValueError, SignerError) as exc:
            raise PkiError(
                f"{certificate_path}: the region's seal maker is unusable: {exc}"
            ) from exc
        if certificate.not_valid_after_utc > now:
            return maker
    key = Sm2PrivateKey.generate()
    certificate = _maker_certificate(issuer, key, now)
    folder.mkdir(parents=True, exist_ok=True)
    write_private_sm2(key_path, key)  # key first, as for every leaf
    write_public(certificate_path, pem(certificate) + pem(issuer.certificate))
    return Sm2FileSigner(key, certificate)


def _maker_certificate(issuer: Issuer, key: Sm2PrivateKey, now: datetime) -> x509.Certificate:
    """The maker signs seals, never documents: key usage for signatures and the document signing
    EKU, but no seal or signature policy, so no verifier takes it for a region's seal key."""
    region = issuer.region
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf_subject(region, None, SEAL_MAKER, f"{region.name}电子印章制作"))
        .issuer_name(issuer.certificate.subject)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + timedelta(days=3 * 365), issuer.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
        .add_extension(crl_distribution_point(region.code), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier(sm2_subject_key_identifier(key.public_key())), critical=False
        )
        .add_extension(signing_key_usage(content_commitment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_oids.EKU_DOCUMENT_SIGNING]), critical=False)
    )
    return issue_sm2_certificate(builder, key.public_key(), issuer.key)


def seal_picture_png(pixels: int = PICTURE_PIXELS) -> bytes:
    """A red round seal as a small PNG (RGBA, a ring and a five-pointed star), written with zlib:
    the picture a seal must carry, made without an image library for one synthetic image."""
    centre = (pixels - 1) / 2
    outer, inner = pixels / 2 - 1, pixels / 2 - 6
    star = _star(centre, pixels / 5)
    rows = bytearray()
    for y in range(pixels):
        rows.append(0)  # filter type None
        for x in range(pixels):
            radius = math.hypot(x - centre, y - centre)
            red = inner <= radius <= outer or _inside(star, x, y)
            rows += b"\xd0\x10\x10\xff" if red else b"\x00\x00\x00\x00"

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", pixels, pixels, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


def _star(centre: float, size: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        angle = -math.pi / 2 + i * math.pi / 5
        radius = size if i % 2 == 0 else size * 0.382
        points.append((centre + radius * math.cos(angle), centre + radius * math.sin(angle)))
    return points


def _inside(polygon: list[tuple[float, float]], x: float, y: float) -> bool:
    """Even-odd rule: whether (x, y) is inside `polygon`."""
    inside = False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside
