"""Tongban's trust and governance registry.

Regions, agencies, datasets, purposes, agreements, matters and keys (`_model`), loaded from a
TOML source (`_source`), combined with the PKI's key inventory (`_inventory`), signed and versioned as a
snapshot (`_snapshot` its payload, `_envelope` its multi-signed JWS, `_publish`), trusted by a
root of k-of-n authority keys (`_root`, `_authority`), and held live by each gateway (`_store`). A region's PKI folder, its CAs issuing leaf keys, is `_pki` (certificate profiles in
`_profiles`, CRLs in `_crl`); the key lifecycle steps that issue a key, a first one and a
rotation's successor, are `_keys`. The development PKI that creates a folder for tests and demos
is demo code, `gateway.demo.pki`.

`__all__` is exactly what is used from outside the package (tests/unit/test_surfaces.py).
"""

from registry._authority import (
    TRUSTED_ROOT,
    load_authority_public_key,
    load_trusted_root,
    next_root,
    pki_trusted_root_path,
    read_root,
)
from registry._codes import (
    MAX_REGISTRY_ID_CHARS,
    PROVINCES,
    contains_citizen_id,
    is_region_code,
    is_registry_id,
    is_valid_citizen_id,
    is_valid_uscc,
    province_name,
)
from registry._envelope import (
    SignedSnapshot,
    SnapshotVerifier,
    add_signature,
    sign_snapshot,
    snapshot_payload,
    unsigned_snapshot,
)
from registry._import import import_ca
from registry._import_cert import ImportedKey, import_cert
from registry._import_crl import import_crl
from registry._inventory import Inventory, KeyRecord
from registry._keys import add_key, key_to_rotate, rotate_key
from registry._model import (
    Agency,
    AgencyRole,
    Agreement,
    CacheScope,
    Dataset,
    KeyEntry,
    KeyState,
    KeyUsage,
    Purpose,
    PurposeDataset,
    Region,
    Registry,
    ShareClass,
)
from registry._pki import ModuleKey
from registry._publish import (
    CURRENT_SNAPSHOT,
    PublishResult,
    build_registry,
    install_if_complete,
    publish,
)
from registry._root import AuthorityKey, Root, SignedRoot, sign_root
from registry._snapshot import (
    authority_key_id,
    registry_from_payload,
    registry_to_payload,
)
from registry._source import DEMO_SOURCE, RegistrySource, load_source
from registry._store import FileSnapshotSource, RegistryStatus, RegistryStore
from registry._trust import RegistryTrust
from registry.errors import (
    KeyLifecycleError,
    KeyRefused,
    PkiError,
    RegistryError,
    RegistryStale,
    RegistryUnavailable,
    RootChainBroken,
    RootExpired,
    RootRollback,
    SnapshotBelowThreshold,
    SnapshotDuplicateSigner,
    SnapshotError,
    SnapshotExpired,
    SnapshotFormatError,
    SnapshotRollback,
    SnapshotSignatureInvalid,
    SnapshotSignatureMissing,
    SnapshotUntrustedSigner,
    SourceError,
)

__all__ = [
    "CURRENT_SNAPSHOT",
    "DEMO_SOURCE",
    "MAX_REGISTRY_ID_CHARS",
    "PROVINCES",
    "TRUSTED_ROOT",
    "Agency",
    "AgencyRole",
    "Agreement",
    "AuthorityKey",
    "CacheScope",
    "Dataset",
    "FileSnapshotSource",
    "ImportedKey",
    "Inventory",
    "KeyEntry",
    "KeyLifecycleError",
    "KeyRecord",
    "KeyRefused",
    "KeyState",
    "KeyUsage",
    "ModuleKey",
    "PkiError",
    "PublishResult",
    "Purpose",
    "PurposeDataset",
    "Region",
    "Registry",
    "RegistryError",
    "RegistrySource",
    "RegistryStale",
    "RegistryStatus",
    "RegistryStore",
    "RegistryTrust",
    "RegistryUnavailable",
    "Root",
    "RootChainBroken",
    "RootExpired",
    "RootRollback",
    "ShareClass",
    "SignedRoot",
    "SignedSnapshot",
    "SnapshotBelowThreshold",
    "SnapshotDuplicateSigner",
    "SnapshotError",
    "SnapshotExpired",
    "SnapshotFormatError",
    "SnapshotRollback",
    "SnapshotSignatureInvalid",
    "SnapshotSignatureMissing",
    "SnapshotUntrustedSigner",
    "SnapshotVerifier",
    "SourceError",
    "add_key",
    "add_signature",
    "authority_key_id",
    "build_registry",
    "contains_citizen_id",
    "import_ca",
    "import_cert",
    "import_crl",
    "install_if_complete",
    "is_region_code",
    "is_registry_id",
    "is_valid_citizen_id",
    "is_valid_uscc",
    "key_to_rotate",
    "load_authority_public_key",
    "load_source",
    "load_trusted_root",
    "next_root",
    "pki_trusted_root_path",
    "province_name",
    "publish",
    "read_root",
    "registry_from_payload",
    "registry_to_payload",
    "rotate_key",
    "sign_root",
    "sign_snapshot",
    "snapshot_payload",
    "unsigned_snapshot",
]
