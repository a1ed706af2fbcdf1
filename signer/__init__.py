"""Tongban signing: private key files, algorithms and (later) seals and tokens."""

from signer._keyfile import (
    PrivateKey,
    PublicKey,
    algorithm_for_key,
    generate_private_key,
    load_private_key,
    write_private_key,
)
from signer.errors import KeyFileError, SignerError, UnsupportedAlgorithm

__all__ = [
    "KeyFileError",
    "PrivateKey",
    "PublicKey",
    "SignerError",
    "UnsupportedAlgorithm",
    "algorithm_for_key",
    "generate_private_key",
    "load_private_key",
    "write_private_key",
]
