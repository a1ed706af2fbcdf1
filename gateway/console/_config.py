"""The console's configuration: a TOML file loaded into a frozen `ConsoleConfig`.

```toml
[console]
listen = "127.0.0.1:8600"           # host:port the web pages are served on
region = "500000"                   # the region whose gateway, citizens and staff it serves
tls_certificate = "console.pem"     # optional: serve HTTPS (then both are given)
tls_private_key = "console.key"

[gateway]
address = "localhost:50051"         # the region's gateway (mutual TLS)
ca_file = "pki/regions/500000/ca/root.pem"

[portal]                            # the region's citizen portal agency: citizens' calls
certificate = "portal.pem"          # its TLS client certificate chain (PEM)
private_key = "portal.key"

[oversight]                         # the region's oversight agency: staff calls
certificate = "oversight.pem"
private_key = "oversight.key"

[registry]
snapshot_file = "published/current.jws"   # read again when it changes
trusted_root = "pki/authority/root.json"  # the authority keys the snapshot must be signed by
```

Relative paths are taken from the file's folder. Unknown keys are errors.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway._errors import GatewayError
from gateway.identity import AGENCY_URI_PREFIX
from signer import x5t_s256_of_certificate

__all__ = ["AgencyIdentity", "ConsoleConfig", "ConsoleConfigError"]

_SECTIONS = {
    "console": {"listen", "region", "tls_certificate", "tls_private_key"},
    "gateway": {"address", "ca_file"},
    "portal": {"certificate", "private_key"},
    "oversight": {"certificate", "private_key"},
    "registry": {"snapshot_file", "trusted_root"},
}


class ConsoleConfigError(GatewayError):
    """The console's configuration cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class AgencyIdentity:
    """One TLS client identity of the console: an agency of its region."""

    agency: str  # the registry id its certificate names (urn:tongban:agency:<id>)
    certificate_chain: bytes  # PEM
    private_key: bytes  # PEM
    thumbprint: str  # x5t#S256 of the leaf certificate: what a token is bound to

    @classmethod
    def from_files(cls, certificate: Path, private_key: Path, where: str) -> AgencyIdentity:
        try:
            chain = certificate.read_bytes()
            key = private_key.read_bytes()
            leaf = x509.load_pem_x509_certificates(chain)[0]
            uris = leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)
        except (OSError, ValueError, IndexError, x509.ExtensionNotFound) as exc:
            raise ConsoleConfigError(
                f"{where}: {certificate} is not a readable agency certificate ({exc})"
            ) from exc
        agencies = [
            u.removeprefix(AGENCY_URI_PREFIX) for u in uris if u.startswith(AGENCY_URI_PREFIX)
        ]
        if len(agencies) != 1:
            raise ConsoleConfigError(
                f"{where}: {certificate} names no agency (a SAN URI {AGENCY_URI_PREFIX}<id>)"
            )
        return cls(agencies[0], chain, key, x5t_s256_of_certificate(leaf))


@dataclass(frozen=True)
class ConsoleConfig:
    listen_host: str
    listen_port: int
    region: str
    gateway_address: str
    ca_file: Path
    portal: AgencyIdentity
    oversight: AgencyIdentity
    snapshot_file: Path
    trusted_root: Path
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None

    @property
    def over_tls(self) -> bool:
        return self.tls_certificate is not None

    @classmethod
    def from_file(cls, path: Path) -> ConsoleConfig:
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConsoleConfigError(f"{path}: cannot be read as TOML ({exc})") from exc
        return cls.from_table(table, path)

    @classmethod
    def from_table(cls, table: dict[str, Any], path: Path) -> ConsoleConfig:
        base = path.parent
        for section, value in table.items():
            if section not in _SECTIONS or not isinstance(value, dict):
                raise ConsoleConfigError(f"{path}: unknown section [{section}]")
            for key in value:
                if key not in _SECTIONS[section]:
                    raise ConsoleConfigError(f"{path}: unknown key {section}.{key}")

        def text(section: str, key: str, required: bool = True) -> str:
            value = table.get(section, {}).get(key, "")
            if not isinstance(value, str) or (required and not value):
                raise ConsoleConfigError(f"{path}: {section}.{key} must be a non-empty string")
            return value

        def file(section: str, key: str) -> Path:
            found = base / text(section, key)
            if not found.is_file():
                raise ConsoleConfigError(f"{path}: {section}.{key}: {found} is not a file")
            return found

        host, _, port = text("console", "listen").rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ConsoleConfigError(f"{path}: console.listen must be host:port")
        region = text("console", "region")
        if not (len(region) == 6 and region.isascii() and region.isdigit()):
            raise ConsoleConfigError(f"{path}: console.region must be a GB/T 2260 code")
        tls = (text("console", "tls_certificate", False), text("console", "tls_private_key", False))
        if bool(tls[0]) != bool(tls[1]):
            raise ConsoleConfigError(
                f"{path}: console.tls_certificate and console.tls_private_key go together"
            )
        identities = {
            name: AgencyIdentity.from_files(
                file(name, "certificate"), file(name, "private_key"), f"{path}: [{name}]"
            )
            for name in ("portal", "oversight")
        }
        return cls(
            listen_host=host.strip("[]"),
            listen_port=int(port),
            region=region,
            gateway_address=text("gateway", "address"),
            ca_file=file("gateway", "ca_file"),
            portal=identities["portal"],
            oversight=identities["oversight"],
            snapshot_file=file("registry", "snapshot_file"),
            trusted_root=file("registry", "trusted_root"),
            tls_certificate=file("console", "tls_certificate") if tls[0] else None,
            tls_private_key=file("console", "tls_private_key") if tls[1] else None,
        )
