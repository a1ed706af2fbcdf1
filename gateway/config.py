"""Gateway configuration: TOML loaded into a frozen, typed object.

Paths are relative to the configuration file. Secrets (the TLS key passphrase) come from a file
or an environment variable named in the configuration, never from the file itself. Unknown keys
are errors, so a typo never silently falls back to a default.

    [gateway]
    region = "330000"                 # GB/T 2260 code of the region this gateway serves
    listen = "127.0.0.1:7330"         # host:port for gRPC (mutual TLS)
    grace_seconds = 5                 # graceful-stop grace period
    metrics_listen = "127.0.0.1:8330" # optional: host:port for /metrics, /healthz, /readyz

    [tls]
    certificate = "pki/regions/330000/keys/tls-ab12cd34.pem"   # leaf, then intermediate
    private_key = "pki/regions/330000/keys/tls-ab12cd34.key"
    passphrase_file = ""              # optional: file holding the key passphrase
    passphrase_env = ""               # optional: environment variable holding it

    [registry]
    trusted_root = "pki/authority/root.json"  # the authority keys and threshold (or, as before,
                                      # authority_public_key = "authority.pub.pem": 1 of 1)
    snapshot_file = "published/current.jws"   # optional: file that publishes write to
    follow = ""                       # optional: host:port of a peer gateway to follow (Watch)
    bootstrap_ca_file = ""            # optional: CA bundle trusted until a registry is held
    poll_seconds = 2.0

    [[seal.keys]]                     # optional, repeatable: the region's e-seal keys held here
    certificate = "pki/regions/330000/keys/seal-ef56ab78.pem"  # leaf, then intermediate
    private_key = "pki/regions/330000/keys/seal-ef56ab78.key"  # same passphrase as [tls]
    # or a key in a cryptographic module, by its PKCS#11 URI (RFC 7512; the PIN from a file or
    # an environment variable, never written here):
    # private_key = "pkcs11:token=tongban;object=seal-2026?module-path=/usr/lib/softhsm/libsofthsm2.so&x-pin-env=TONGBAN_HSM_PIN"
    eseal = ""                        # optional, SM2 keys: the SESeal (default: <certificate>.esl)

    [audit]                           # optional: without it nothing is recorded, Oversight is off
    store = "sqlite"                  # "sqlite" | "postgres" | "memory" (tests and demos only)
    path = "audit-330000.db"          # sqlite: the log file
    dsn_env = "TONGBAN_AUDIT_DSN"     # postgres: environment variable holding the DSN
    owner_dsn_env = ""                # postgres: the schema owner's DSN, to create/migrate it
    schema = "tongban_audit"          # postgres schema
    key = "pki/regions/330000/keys/audit-0a1b2c3d.key"   # Ed25519 checkpoint key ([tls] passphrase), or a pkcs11: URI
    pseudonym_key_file = "secrets/audit-pseudonym.key"   # or pseudonym_key_env: >= 16 bytes
    origin = ""                       # the log's name in checkpoints, and its key's (default audit.tongban/<region>; no spaces or +)
    checkpoint_every_records = 1000
    checkpoint_every_seconds = 60
    append_timeout_seconds = 2.0      # an append not durable by then is refused (AUDIT_UNAVAILABLE)

    [exchange]                        # optional: serve DataExchange and Peer (needs [audit])
    provider = "127.0.0.1:9330"       # the province's own data system (DataProvider.Fetch)
    redis_url_env = "TONGBAN_REDIS"   # optional: Redis for the cache, the replay window and
                                      # quotas, shared by replicas (else in memory: one replica)
    cache_key_file = "secrets/cache.key"   # or cache_key_env: the AES-256 key, 64 hex digits
    redis_timeout_seconds = 0.25      # bound on one Redis call (replay window, quota, report, cache)
    provider_timeout_seconds = 2.0    # bound on one call to the data system (retry included)
    peer_timeout_seconds = 5.0        # bound on one call to a peer gateway (also the caller's deadline)
    tracker_peer_timeout_seconds = 3.0  # bound on one region's part of a Tracker.Trail (Peer.SubjectTrail)
    breaker_failures = 3              # failures or timeouts of a dependency that open its breaker
    breaker_window_seconds = 10.0     # ... when they fall within this many seconds, no success between
    breaker_open_seconds = 2.0        # an open breaker refuses (or falls back) this long, then one trial
    consent_status_seconds = 30       # another region's answer on a consent's revocation is kept this long

    [peers]                           # optional: endpoints overriding the registry's (dev)
    "510000" = "127.0.0.1:7510"

    [revocation]                      # optional: certificates' own OCSP responders and CRLs
    online = true                     # ask the OCSP responders (AIA) and CRL URLs (CRL DP) that
                                      # certificates name, besides the registry's CRLs
    timeout_seconds = 5.0             # bound on one request to a responder or CRL URL (and on
                                      # each step of a peer's probe handshake)
    unreachable = "hard-fail"         # a TLS caller, or a called peer's server certificate, whose
                                      # status cannot be learnt: "hard-fail" refuses it
                                      # (REVOCATION_UNAVAILABLE), "soft-fail" admits it (logged,
                                      # counted); seals are always hard-fail

    [cases]                           # optional: cross-region cases (docs/cases.md)
    bind_queries = true               # a query for a conditional (有条件共享) dataset must name an
                                      # open case the asking agency handles for that applicant
    max_material_bytes = 4194304      # bound on one material of a case (at most 12 MiB)

    [timestamp]                       # optional: RFC 3161 time-stamps (docs/security.md)
    url = "http://tsa.example.gov.cn/tsr"   # the TSA: seals and checkpoints are time-stamped
    tsa_certificates = "pki/tsa-roots.pem"  # PEM: anchors a TSA's chain must end at (validation too)
    timeout_seconds = 5.0             # bound on one request; a seal is then made without one

`Credentials.Seal` signs with whichever of these keys the current registry names as the region's
active seal key, so list the successor as soon as a rotation issues it (pending): the gateway
switches to it by itself when a publish activates it. A gateway without seal keys still serves
`Credentials.Verify`; its `Seal` answers UNAVAILABLE (SEAL_KEY_UNAVAILABLE).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway._endpoints import _check_host_port, _is_endpoint
from gateway.cases._config import CasesConfig
from gateway.errors import ConfigError
from gateway.provider._net import is_loopback
from gateway.timestamps import TimestampConfig
from registry import PROVINCES
from signer import KeyReference, SignerError, key_reference

__all__ = [
    "AuditConfig",
    "CasesConfig",
    "ExchangeConfig",
    "GatewayConfig",
    "RevocationConfig",
    "TimestampConfig",
    "names_dev_pki",
    "read_config_file",
    "read_passphrase",
]


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

    def key(self, key: str) -> KeyReference:
        """A private key: a file path (relative to the configuration file) or a PKCS#11 URI
        of a key in a cryptographic module (docs/operators.md, "Keys in a cryptographic module")."""
        try:
            return key_reference(self.text(key), self.file.parent)
        except SignerError as exc:
            raise ConfigError(f"{self.file}: {self.name}.{key}: {exc}") from exc

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.file}: {self.name}.{unknown[0]}: unknown key")


AUDIT_STORES = ("sqlite", "postgres", "memory")
MIN_PSEUDONYM_KEY_BYTES = 16  # bytes of the key that turns subject ids into pseudonyms


@dataclass(frozen=True)
class AuditConfig:
    """Where the audit log lives and the keys it needs (see the module docstring)."""

    store: str
    key: KeyReference  # the gateway's Ed25519 audit key (a file or a PKCS#11 URI)
    pseudonym_key: bytes = field(repr=False)
    path: Path | None = None
    dsn: str = field(default="", repr=False)  # may hold a password
    owner_dsn: str = field(default="", repr=False)
    schema: str = "tongban_audit"
    origin: str = ""
    checkpoint_every_records: int = 1000
    checkpoint_every_seconds: float = 60.0
    append_timeout_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.store not in AUDIT_STORES:
            raise ConfigError(
                f"audit.store: {self.store!r} is not one of {', '.join(AUDIT_STORES)}"
            )
        if self.store == "sqlite" and self.path is None:
            raise ConfigError("audit.path: the SQLite audit store needs a file")
        if self.store == "postgres" and not self.dsn:
            raise ConfigError("audit.dsn_env: the PostgreSQL audit store needs a DSN")
        if len(self.pseudonym_key) < MIN_PSEUDONYM_KEY_BYTES:
            raise ConfigError(
                f"audit.pseudonym_key: at least {MIN_PSEUDONYM_KEY_BYTES} bytes are needed"
            )
        if self.checkpoint_every_records < 1:
            raise ConfigError("audit.checkpoint_every_records: at least 1")


def _audit(file: Path, section: _Section) -> AuditConfig | None:
    if not section.data:
        return None

    def secret(name: str) -> str:
        variable = section.text(name, required=False)
        if not variable:
            return ""
        value = os.environ.get(variable)
        if value is None:
            raise ConfigError(f"audit.{name}: environment variable {variable} is not set")
        return value

    key_file = section.optional_path("pseudonym_key_file")
    key_env = section.text("pseudonym_key_env", required=False)
    if (key_file is None) == (not key_env):
        raise ConfigError("audit: give exactly one of pseudonym_key_file and pseudonym_key_env")
    pseudonym_key = read_passphrase(key_file, key_env) or b""
    every = section._raw("checkpoint_every_records", False)
    origin = section.text("origin", required=False)
    if origin and any(c.isspace() or c == "+" for c in origin):
        # The origin is also the checkpoint key's name, and a signed-note key name has neither.
        raise ConfigError(f"{file}: audit.origin: no white space and no '+' (it names the key)")
    return AuditConfig(
        store=section.text("store"),
        key=section.key("key"),
        pseudonym_key=pseudonym_key,
        path=section.optional_path("path"),
        dsn=secret("dsn_env"),
        owner_dsn=secret("owner_dsn_env"),
        schema=section.text("schema", required=False) or "tongban_audit",
        origin=origin,
        checkpoint_every_records=every
        if isinstance(every, int) and not isinstance(every, bool)
        else 1000,
        checkpoint_every_seconds=section.number("checkpoint_every_seconds", 60.0),
        append_timeout_seconds=section.number("append_timeout_seconds", 2.0),
    )


@dataclass(frozen=True)
class ExchangeConfig:
    """The query path: the region's data system, and where shared state lives."""

    cache_key: bytes = field(repr=False)  # 32 bytes
    provider: str = ""
    redis_url: str = field(default="", repr=False)  # may hold a password
    redis_timeout_seconds: float = 0.25
    provider_timeout_seconds: float = 2.0
    peer_timeout_seconds: float = 5.0
    tracker_peer_timeout_seconds: float = 3.0
    breaker_failures: int = 3
    breaker_window_seconds: float = 10.0
    breaker_open_seconds: float = 2.0
    consent_status_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.breaker_failures < 1:
            raise ConfigError("exchange.breaker_failures: at least 1")
        if len(self.cache_key) != 32:
            raise ConfigError("exchange.cache_key: the cache key is 32 bytes (64 hex digits)")
        if self.provider:
            _check_host_port("exchange.provider", self.provider, any_port=False)
            if not is_loopback(self.provider):
                raise ConfigError(
                    f"exchange.provider: {self.provider!r} is not a loopback address: the data "
                    "system is called without TLS, so it runs on this machine (127.0.0.1, [::1], "
                    "localhost)"
                )


