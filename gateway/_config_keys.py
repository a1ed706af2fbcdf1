"""The table behind the configuration reference (`gateway.config_reference`): every TOML
section and key the loader accepts, with the dataclass field each sets and the description
where the docstring's example says too little. A test runs the real loader and checks that
`KEYS` names exactly the keys it reads."""

from __future__ import annotations

from dataclasses import dataclass

from gateway import config as _config

__all__ = ["KEYS", "SECTIONS", "Config", "Key", "Section"]

Config = type[
    _config.GatewayConfig
    | _config.AuditConfig
    | _config.ExchangeConfig
    | _config.RevocationConfig
    | _config.TimestampConfig
    | _config.CasesConfig
]


@dataclass(frozen=True)
class Section:
    """A TOML section as an operator writes it."""

    name: str  # "gateway", "seal.keys" (an array of tables), ...
    header: str  # how it is written: "[gateway]", "[[seal.keys]]"
    required: str  # "yes", "no", or when
    doc: str = ""  # used when the docstring's example has no comment on the header


@dataclass(frozen=True)
class Key:
    """A TOML key the loader accepts, and the dataclass field it sets (if one alone)."""

    section: str
    name: str
    required: str  # "yes", "no", or when
    field: tuple[Config, str] | None = None  # type and default come from here
    kind: str = ""  # the TOML type when no field gives it
    doc: str = ""  # used instead of the comment in the docstring's example
    dev: bool = False  # also accepted next to `[gateway] dev_pki`


_GW = _config.GatewayConfig
_AU = _config.AuditConfig
_EX = _config.ExchangeConfig
_RV = _config.RevocationConfig
_TS = _config.TimestampConfig
_CS = _config.CasesConfig
_ENV = "string (variable name)"
_TRUST = "one of trusted_root, authority_public_key (not with dev_pki)"
_ROOT_DOC = "the trusted root (root.json): the authority keys, and how many must sign a snapshot"
_KEY_DOC = "one registry authority public key (PEM): the 1-of-1 root of older installations"

SECTIONS: tuple[Section, ...] = (
    Section("gateway", "[gateway]", "yes", "The region this gateway serves and how it listens."),
    Section("tls", "[tls]", "yes (refused with dev_pki)", "The gateway's mutual-TLS key."),
    Section("registry", "[registry]", "yes", "Where the signed registry comes from."),
    Section("seal.keys", "[[seal.keys]]", "no (refused with dev_pki)"),
    Section("audit", "[audit]", "no"),
    Section("exchange", "[exchange]", "no"),
    Section("peers", "[peers]", "no"),
    Section("revocation", "[revocation]", "no"),
    Section("timestamp", "[timestamp]", "no"),
    Section("cases", "[cases]", "no"),
)

