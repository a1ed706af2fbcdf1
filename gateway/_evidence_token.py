"""The RFC 3161 tokens of an evidence bundle, checked so that no byte of them goes unchecked:
`proof_of_existence` covers what the TSA signed (TSTInfo, signed attributes) and the
certificates (signed by their issuers); the CMS fields the signature does not cover (versions,
digest algorithm lists, the signer's identifier, the signature algorithm, their DER) are checked
here to be as a TSA issues them."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import cms
from cryptography import x509

from signer import proof_of_existence

__all__ = ["TokenProof", "prove_token"]

_TOKEN_SIGNATURES = frozenset({"ecdsa", "rsassa_pkcs1v15", "rsassa_pss", "ed25519", "ed448"})


@dataclass(frozen=True)
class TokenProof:
    gen_time: datetime | None
    tsa: str
    problem: str


def prove_token(token: bytes, message: bytes, anchors: Sequence[x509.Certificate]) -> TokenProof:
    """What `token` proves about `message`: its genTime, or the problem."""
    problem = _token_form(token)
    return TokenProof(None, "", problem) if problem else _prove(token, message, anchors)


def _prove(token: bytes, message: bytes, anchors: Sequence[x509.Certificate]) -> TokenProof:
    """`proof_of_existence`, a certificate in the token that only parses with a warning (a
    malformed name) or whose key cannot be read (a changed curve) proving nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            found = proof_of_existence(token, message, anchors)
        except Warning as exc:  # proof_of_existence itself refuses what cannot be read
            return TokenProof(None, "", f"a malformed certificate in the token ({exc})")
    return TokenProof(found.gen_time, found.tsa, found.problem)


def _token_form(token: bytes) -> str:
    """Why `token` is not in the form a TSA issues (its unsigned fields are checked here, as
    its signature does not cover them), or ""."""
    try:
        info = cms.ContentInfo.load(token, strict=True)
        signed = info["content"]
        (signer,) = signed["signer_infos"]
        digest, signature = signer["digest_algorithm"], signer["signature_algorithm"]
        digest_name = digest["algorithm"].native
        if (
            info["content_type"].native != "signed_data"
            or signed["version"].native != "v3"
            or signer["version"].native != "v1"
            or [a.dump() for a in signed["digest_algorithms"]] != [digest.dump()]
            or digest["parameters"].native is not None
            or (signature["algorithm"].native != "rsassa_pss"
                and signature["parameters"].native is not None)
            or signed["encap_content_info"]["content_type"].native != "tst_info"
            or signer["unsigned_attrs"].native is not None
        ):  # fmt: skip
            return "not in the form of an RFC 3161 token (its unsigned fields were changed)"
        sid = signer["sid"]
        if sid.name != "issuer_and_serial_number" or not any(
            cert.chosen["tbs_certificate"]["issuer"].dump() == sid.chosen["issuer"].dump()
            and cert.chosen.serial_number == sid.chosen["serial_number"].native
            for cert in signed["certificates"]
        ):
            return "its signer identifier names no certificate it carries"
        if signature.signature_algo not in _TOKEN_SIGNATURES or (
            "_" in signature["algorithm"].native and signature.hash_algo != digest_name
        ):  # the signature does not cover its own algorithm: it must agree with the digest's
            return (
                f"a signature algorithm that is not the digest's: {signature['algorithm'].dotted}"
            )
        unsigned = [signed[n] for n in ("version", "digest_algorithms", "encap_content_info")]
        unsigned += [
            signer[n] for n in ("version", "sid", "digest_algorithm", "signature_algorithm")
        ]
        if any(part.dump() != part.dump(force=True) for part in unsigned):
            return "not DER: a tag or length of its unsigned fields was changed"
    except (ValueError, TypeError, KeyError) as exc:
        return f"not an RFC 3161 token ({exc.__class__.__name__})"
    return ""