REVOCATION_POLICIES = ("hard-fail", "soft-fail")


@dataclass(frozen=True)
class RevocationConfig:
    """Online revocation checking (docs/security.md, "Revocation"). Seals are always hard-fail:
    a seal whose signer's status cannot be learnt is INDETERMINATE / TRY_LATER."""

    online: bool = True
    timeout_seconds: float = 5.0
    unreachable: str = "hard-fail"

    def __post_init__(self) -> None:
        if self.unreachable not in REVOCATION_POLICIES:
            raise ConfigError(
                f"revocation.unreachable: {self.unreachable!r} is not one of "
                f"{', '.join(REVOCATION_POLICIES)}"
            )


def _revocation(section: _Section) -> RevocationConfig:
    online = section._raw("online", False)
    if online is not None and not isinstance(online, bool):
        raise ConfigError(f"{section.file}: revocation.online: must be true or false")
    return RevocationConfig(
        online=True if online is None else online,
        timeout_seconds=section.number("timeout_seconds", 5.0),
        unreachable=section.text("unreachable", required=False) or "hard-fail",
    )


def _cases(section: _Section) -> CasesConfig:
    bind = section._raw("bind_queries", False)
    if bind is not None and not isinstance(bind, bool):
        raise ConfigError(f"{section.file}: cases.bind_queries: must be true or false")
    limit = section._raw("max_material_bytes", False)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise ConfigError(f"{section.file}: cases.max_material_bytes: a whole number of bytes")
    defaults = CasesConfig()
    return CasesConfig(
        bind_queries=defaults.bind_queries if bind is None else bind,
        max_material_bytes=defaults.max_material_bytes if limit is None else limit,
    )


