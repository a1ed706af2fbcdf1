"""Tongban's e-seals and e-signatures.

Key files and providers (`_keyfile`, `_keys`), the algorithm policy (`_algorithms`), JAdES
sealing (`_jades`), and validation with ETSI-style reports (`_verify`, `_report`) against a
`TrustSource` (`_trust`) that the registry implements. Depends on neither `registry` nor
`gateway`.
"""

from signer._algorithms import (
    ALLOWED_ALGORITHMS,
    MIN_RSA_BITS,
    check_key_fits,
    sign_bytes,
    verify_fitted,
    verify_signature,
)
from signer._jades import MAX_JWS_BYTES, JwsFormatError, ParsedJws, parse_compact, seal
from signer._keyfile import (
    PrivateKey,
    PublicKey,
    algorithm_for_key,
    generate_private_key,
    load_private_key,
    write_private_key,
)
from signer._keys import FileKeyProvider, KeyProvider, certificate_thumbprint, der_thumbprint
from signer._report import Check, Indication, SignatureKind, SubIndication, ValidationReport
from signer._trust import TrustedKey, TrustSource
from signer._verify import SealVerifier
from signer.errors import KeyFileError, SealInvalid, SignerError, UnsupportedAlgorithm

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_JWS_BYTES",
    "MIN_RSA_BITS",
    "Check",
    "FileKeyProvider",
    "Indication",
    "JwsFormatError",
    "KeyFileError",
    "KeyProvider",
    "ParsedJws",
    "PrivateKey",
    "PublicKey",
    "SealInvalid",
    "SealVerifier",
    "SignatureKind",
    "SignerError",
    "SubIndication",
    "TrustSource",
    "TrustedKey",
    "UnsupportedAlgorithm",
    "ValidationReport",
    "algorithm_for_key",
    "certificate_thumbprint",
    "check_key_fits",
    "der_thumbprint",
    "generate_private_key",
    "load_private_key",
    "parse_compact",
    "seal",
    "sign_bytes",
    "verify_fitted",
    "verify_signature",
    "write_private_key",
]
