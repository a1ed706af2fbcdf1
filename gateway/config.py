"""Gateway configuration: TOML loaded into a frozen, typed object.

Paths are relative to the configuration file. Secrets (the TLS key passphrase) come from a file
or an environment variable named in the configuration, never from the file itself. Unknown keys
are errors, so a typo never silently falls back to a default.

    [gateway]
    region = "330000"                 # GB/T 2260 code of the region this gateway serves
    listen = "127.0.0.1:7330"         # host:port for gRPC (mutual TLS)
    grace_seconds = 5                 # graceful-stop grace period

    [tls]
    certificate = "pki/regions/330000/keys/tls-ab12cd34.pem"   # leaf, then intermediate
    private_key = "pki/regions/330000/keys/tls-ab12cd34.key"
    passphrase_file = ""              # optional: file holding the key passphrase
    passphrase_env = ""               # optional: environment variable holding it

    [registry]
    authority_public_key = "pki/authority/authority.pub.pem"
    snapshot_file = "published/current.jws"   # optional: file that publishes write to
    follow = ""                       # optional: host:port of a peer gateway to follow (Watch)
    bootstrap_ca_file = ""            # optional: CA bundle trusted until a registry is held
    poll_seconds = 2.0

    [[seal.keys]]                     # optional, repeatable: the region's e-seal keys held here
    certificate = "pki/regions/330000/keys/seal-ef56ab78.pem"  # leaf, then intermediate
    private_key = "pki/regions/330000/keys/seal-ef56ab78.key"  # same passphrase as [tls]

`Credentials.Seal` signs with whichever of these keys the current registry names as the region's
active seal key, so list the successor as soon as a rotation issues it (pending): the gateway
switches to it by itself when a publish activates it. A gateway without seal keys still serves
`Credentials.Verify`; its `Seal` answers UNAVAILABLE (SEAL_KEY_UNAVAILABLE).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from registry import PROVINCES, Inventory, KeyLifecycleError, KeyState, KeyUsage
from registry._pki import ROOTS_BUNDLE

__all__ = ["GatewayConfig", "read_passphrase"]


def read_passphrase(passphrase_file: Path | None, passphrase_env: str | None) -> bytes | None:
    """A key passphrase from a file or an environment variable (never from a command line)."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(
                f"{passphrase_file}: passphrase file cannot be read ({exc.strerror})"
            ) from exc
    if passphrase_env:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise ConfigError(
                f"environment variable {passphrase_env} (the key passphrase) is not set"
            )
        return value.encode()
    return None


class _Section:
    def __init__(self, file: Path, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: [{name}] must be a table")
        self.file, self.name, self.data = file, name, data
        self.used: set[str] = set()

    def _raw(self, key: str, required: bool) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.file}: {self.name}.{key}: missing required key")
            return None
        return self.data[key]

    def text(self, key: str, *, required: bool = True) -> str:
        value = self._raw(key, required)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{self.file}: {self.name}.{key}: must be a string")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._raw(key, False)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(f"{self.file}: {self.name}.{key}: must be a positive number")
        return float(value)

    def optional_path(self, key: str) -> Path | None:
        value = self.text(key, required=False)
        if not value:
            return None
        return self.required_path(key)

    def required_path(self, key: str) -> Path:
        p = Path(self.text(key))
        return p if p.is_absolute() else (self.file.parent / p)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.file}: {self.name}.{unknown[0]}: unknown key")


