"""A region CA made with the OpenSSL command line, as a region's own team would make one: a P-256
root, an issuing intermediate, leaves issued, revoked and listed in CRLs with `openssl ca` over a
minimal config and its index.txt database, which `openssl ocsp` serves as a responder (with a
delegated OCSP signing certificate). Leaves may carry a CRL distribution point and an AIA OCSP
URL. For the import and revocation tests: the material comes from an implementation independent
of Tongban's."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OpenSslCa", "make_openssl_ca"]

_EXTENSIONS = """\
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[seal]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,nonRepudiation
extendedKeyUsage = 1.3.6.1.5.5.7.3.36
certificatePolicies = 0.4.0.194112.1.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[tls]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:gateway.example.test
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[tsa]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = critical,timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ocsp]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = critical,OCSPSigning
noCheck = ignored
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_CA_CONFIG = """\
[ca]
default_ca = issuing

[issuing]
database = {dir}/index.txt
crlnumber = {dir}/crlnumber
certificate = {dir}/intermediate.pem
private_key = {dir}/intermediate.key
new_certs_dir = {dir}/issued
serial = {dir}/serial
rand_serial = yes
unique_subject = no
policy = any_name
default_md = sha256
default_crl_days = 30

[any_name]
organizationName = optional
commonName = supplied
"""


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@dataclass(frozen=True)
class OpenSslCa:
    dir: Path

    @property
    def root(self) -> Path:
        return self.dir / "root.pem"

    @property
    def intermediate(self) -> Path:
        return self.dir / "intermediate.pem"

    def issue(
        self,
        name: str,
        profile: str,
        *,
        days: int = 30,
        ocsp_url: str | None = None,
        crl_url: str | None = None,
        san: str | None = None,
    ) -> tuple[Path, Path]:
        """A P-256 leaf under the intermediate with an `_EXTENSIONS` section, recorded in the
        index by `openssl ca`, with an AIA OCSP URL, a CRL distribution point and another
        subjectAltName (`URI:urn:tongban:agency:...`) if given: (cert, key)."""
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        _openssl("req", "-new", "-key", key, "-subj", f"/O=Region/CN={name}", "-out", csr)
        section = _section(profile)
        if san:
            section = re.sub(r"(?m)^subjectAltName = .*\n", "", section)
            section += f"subjectAltName = {san}\n"
        if ocsp_url:
            section += f"authorityInfoAccess = OCSP;URI:{ocsp_url}\n"
        if crl_url:
            section += f"crlDistributionPoints = URI:{crl_url}\n"
        extfile = self.dir / f"{name}.ext.cnf"
        extfile.write_text(f"[{profile}]\n{section}")
        _openssl(
            "ca", "-batch", "-notext", "-config", self.dir / "ca.cnf", "-in", csr,
            "-days", str(days), "-extfile", extfile, "-extensions", profile, "-out", cert,
        )  # fmt: skip
        return cert, key

    def revoke(self, certificate: Path) -> None:
        _openssl("ca", "-config", self.dir / "ca.cnf", "-revoke", certificate)

    def revoke_for(self, certificate: Path, reason: str) -> None:
        """Revoke with a CRL reason (keyCompromise, superseded, ...)."""
        _openssl(
            "ca", "-config", self.dir / "ca.cnf", "-revoke", certificate, "-crl_reason", reason
        )

    def crl(self, name: str = "crl.pem", *, der: bool = False, hours: int | None = None) -> Path:
        out = self.dir / name
        period = ["-crlhours", str(hours)] if hours is not None else []
        _openssl("ca", "-config", self.dir / "ca.cnf", "-gencrl", *period, "-out", out)
        if der:
            _openssl("crl", "-in", out, "-outform", "DER", "-out", out)
        return out


def _section(profile: str) -> str:
    """The lines of one section of `_EXTENSIONS`."""
    match = re.search(rf"^\[{re.escape(profile)}\]\n(.*?)(?:\n\[|\Z)", _EXTENSIONS, re.S | re.M)
    if match is None:
        raise KeyError(profile)
    return match.group(1).rstrip("\n") + "\n"


def make_openssl_ca(folder: Path, region_name: str = "Example") -> OpenSslCa:
    """A root (self-signed, 10 years) and an intermediate it issues, both P-256."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ext.cnf").write_text(_EXTENSIONS)
    (folder / "ca.cnf").write_text(_CA_CONFIG.format(dir=folder))
    (folder / "index.txt").write_text("")
    (folder / "crlnumber").write_text("01\n")
    (folder / "issued").mkdir()
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", folder / "root.key", "-subj", f"/O={region_name}/CN={region_name} Root CA",
        "-days", "3650", "-sha256", "-config", folder / "ext.cnf", "-extensions", "ca",
        "-out", folder / "root.pem",
    )  # fmt: skip
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", folder / "intermediate.key", "-subj",
        f"/O={region_name}/CN={region_name} Issuing CA", "-out", folder / "intermediate.csr",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", folder / "intermediate.csr", "-CA", folder / "root.pem",
        "-CAkey", folder / "root.key", "-CAcreateserial", "-days", "1825", "-sha256",
        "-extfile", folder / "ext.cnf", "-extensions", "ca", "-out", folder / "intermediate.pem",
    )  # fmt: skip
    return OpenSslCa(folder)
