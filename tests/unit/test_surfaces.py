"""Narrow public surfaces: each package's `__all__` is exactly the names used from outside it.

A name joins a package's surface when code outside the package (the other packages, bench/,
tests/, examples/) imports it from the package; it leaves when nothing does any more. Internals
stay importable from their `_module.py` for the package's own modules and its tests.
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("gateway", "registry", "signer", "bench", "tests", "examples")

EXPECTED: dict[str, frozenset[str]] = {
    "gateway.cache": frozenset(
        {
            "AnswerCache",
            "BackendTimeout",
            "BackendUnavailable",
            "CacheBackend",
            "MemoryBackend",
            "RedisBackend",
            "cache_key",
            "redis_key",
        }
    ),
    "signer": frozenset(
        {
            "CertStatus",
            "RevocationDataInvalid",
            "RevocationFetcher",
            "RevocationStatus",
            "RevocationUnavailable",
            "check_crl",
            "check_ocsp_response",
            "ocsp_cert_id",
            "add_validation_data",
            "add_timestamp",
            "b64url_decode",
            "b64url_encode",
            "TimeStampClient",
            "TimeStampUnavailable",
            "proof_of_existence",
            "parse_jws",
            "to_compact",
            "to_json",
            "ALLOWED_ALGORITHMS",
            "MAX_DOCUMENT_BYTES",
            "MAX_JWS_BYTES",
            "DocumentVerifier",
            "FileKeyProvider",
            "Format",
            "GmVerifier",
            "Indication",
            "JwsFormatError",
            "KeyFileError",
            "KeyModuleError",
            "KeyProvider",
            "OfdRefused",
            "OfdVerifier",
            "KeyReference",
            "PKCS11_MECHANISMS",
            "Pkcs11KeyProvider",
            "SignatureMechanism",
            "Pkcs11Uri",
            "Pkcs11UriInvalid",
            "generate_pkcs11_key",
            "key_reference",
            "open_pkcs11_key",
            "open_signing_key",
            "parse_pkcs11_uri",
            "PrivateKey",
            "PublicKey",
            "SM2_DEFAULT_ID",
            "SealInvalid",
            "SealVerifier",
            "SignatureKind",
            "SignedJsonAlgorithmRefused",
            "SignedJsonExtensionRefused",
            "SignedJsonMalformed",
            "SignedJsonRefused",
            "SignedJsonSignatureInvalid",
            "SignedJsonTypeRefused",
            "SignedJsonUnsigned",
            "SignerError",
            "Sm2IdInvalid",
            "Sm2KeyInvalid",
            "Sm2FileSigner",
            "Sm2PrivateKey",
            "Sm2PublicKey",
            "Sm2Refused",
            "Sm2SignatureInvalid",
            "Sm2SignatureMalformed",
            "Sm2Signer",
            "SubIndication",
            "TrustSource",
            "TrustedKey",
            "UnsupportedAlgorithm",
            "ValidationReport",
            "algorithm_for_key",
            "canonical_json",
            "generate_private_key",
            "is_ofd",
            "is_sm2_key",
            "issue_sm2_crl",
            "load_private_key",
            "load_sm2_private_key",
            "make_licence_ofd",
            "make_seal",
            "parse_compact",
            "recognise",
            "seal",
            "seal_ofd",
            "ses_version",
            "sign_bytes",
            "sign_json",
            "sign_with_seal",
            "sm2_public_key_of",
            "verify_json",
            "verify_signature",
            "write_private_key",
            "write_sm2_private_key",
            "x5t_s256_of_certificate",
            "x5t_s256_of_der",
        }
    ),
    "registry": frozenset(
        {
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
        }
    ),
}


@cache
def imported_from_outside(package: str) -> dict[str, frozenset[str]]:
    """name -> the files outside `package` (a folder) that import it from the package itself
    (`from package import name`, or `package.name` after `import package`)."""
    users: dict[str, set[str]] = defaultdict(set)
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            where = str(path.relative_to(REPO))
            if where.startswith(package.replace(".", "/") + "/"):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), where)
            bound = {
                alias.asname or alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
                if alias.name == package
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == package:
                    for alias in node.names:
                        users[alias.name].add(where)
                elif (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in bound
                ):
                    users[node.attr].add(where)
    return {name: frozenset(files) for name, files in users.items()}


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_all_is_the_expected_surface(package: str) -> None:
    promised = importlib.import_module(package).__all__
    assert len(promised) == len(set(promised)), f"{package}.__all__ lists a name twice"
    assert set(promised) == EXPECTED[package], (
        f"{package}.__all__ changed: added {sorted(set(promised) - EXPECTED[package])}, "
        f"removed {sorted(EXPECTED[package] - set(promised))}"
    )


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_every_exported_name_is_used_outside_the_package(package: str) -> None:
    used = imported_from_outside(package)
    unused = sorted(n for n in importlib.import_module(package).__all__ if not used.get(n))
    assert not unused, f"{package} exports names nothing outside it imports: {unused}"


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_nothing_outside_imports_a_public_name_the_package_does_not_promise(package: str) -> None:
    promised = set(importlib.import_module(package).__all__)
    stray = {
        name: sorted(files)
        for name, files in imported_from_outside(package).items()
        if name not in promised
        and not name.startswith("_")  # `from registry import _pki`
        and name not in {"__all__", "__path__"}
    }
    assert not stray, f"imported from {package} without being in its __all__: {stray}"


def test_the_scan_sees_imports_and_attribute_uses() -> None:
    # The scan itself: a known import of each kind is found, with its file.
    assert "gateway/tokens.py" in imported_from_outside("signer")["verify_json"]
    assert "gateway/reports/_format.py" in imported_from_outside("signer")["sign_json"]
    assert "tests/unit/test_public_api.py" in imported_from_outside("signer")["__all__"]