@dataclass(frozen=True)
class GatewayConfig:
    region: str
    listen: str
    tls_certificate: Path
    tls_private_key: Path
    authority_public_key: Path
    snapshot_file: Path | None = None
    follow: str = ""
    bootstrap_ca_file: Path | None = None
    poll_seconds: float = 2.0
    grace_seconds: float = 5.0
    tls_passphrase: bytes | None = field(default=None, repr=False)
    # (certificate chain, private key) of each seal key held; the TLS passphrase opens them.
    seal_keys: tuple[tuple[Path, Path], ...] = ()

    def __post_init__(self) -> None:
        if self.region not in PROVINCES:
            raise ConfigError(
                f"gateway.region: {self.region!r} is not a GB/T 2260 province-level code"
            )
        host, sep, port = self.listen.rpartition(":")
        if (
            not sep
            or not host
            or not (port.isascii() and port.isdigit())
            or not 0 <= int(port) <= 65535
        ):
            raise ConfigError(f"gateway.listen: {self.listen!r} is not host:port")
        if self.snapshot_file is None and not self.follow:
            raise ConfigError(
                "registry: give snapshot_file, follow, or both: the gateway needs a registry"
            )

    @classmethod
    def from_file(cls, path: Path) -> GatewayConfig:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
        unknown = sorted(set(document) - {"gateway", "tls", "registry", "seal"})
        if unknown:
            raise ConfigError(f"{path}: [{unknown[0]}]: unknown section")
        gw = _Section(path, "gateway", document.get("gateway", {}))
        tls = _Section(path, "tls", document.get("tls", {}))
        reg = _Section(path, "registry", document.get("registry", {}))
        seal = _Section(path, "seal", document.get("seal", {}))
        try:
            passphrase_file = tls.optional_path("passphrase_file")
            passphrase_env = tls.text("passphrase_env", required=False)
            try:
                passphrase = read_passphrase(passphrase_file, passphrase_env)
            except ConfigError as exc:
                key = "passphrase_file" if passphrase_file is not None else "passphrase_env"
                raise ConfigError(f"tls.{key}: {exc}") from None
            config = cls(
                region=gw.text("region"),
                listen=gw.text("listen"),
                grace_seconds=gw.number("grace_seconds", 5.0),
                tls_certificate=tls.required_path("certificate"),
                tls_private_key=tls.required_path("private_key"),
                tls_passphrase=passphrase,
                authority_public_key=reg.required_path("authority_public_key"),
                snapshot_file=reg.optional_path("snapshot_file"),
                follow=reg.text("follow", required=False),
                bootstrap_ca_file=reg.optional_path("bootstrap_ca_file"),
                poll_seconds=reg.number("poll_seconds", 2.0),
                seal_keys=_seal_keys(path, seal),
            )
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(
                message if message.startswith(str(path)) else f"{path}: {message}"
            ) from None
        for section in (gw, tls, reg, seal):
            section.done()
        if config.snapshot_file is None and config.bootstrap_ca_file is None:
            # Until it holds a registry, a follow-only gateway has no CA to trust its peer with.
            raise ConfigError(
                f"{path}: registry.bootstrap_ca_file: required when the gateway only follows a "
                "peer (no snapshot_file): it is the CA bundle trusted until a registry is held"
            )
        return config

    @classmethod
    def for_dev_pki(
        cls,
        pki_root: Path,
        region: str,
        *,
        listen: str,
        snapshot_file: Path | None,
        follow: str = "",
        passphrase: bytes | None = None,
        bootstrap_ca_file: Path | None = None,
    ) -> GatewayConfig:
        """A configuration from a development PKI folder: the region's active TLS key, and every
        seal key of the region that is not revoked (pending ones too, so that a rotation is
        picked up when the registry activates the successor)."""
        try:
            inventory = Inventory.load(pki_root)
        except KeyLifecycleError as exc:
            raise ConfigError(str(exc)) from exc
        active = inventory.find(region, KeyUsage.TLS, KeyState.ACTIVE)
        if not active:
            raise ConfigError(f"{pki_root}: region {region} has no active TLS key in the inventory")
        record = active[-1]
        seal_keys = tuple(
            (pki_root / r.certificate, pki_root / r.private_key)
            for r in inventory.find(region, KeyUsage.SEAL)
            if r.state is not KeyState.REVOKED
        )
        return cls(
            region=region,
            listen=listen,
            tls_certificate=pki_root / record.certificate,
            tls_private_key=pki_root / record.private_key,
            tls_passphrase=passphrase,
            authority_public_key=pki_root / "authority" / "authority.pub.pem",
            snapshot_file=snapshot_file,
            follow=follow,
            bootstrap_ca_file=bootstrap_ca_file or _existing(pki_root / ROOTS_BUNDLE),
            seal_keys=seal_keys,
        )


def _seal_keys(file: Path, seal: _Section) -> tuple[tuple[Path, Path], ...]:
    """The `[[seal.keys]]` array: (certificate, private key) pairs, each key checked."""
    entries = seal._raw("keys", required=False)
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ConfigError(f"{file}: seal.keys: must be an array of tables ([[seal.keys]])")
    pairs = []
    for number, data in enumerate(entries):
        entry = _Section(file, f"seal.keys[{number}]", data)
        pairs.append((entry.required_path("certificate"), entry.required_path("private_key")))
        entry.done()
    return tuple(pairs)


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None
