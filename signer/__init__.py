"""Tongban's e-seals and e-signatures.

Key files and providers (`_keyfile`, `_keys`), the algorithm policy (`_algorithms`), JAdES
sealing (`_jades`; `_jades_json` for the JWS JSON serialisation with embedded validation
data), validation with ETSI-style reports (`_verify`, `_report`) against a
`TrustSource` (`_trust`) that the registry implements, SM2 with SM3 keys and signatures
(`_sm2`, GB/T 32918.2 with OpenSSL's key formats), GB/T 38540 / GM/T 0031 electronic seals
(`_ses` makes them, `_ses_verify` validates them, `_ses_asn1` defines their DER), OFD documents
(GB/T 33190: `_ofd_package` reads a package defensively, `_ofd_verify` validates its signatures,
`_ofd_make` makes e-licences and seals them), every format through one entry (`_documents`:
recognised by content, validated by its verifier), and signed JSON (`_signed_json`: the
compact JWS of registry snapshots, access-report batches and request tokens). Depends on
neither `registry` nor `gateway`.
`TrustSource` (`_trust`) that the registry implements, keys in a cryptographic module over
PKCS#11 (`_pkcs11`, `_pkcs11_keys`, URIs in `_pkcs11_uri`), SM2 with SM3 keys and signatures
(`_sm2`, GB/T 32918.2 with OpenSSL's key formats), and signed JSON (`_signed_json`: the
compact JWS of registry snapshots, access-report batches and request tokens). Depends on neither
`registry` nor `gateway`.

`__all__` is exactly what is used from outside the package (tests/unit/test_surfaces.py).
"""

from signer._algorithms import ALLOWED_ALGORITHMS, sign_bytes, verify_signature
from signer._documents import MAX_DOCUMENT_BYTES, DocumentVerifier, Format, recognise
from signer._jades import (
    MAX_JWS_BYTES,
    JwsFormatError,
    b64url_decode,
    b64url_encode,
    parse_compact,
    seal,
)
from signer._jades_json import add_timestamp, add_validation_data, parse_jws, to_compact, to_json
from signer._keyfile import (
    PrivateKey,
    PublicKey,
    algorithm_for_key,
    generate_private_key,
    load_private_key,
    write_private_key,
)
from signer._keys import FileKeyProvider, KeyProvider, x5t_s256_of_certificate, x5t_s256_of_der
from signer._ofd_make import make_licence_ofd, seal_ofd
from signer._ofd_package import OfdRefused
from signer._ofd_verify import OfdVerifier, is_ofd
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
from signer._revocation import (
    CertStatus,
    RevocationStatus,
    check_crl,
    check_ocsp_response,
    ocsp_cert_id,
)
from signer._revocation_fetch import RevocationFetcher
from signer._ses import Sm2FileSigner, Sm2Signer, make_seal, sign_with_seal
from signer._ses_asn1 import ses_version
from signer._ses_verify import GmVerifier
from signer._signed_json import canonical_json, sign_json, verify_json
from signer._sm2 import (
    SM2_DEFAULT_ID,
    Sm2PrivateKey,
    Sm2PublicKey,
    load_sm2_private_key,
    write_sm2_private_key,
)
from signer._sm2_x509 import is_sm2_key, issue_sm2_crl, sm2_public_key_of
from signer._timestamps import TimeStampClient, proof_of_existence
from signer._trust import TrustedKey, TrustSource
from signer._verify import SealVerifier
from signer.errors import (
    KeyFileError,
    KeyModuleError,
    Pkcs11UriInvalid,
    RevocationDataInvalid,
    RevocationUnavailable,
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
    TimeStampUnavailable,
    UnsupportedAlgorithm,
)

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_DOCUMENT_BYTES",
    "MAX_JWS_BYTES",
    "PKCS11_MECHANISMS",
    "SM2_DEFAULT_ID",
    "CertStatus",
    "DocumentVerifier",
    "FileKeyProvider",
    "Format",
    "GmVerifier",
    "Indication",
    "JwsFormatError",
    "KeyFileError",
    "KeyModuleError",
    "KeyProvider",
    "KeyReference",
    "OfdRefused",
    "OfdVerifier",
    "Pkcs11KeyProvider",
    "Pkcs11Uri",
    "Pkcs11UriInvalid",
    "PrivateKey",
    "PublicKey",
    "RevocationDataInvalid",
    "RevocationFetcher",
    "RevocationStatus",
    "RevocationUnavailable",
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
    "Sm2FileSigner",
    "Sm2IdInvalid",
    "Sm2KeyInvalid",
    "Sm2PrivateKey",
    "Sm2PublicKey",
    "Sm2Refused",
    "Sm2SignatureInvalid",
    "Sm2SignatureMalformed",
    "Sm2Signer",
    "SubIndication",
    "TimeStampClient",
    "TimeStampUnavailable",
    "TrustSource",
    "TrustedKey",
    "UnsupportedAlgorithm",
    "ValidationReport",
    "add_timestamp",
    "add_validation_data",
    "algorithm_for_key",
    "b64url_decode",
    "b64url_encode",
    "canonical_json",
    "check_crl",
    "check_ocsp_response",
    "generate_pkcs11_key",
    "generate_private_key",
    "is_ofd",
    "is_sm2_key",
    "issue_sm2_crl",
    "key_reference",
    "load_private_key",
    "load_sm2_private_key",
    "make_licence_ofd",
    "make_seal",
    "ocsp_cert_id",
    "open_pkcs11_key",
    "open_signing_key",
    "parse_compact",
    "parse_jws",
    "parse_pkcs11_uri",
    "proof_of_existence",
    "recognise",
    "seal",
    "seal_ofd",
    "ses_version",
    "sign_bytes",
    "sign_json",
    "sign_with_seal",
    "sm2_public_key_of",
    "to_compact",
    "to_json",
    "verify_json",
    "verify_signature",
    "write_private_key",
    "write_sm2_private_key",
    "x5t_s256_of_certificate",
    "x5t_s256_of_der",
]