def _timestamp(section: _Section) -> TimestampConfig:
    return TimestampConfig(
        section.required_path("tsa_certificates"),
        section.text("url", required=False),
        section.number("timeout_seconds", 5.0),
    )


def _hex_key(raw: bytes | None, where: str) -> bytes:
    try:
        return bytes.fromhex((raw or b"").decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{where}: the cache key is 64 hex digits") from exc


def _exchange(file: Path, section: _Section) -> ExchangeConfig | None:
    if not section.data:
        return None
    key_file = section.optional_path("cache_key_file")
    key_env = section.text("cache_key_env", required=False)
    if (key_file is None) == (not key_env):
        raise ConfigError("exchange: give exactly one of cache_key_file and cache_key_env")
    redis_env = section.text("redis_url_env", required=False)
    redis_url = ""
    if redis_env:
        value = os.environ.get(redis_env)
        if value is None:
            raise ConfigError(
                f"exchange.redis_url_env: environment variable {redis_env} is not set"
            )
        redis_url = value
    failures = section._raw("breaker_failures", False)
    if failures is not None and (
        isinstance(failures, bool) or not isinstance(failures, int) or failures < 1
    ):
        raise ConfigError(f"{file}: exchange.breaker_failures: a whole number, at least 1")
    return ExchangeConfig(
        cache_key=_hex_key(read_passphrase(key_file, key_env), "exchange.cache_key"),
        provider=section.text("provider", required=False),
        redis_url=redis_url,
        redis_timeout_seconds=section.number("redis_timeout_seconds", 0.25),
        provider_timeout_seconds=section.number("provider_timeout_seconds", 2.0),
        peer_timeout_seconds=section.number("peer_timeout_seconds", 5.0),
        tracker_peer_timeout_seconds=section.number("tracker_peer_timeout_seconds", 3.0),
        breaker_failures=failures if isinstance(failures, int) else 3,
        breaker_window_seconds=section.number("breaker_window_seconds", 10.0),
        breaker_open_seconds=section.number("breaker_open_seconds", 2.0),
        consent_status_seconds=section.number("consent_status_seconds", 30.0),
    )


def _peers(file: Path, data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise ConfigError(f'{file}: [peers] must be a table of region = "host:port"')
    for region, endpoint in data.items():
        if region not in PROVINCES or not isinstance(endpoint, str) or not _is_endpoint(endpoint):
            raise ConfigError(f'{file}: peers.{region}: give a GB/T 2260 code = "host:port"')
    return dict(data)


@dataclass(frozen=True)
class GatewayConfig:
    region: str
    listen: str
    tls_certificate: Path
    tls_private_key: Path
    authority_public_key: Path | None = None  # the 1-of-1 root of one key (before roots)
    trusted_root: Path | None = None  # root.json: authority keys and threshold
    snapshot_file: Path | None = None
    follow: str = ""
    bootstrap_ca_file: Path | None = None
    poll_seconds: float = 2.0
    grace_seconds: float = 5.0
    tls_passphrase: bytes | None = field(default=None, repr=False)
    # (certificate chain, private key) of each seal key held; the TLS passphrase opens them.
    seal_keys: tuple[tuple[Path, KeyReference], ...] = ()
    # (certificate chain, SESeal) of the SM2 seal keys whose seal is named (`eseal`); an SM2 key
    # not listed here uses the seal beside its certificate, <certificate>.esl.
    seal_eseals: tuple[tuple[Path, Path], ...] = ()
    audit: AuditConfig | None = None
    exchange: ExchangeConfig | None = None
    peers: Mapping[str, str] = field(default_factory=dict)
    # host:port of the plain-HTTP /metrics, /healthz and /readyz endpoint ("" = none)
    metrics_listen: str = ""
    revocation: RevocationConfig = field(default_factory=RevocationConfig)
    timestamp: TimestampConfig | None = None
    cases: CasesConfig = field(default_factory=CasesConfig)

    def __post_init__(self) -> None:
        if self.region not in PROVINCES:
            raise ConfigError(
                f"gateway.region: {self.region!r} is not a GB/T 2260 province-level code"
            )
        _check_host_port("gateway.listen", self.listen)
        if self.metrics_listen:
            _check_host_port("gateway.metrics_listen", self.metrics_listen)
        if self.follow:
            _check_host_port("registry.follow", self.follow, any_port=False)
        for region, endpoint in self.peers.items():
            _check_host_port(f"peers.{region}", endpoint, any_port=False)
        if self.snapshot_file is not None and self.snapshot_file.is_dir():
            raise ConfigError(
                f"registry.snapshot_file: {self.snapshot_file} is a folder, not a snapshot file"
            )
        if (self.trusted_root is None) == (self.authority_public_key is None):
            raise ConfigError(
                "registry.trusted_root: give it (or, for one authority key, "
                "registry.authority_public_key), exactly one of them"
            )
        if self.snapshot_file is None and not self.follow:
            raise ConfigError(
                "registry: give snapshot_file, follow, or both: the gateway needs a registry"
            )

    @property
    def trust_anchor(self) -> Path:
        """The file the gateway's trust in snapshots starts from: root.json or one key PEM."""
        anchor = self.trusted_root or self.authority_public_key
        assert anchor is not None  # __post_init__ saw to it
        return anchor

    @classmethod
    def from_file(cls, path: Path) -> GatewayConfig:
        return cls.from_document(path, read_config_file(path))

    @classmethod
    def from_document(cls, path: Path, document: dict[str, Any]) -> GatewayConfig:
        """The configuration `read_config_file(path)` read. A development file (`[gateway]
        dev_pki`) is the demo package's to read (`gateway.demo.config`), as `tongban gateway
        serve` does: the serving path holds no development code."""
        gw = _Section(path, "gateway", document.get("gateway", {}))
        if names_dev_pki(document):
            raise ConfigError(
                f"{path}: [gateway] dev_pki: a development configuration, read by "
                "`tongban gateway serve` (gateway.demo.config.load_config)"
            )
        tls = _Section(path, "tls", document.get("tls", {}))
        reg = _Section(path, "registry", document.get("registry", {}))
        seal = _Section(path, "seal", document.get("seal", {}))
        audit = _Section(path, "audit", document.get("audit", {}))
        exchange = _Section(path, "exchange", document.get("exchange", {}))
        revocation = _Section(path, "revocation", document.get("revocation", {}))
        timestamp = _Section(path, "timestamp", document.get("timestamp", {}))
        cases = _Section(path, "cases", document.get("cases", {}))
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
                metrics_listen=gw.text("metrics_listen", required=False),
                tls_certificate=tls.required_path("certificate"),
                tls_private_key=tls.required_path("private_key"),
                tls_passphrase=passphrase,
                authority_public_key=reg.optional_path("authority_public_key"),
                trusted_root=reg.optional_path("trusted_root"),
                snapshot_file=reg.optional_path("snapshot_file"),
                follow=reg.text("follow", required=False),
                bootstrap_ca_file=reg.optional_path("bootstrap_ca_file"),
                poll_seconds=reg.number("poll_seconds", 2.0),
                seal_keys=_seal_keys(path, seal),
                seal_eseals=_seal_eseals(path, seal),
                audit=_audit(path, audit),
                exchange=_exchange(path, exchange),
                peers=_peers(path, document.get("peers", {})),
                revocation=_revocation(revocation),
                timestamp=_timestamp(timestamp) if timestamp.data else None,
                cases=_cases(cases),
            )
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(
                message if message.startswith(str(path)) else f"{path}: {message}"
            ) from None
        for section in (gw, tls, reg, seal, audit, exchange, revocation, timestamp, cases):
            section.done()
        if config.snapshot_file is None and config.bootstrap_ca_file is None:
            # Until it holds a registry, a follow-only gateway has no CA to trust its peer with.
            raise ConfigError(
                f"{path}: registry.bootstrap_ca_file: required when the gateway only follows a "
                "peer (no snapshot_file): it is the CA bundle trusted until a registry is held"
            )
        return config


def read_config_file(path: Path) -> dict[str, Any]:
    """A configuration file's TOML document, its sections checked against the known ones."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    unknown = sorted(
        set(document)
        - {"gateway", "tls", "registry", "seal", "audit", "exchange", "peers", "revocation"}
        - {"timestamp", "cases"}
    )
    if unknown:
        raise ConfigError(f"{path}: [{unknown[0]}]: unknown section")
    return document


def names_dev_pki(document: Mapping[str, Any]) -> bool:
    """Whether a configuration document is a development one (`[gateway] dev_pki`)."""
    gateway = document.get("gateway", {})
    return isinstance(gateway, Mapping) and "dev_pki" in gateway


def _seal_keys(file: Path, seal: _Section) -> tuple[tuple[Path, KeyReference], ...]:
    """The `[[seal.keys]]` array: (certificate, private key) pairs, each key checked."""
    entries = seal._raw("keys", required=False)
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ConfigError(f"{file}: seal.keys: must be an array of tables ([[seal.keys]])")
    pairs = []
    for number, data in enumerate(entries):
        entry = _Section(file, f"seal.keys[{number}]", data)
        pairs.append((entry.required_path("certificate"), entry.key("private_key")))
        entry.optional_path("eseal")
        entry.done()
    return tuple(pairs)


def _seal_eseals(file: Path, seal: _Section) -> tuple[tuple[Path, Path], ...]:
    """The `eseal` of each `[[seal.keys]]` entry that names one (checked by `_seal_keys`)."""
    named = []
    for number, data in enumerate(seal._raw("keys", required=False) or ()):
        entry = _Section(file, f"seal.keys[{number}]", data)
        eseal = entry.optional_path("eseal")
        if eseal is not None:
            named.append((entry.required_path("certificate"), eseal))
    return tuple(named)
