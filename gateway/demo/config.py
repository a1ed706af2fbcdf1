"""A gateway's configuration from a development PKI folder (`gateway.demo.pki`).

`tongban gateway serve --pki DIR --region CODE` and a configuration file with `[gateway]
dev_pki` (conf/demo/) take every key, certificate and development secret from the dev PKI's
inventory, so that they name no key file. Development only: a deployment's configuration names
its own key files and secrets (`gateway.config`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import (
    AuditConfig,
    CasesConfig,
    ExchangeConfig,
    GatewayConfig,
    _cases,
    _hex_key,
    _peers,
    _Section,
    names_dev_pki,
    read_config_file,
    read_passphrase,
)
from gateway.demo.pki import DEV_CACHE_KEY, DEV_PSEUDONYM_KEY, ROOTS_BUNDLE
from gateway.errors import ConfigError
from registry import (
    Inventory,
    KeyLifecycleError,
    KeyRecord,
    KeyState,
    KeyUsage,
    pki_trusted_root_path,
)

__all__ = ["config_for_dev_pki", "config_from_dev_file", "load_config"]


def load_config(path: Path) -> GatewayConfig:
    """A configuration file, a development one (`[gateway] dev_pki`) included."""
    document = read_config_file(path)
    if names_dev_pki(document):
        return config_from_dev_file(path, document)
    return GatewayConfig.from_document(path, document)


def config_from_dev_file(path: Path, document: dict[str, Any]) -> GatewayConfig:
    """A development configuration: keys, certificates and dev secrets come from a dev
    PKI's inventory (`[gateway] dev_pki`), so the file names no key file; see conf/demo/."""
    gw = _Section(path, "gateway", document.get("gateway", {}))
    unknown = sorted(set(document) - {"gateway", "registry", "audit", "exchange", "peers", "cases"})
    if unknown:
        raise ConfigError(
            f"{path}: [{unknown[0]}]: not with dev_pki (the dev PKI provides the keys)"
        )
    reg = _Section(path, "registry", document.get("registry", {}))
    audit = _Section(path, "audit", document.get("audit", {}))
    exchange = _Section(path, "exchange", document.get("exchange", {}))
    cases = _Section(path, "cases", document.get("cases", {}))
    try:
        redis_env = exchange.text("redis_url_env", required=False)
        redis_url = os.environ.get(redis_env, "") if redis_env else ""
        base = config_for_dev_pki(
            gw.required_path("dev_pki"),
            gw.text("region"),
            listen=gw.text("listen"),
            snapshot_file=reg.optional_path("snapshot_file"),
            follow=reg.text("follow", required=False),
            bootstrap_ca_file=reg.optional_path("bootstrap_ca_file"),
            audit_db=audit.optional_path("path"),
            provider=exchange.text("provider", required=False),
            redis_url=redis_url,
            peers=_peers(path, document.get("peers", {})),
        )
        config = dataclasses.replace(
            base,
            grace_seconds=gw.number("grace_seconds", 5.0),
            poll_seconds=reg.number("poll_seconds", 2.0),
            metrics_listen=gw.text("metrics_listen", required=False),
            cases=_cases(cases),
        )
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None
    for section in (gw, reg, audit, exchange, cases):
        section.done()
    return config


def config_for_dev_pki(
    pki_root: Path,
    region: str,
    *,
    listen: str,
    snapshot_file: Path | None,
    follow: str = "",
    passphrase: bytes | None = None,
    bootstrap_ca_file: Path | None = None,
    audit_db: Path | None = None,
    provider: str = "",
    redis_url: str = "",
    peers: Mapping[str, str] | None = None,
    bind_queries: bool = True,
) -> GatewayConfig:
    """A configuration from a development PKI folder: the region's active TLS key, and every
    seal key of the region that is not revoked (pending ones too, so that a rotation is
    picked up when the registry activates the successor). `bind_queries=False` lets queries
    for conditional datasets name any case id (`[cases] bind_queries`): for the test suites
    that exercise other parts of the query path with made-up case ids, never the demo."""
    try:
        inventory = Inventory.load(pki_root)
    except KeyLifecycleError as exc:
        raise ConfigError(str(exc)) from exc
    active = inventory.find(region, KeyUsage.TLS, KeyState.ACTIVE)
    if not active:
        raise ConfigError(f"{pki_root}: region {region} has no active TLS key in the inventory")
    record = active[-1]
    seal_keys = tuple(
        (pki_root / r.certificate, pki_root / _located(r))
        for r in inventory.find(region, KeyUsage.SEAL)
        if r.state is not KeyState.REVOKED
    )
    return GatewayConfig(
        region=region,
        listen=listen,
        tls_certificate=pki_root / record.certificate,
        tls_private_key=pki_root / _located(record),
        tls_passphrase=passphrase,
        trusted_root=pki_trusted_root_path(pki_root),
        snapshot_file=snapshot_file,
        follow=follow,
        bootstrap_ca_file=bootstrap_ca_file or _existing(pki_root / ROOTS_BUNDLE),
        seal_keys=seal_keys,
        audit=_dev_audit(pki_root, inventory, region, audit_db),
        exchange=ExchangeConfig(
            cache_key=_hex_key(
                read_passphrase(pki_root / DEV_CACHE_KEY, None), str(pki_root / DEV_CACHE_KEY)
            ),
            provider=provider,
            redis_url=redis_url,
        )
        if (pki_root / DEV_CACHE_KEY).exists()
        else None,
        peers=dict(peers or {}),
        cases=CasesConfig(bind_queries=bind_queries),
    )


def _dev_audit(
    pki_root: Path, inventory: Inventory, region: str, audit_db: Path | None
) -> AuditConfig | None:
    """The dev PKI's audit key and pseudonym key; SQLite at `audit_db`, else in memory."""
    keys = inventory.find(region, KeyUsage.AUDIT, KeyState.ACTIVE)
    pseudonym = pki_root / DEV_PSEUDONYM_KEY
    if not keys or not pseudonym.exists():
        return None
    return AuditConfig(
        store="sqlite" if audit_db is not None else "memory",
        path=audit_db,
        key=pki_root / _located(keys[-1]),
        pseudonym_key=read_passphrase(pseudonym, None) or b"",
    )


def _located(record: KeyRecord) -> str:
    """A key this dev PKI folder holds; one imported without its key belongs to a region that
    runs its gateway from its own configuration."""
    try:
        return record.located_private_key()
    except KeyLifecycleError as exc:
        raise ConfigError(f"{exc}: run that region's gateway with --config") from exc


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None