KEYS: tuple[Key, ...] = (
    Key("gateway", "region", "yes", (_GW, "region"), dev=True),
    Key("gateway", "listen", "yes", (_GW, "listen"), dev=True),
    Key("gateway", "grace_seconds", "no", (_GW, "grace_seconds"), dev=True),
    Key(
        "gateway",
        "metrics_listen",
        "no",
        (_GW, "metrics_listen"),
        doc="host:port of the plain-HTTP `/metrics`, `/healthz` and `/readyz` endpoint "
        "(no TLS, no authentication: bind it to an internal interface); unset: none",
        dev=True,
    ),
    Key(
        "gateway",
        "dev_pki",
        "no",
        kind="path",
        doc="development only: a dev PKI folder (`tongban pki init`) that provides every key, "
        "certificate and secret; see below for what may stand next to it",
        dev=True,
    ),
    Key(
        "tls",
        "certificate",
        "yes",
        (_GW, "tls_certificate"),
        doc="the gateway's TLS certificate chain (PEM): leaf, then intermediate",
    ),
    Key(
        "tls",
        "private_key",
        "yes",
        (_GW, "tls_private_key"),
        doc="its private key (PKCS#8 PEM, encrypted when a passphrase is given)",
    ),
    Key("tls", "passphrase_file", "no", kind="path"),
    Key(
        "tls",
        "passphrase_env",
        "no",
        kind=_ENV,
        doc="environment variable holding the key passphrase, instead of passphrase_file",
    ),
    Key("registry", "trusted_root", _TRUST, (_GW, "trusted_root"), doc=_ROOT_DOC),
    Key("registry", "authority_public_key", _TRUST, (_GW, "authority_public_key"), doc=_KEY_DOC),
    Key(
        "registry",
        "snapshot_file",
        "snapshot_file, follow or both",
        (_GW, "snapshot_file"),
        doc="the published snapshot (current.jws) to load and watch: a newer valid version "
        "is applied within poll_seconds",
        dev=True,
    ),
    Key("registry", "follow", "snapshot_file, follow or both", (_GW, "follow"), dev=True),
    Key(
        "registry",
        "bootstrap_ca_file",
        "when follow is given without snapshot_file",
        (_GW, "bootstrap_ca_file"),
        dev=True,
    ),
    Key(
        "registry",
        "poll_seconds",
        "no",
        (_GW, "poll_seconds"),
        doc="how often the snapshot file is checked for a new version, in seconds",
        dev=True,
    ),
    Key(
        "seal.keys",
        "certificate",
        "yes, in each entry",
        kind="path",
        doc="an e-seal certificate chain of the region (PEM): leaf, then intermediate",
    ),
    Key(
        "seal.keys",
        "private_key",
        "yes, in each entry",
        kind="path or pkcs11: URI",
        doc="its private key: a file the [tls] passphrase opens (an SM2 key, recognised by its "
        "certificate's curve, is an unencrypted PKCS#8 file), or the PKCS#11 URI of a key in a "
        "cryptographic module (see Keys in a cryptographic module)",
    ),
    Key(
        "seal.keys",
        "eseal",
        "no",
        kind="path",
        doc="for an SM2 key: the region's GB/T 38540 SESeal (DER) that lists it; default "
        "<certificate>.esl, where `tongban keys` writes it",
    ),
    Key("audit", "store", "yes, with [audit]", (_AU, "store")),
    Key("audit", "path", 'when store = "sqlite"', (_AU, "path"), dev=True),
    Key("audit", "dsn_env", 'when store = "postgres"', kind=_ENV),
    Key("audit", "owner_dsn_env", "no", kind=_ENV),
    Key("audit", "schema", "no", (_AU, "schema")),
    Key("audit", "key", "yes, with [audit]", (_AU, "key")),
    Key(
        "audit",
        "pseudonym_key_file",
        "one of pseudonym_key_file, pseudonym_key_env",
        kind="path",
        doc="file holding the key that turns subject ids into pseudonyms in the log (at least "
        "16 bytes); keep a copy: oversight needs it to find a citizen's records",
    ),
    Key(
        "audit",
        "pseudonym_key_env",
        "one of pseudonym_key_file, pseudonym_key_env",
        kind=_ENV,
        doc="environment variable holding the pseudonym key (at least 16 bytes), "
        "instead of pseudonym_key_file",
    ),
    Key("audit", "origin", "no", (_AU, "origin")),
    Key(
        "audit",
        "checkpoint_every_records",
        "no",
        (_AU, "checkpoint_every_records"),
        doc="sign a checkpoint at least every this many records",
    ),
    Key(
        "audit",
        "checkpoint_every_seconds",
        "no",
        (_AU, "checkpoint_every_seconds"),
        doc="sign a checkpoint at least this often, in seconds (and at every stop)",
    ),
    Key(
        "audit",
        "append_timeout_seconds",
        "no",
        (_AU, "append_timeout_seconds"),
        doc="bound on one append, in seconds: a record not durable by then is refused "
        "(UNAVAILABLE, AUDIT_UNAVAILABLE) and counts against the audit store's breaker",
    ),
    Key(
        "exchange",
        "provider",
        "no",
        (_EX, "provider"),
        doc="host:port of the province's data system (DataProvider.Fetch); reached in "
        "plaintext, so only a loopback address is accepted (the gateway refuses to start "
        "otherwise)",
        dev=True,
    ),
    Key("exchange", "redis_url_env", "no", kind=_ENV, dev=True),
    Key(
        "exchange",
        "cache_key_file",
        "one of cache_key_file, cache_key_env",
        kind="path",
        doc="file holding the AES-256 key of the answer cache, 64 hex digits",
    ),
    Key(
        "exchange",
        "cache_key_env",
        "one of cache_key_file, cache_key_env",
        kind=_ENV,
        doc="environment variable holding the AES-256 cache key (64 hex digits), "
        "instead of cache_key_file",
    ),
    Key(
        "exchange",
        "redis_timeout_seconds",
        "no",
        (_EX, "redis_timeout_seconds"),
        doc="bound on one Redis call, in seconds (replay window, quota, cache); "
        "one breaker guards Redis for all of them",
    ),
    Key(
        "exchange",
        "provider_timeout_seconds",
        "no",
        (_EX, "provider_timeout_seconds"),
        doc="bound on one call to the data system, in seconds, its retry included",
    ),
    Key(
        "exchange",
        "peer_timeout_seconds",
        "no",
        (_EX, "peer_timeout_seconds"),
        doc="bound on one call to a peer gateway, in seconds (the caller's deadline, if "
        "shorter, bounds it too); keep it above provider_timeout_seconds + "
        "[audit] append_timeout_seconds, what the peer may take itself",
    ),
    Key(
        "exchange",
        "tracker_peer_timeout_seconds",
        "no",
        (_EX, "tracker_peer_timeout_seconds"),
        doc="bound on one region's part of a Tracker.Trail (Peer.SubjectTrail), in seconds: "
        "a region that has not answered by then is shown as not answered (timeout)",
    ),
    Key(
        "exchange",
        "breaker_failures",
        "no",
        (_EX, "breaker_failures"),
        doc="failures or timeouts of one dependency (Redis, the audit store, a peer region, "
        "the data system) that open its circuit breaker",
    ),
    Key(
        "exchange",
        "breaker_window_seconds",
        "no",
        (_EX, "breaker_window_seconds"),
        doc="the failures count when they fall within this many seconds with no success "
        "between them",
    ),
    Key(
        "exchange",
        "breaker_open_seconds",
        "no",
        (_EX, "breaker_open_seconds"),
        doc="an open breaker refuses at once (PEER_UNAVAILABLE, AUDIT_UNAVAILABLE, "
        "PROVIDER_UNAVAILABLE) or falls back (Redis) this long, then lets one trial call "
        "decide",
    ),
    Key(
        "exchange",
        "consent_status_seconds",
        "no",
        (_EX, "consent_status_seconds"),
        doc="how long another region's answer on whether a consent is revoked is kept: the "
        "bound on how late a revocation is seen here (home unreachable: CONSENT_STATUS_UNAVAILABLE)",
    ),
    Key(
        "peers",
        '"<region code>"',
        "no",
        kind='string, "host:port"',
        doc="the gateway of that region (a GB/T 2260 code), instead of the endpoint the "
        "registry names; any number of them",
        dev=True,
    ),
    Key("revocation", "online", "no", (_RV, "online")),
    Key("revocation", "timeout_seconds", "no", (_RV, "timeout_seconds")),
    Key("revocation", "unreachable", "no", (_RV, "unreachable")),
    Key("timestamp", "url", "no", (_TS, "url")),
    Key("timestamp", "tsa_certificates", "yes, with [timestamp]", (_TS, "tsa_certificates")),
    Key("timestamp", "timeout_seconds", "no", (_TS, "timeout_seconds")),
    Key(
        "cases",
        "bind_queries",
        "no",
        (_CS, "bind_queries"),
        doc="a query for a conditional (有条件共享) dataset must name an open case held here, "
        "with a part the asking agency handles and the subject as its applicant, whose matter "
        "allows the dataset, purpose and fields (CASE_NOT_OPEN, CASE_QUERY_NOT_ALLOWED); the "
        "data owner's gateway decides it again on its own copy of the case. false: any case id "
        "will do, as before cases (test federations only)",
        dev=True,
    ),
    Key(
        "cases",
        "max_material_bytes",
        "no",
        (_CS, "max_material_bytes"),
        doc="bound on one material (or result) of a case, in bytes: a larger one is refused "
        "(MATERIAL_TOO_LARGE); at most 12582912 (12 MiB)",
        dev=True,
    ),
)
