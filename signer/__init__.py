"""Tongban's e-seals and e-signatures.

Key files and providers (`_keyfile`, `_keys`), the algorithm policy (`_algorithms`), JAdES
sealing (`_jades`), validation with ETSI-style reports (`_verify`, `_report`) against a
`TrustSource` (`_trust`) that the registry implements, keys in a cryptographic module over
PKCS#11 (`_pkcs11`, `_pkcs11_keys`, URIs in `_pkcs11_uri`), SM2 with SM3 keys and signatures
(`_sm2`, GB/T 32918.2 with OpenSSL's key formats), and signed JSON (`_signed_json`: the
compact JWS of registry snapshots, access-report batches and request tokens). Depends on neither
`registry` nor `gateway`.

`__all__` is exactly what is used from outside the package (tests/unit/test_surfaces.py).
"""

from signer._algorithms import ALLOWED_ALGORITHMS, sign_bytes, verify_signature
from signer._jades import MAX_JWS_BYTES, JwsFormatError, parse_compact, seal
from signer._keyfile import (
    PrivateKey,
    PublicKey,
    algorithm_for_key,
    generate_private_key,
    load_private_key,
    write_private_key,
)
from signer._keys import FileKeyProvider, KeyProvider, x5t_s256_of_certificate, x5t_s256_of_der
from signer._pkcs11 import (
    PKCS11_MECHANISMS,
    Pkcs11KeyProvider,
    SignatureMechanism,
    generate_pkcs11_key,
    open_pkcs11_key,
)
from signer._pkcs11_keys import KeyReference, key_reference, open_signing_key
from signer._pkcs11_uri import Pkcs11Uri, parse_pkcs11_uri
from signer._report import Indication, SignatureKind, SubIndication, ValidationReport
from signer._signed_json import canonical_json, sign_json, verify_json
from signer._sm2 import (
    SM2_DEFAULT_ID,
    Sm2PrivateKey,
    Sm2PublicKey,
    load_sm2_private_key,
    write_sm2_private_key,
)
from signer._trust import TrustedKey, TrustSource
from signer._verify import SealVerifier
from signer.errors import (
    KeyFileError,
    KeyModuleError,
    Pkcs11UriInvalid,
    SealInvalid,
    SignedJsonAlgorithmRefused,
    SignedJsonExtensionRefused,
    SignedJsonMalformed,
    SignedJsonRefused,
    SignedJsonSignatureInvalid,
    SignedJsonTypeRefused,
    SignedJsonUnsigned,
    SignerError,
    Sm2IdInvalid,
    Sm2KeyInvalid,
    Sm2Refused,
    Sm2SignatureInvalid,
    Sm2SignatureMalformed,
    UnsupportedAlgorithm,
)

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_JWS_BYTES",
    "PKCS11_MECHANISMS",
    "SM2_DEFAULT_ID",
    "FileKeyProvider",
    "Indication",
    "JwsFormatError",
    "KeyFileError",
    "KeyModuleError",
    "KeyProvider",
    "KeyReference",
    "Pkcs11KeyProvider",
    "Pkcs11Uri",
    "Pkcs11UriInvalid",
    "PrivateKey",
    "PublicKey",
    "SealInvalid",
    "SealVerifier",
    "SignatureKind",
    "SignatureMechanism",
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
    "Sm2PrivateKey",
    "Sm2PublicKey",
    "Sm2Refused",
    "Sm2SignatureInvalid",
    "Sm2SignatureMalformed",
    "SubIndication",
    "TrustSource",
    "TrustedKey",
    "UnsupportedAlgorithm",
    "ValidationReport",
    "algorithm_for_key",
    "canonical_json",
    "generate_pkcs11_key",
    "generate_private_key",
    "key_reference",
    "load_private_key",
    "load_sm2_private_key",
    "open_pkcs11_key",
    "open_signing_key",
    "parse_compact",
    "parse_pkcs11_uri",
    "seal",
    "sign_bytes",
    "sign_json",
    "verify_json",
    "verify_signature",
    "write_private_key",
    "write_sm2_private_key",
    "x5t_s256_of_certificate",
    "x5t_s256_of_der",
]
