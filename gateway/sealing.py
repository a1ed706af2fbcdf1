"""Sealing for a region: the one place a gateway seals with its region's active seal key.

`Credentials.Seal` (a document an agency has sealed) and the owner's side of the query path (an
answer of the data system, sealed before it leaves the region) both seal with the key that the
current registry names as the region's active seal key, and both need this gateway to hold that
key's private key (`[[seal.keys]]`, refilled in place on a reload). `RegionSealer` chooses the
key and seals; a gateway that cannot says so with `SealKeyUnavailable` (reason
SEAL_KEY_UNAVAILABLE: a rotation's activating publish reached it before the new key did).

A region whose active seal key is SM2 (`Sm2SealKey`: the key, its certificate chain and the
region's `SESeal` that lists it) seals as GB/T 38540: a DER `SES_Signature` over the payload
(dataHash = SM3 of the payload), which the wire carries beside the payload with its `SealFormat`;
any other key seals as JAdES, as before.

Stapling (JAdES baseline-LT): a `RegionSealer` given a `staple` function (`ocsp_staple` over
the gateway's `RevocationFetcher`) embeds the seal certificate's current OCSP response in each
JAdES seal, which then travels in the JWS JSON serialisation (`signer.add_validation_data`); the
fetcher keeps the response until its nextUpdate and fetches a new one after. Without a staple, or
when the certificate names no responder or none answers "good", the seal stays compact.

Time-stamps (baseline-T): a `RegionSealer` given a `stamper` (the gateway's TSA client,
`[timestamp] url`) adds an RFC 3161 token over each seal's signature value: a JAdES `sigTst`
(the seal then travels in JSON serialisation) or the SES_Signature's `timeStamp`. A TSA that
fails leaves the seal without one (`gateway.timestamps`: logged and counted, not refused).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Final

from cryptography import x509

from gateway.errors import GatewayError
from gateway.licences import licence_ofd
from registry import KeyRefused, KeyUsage, Registry
from signer import (
    CertStatus,
    GmVerifier,
    KeyFileError,
    KeyProvider,
    OfdVerifier,
    RevocationDataInvalid,
    RevocationFetcher,
    RevocationUnavailable,
    SealVerifier,
    SignatureKind,
    SignerError,
    Sm2FileSigner,
    SubIndication,
    TimeStampClient,
    TimeStampUnavailable,
    UnsupportedAlgorithm,
    ValidationReport,
    add_timestamp,
    add_validation_data,
    load_sm2_private_key,
    seal,
    seal_ofd,
    sign_with_seal,
    x5t_s256_of_certificate,
)

__all__ = [
    "SEAL_IN_THREAD_BYTES",
    "RegionSealer",
    "SealFormat",
    "SealKeyUnavailable",
    "SealedDocument",
    "Sm2SealKey",
    "check_region_seal",
    "ocsp_staple",
    "seal_text",
    "seals_with_sm2",
    "staple_of",
]

log = logging.getLogger("tongban.gateway")

# Larger payloads are sealed in a worker thread (sealing 4 MiB takes tens of milliseconds).
SEAL_IN_THREAD_BYTES: Final = 256 * 1024


class SealKeyUnavailable(GatewayError):
    """The region has no active seal key now, or this gateway does not hold it."""

    reason: Final = "SEAL_KEY_UNAVAILABLE"


class SealFormat(StrEnum):
    """How a record is sealed (the wire's `SealFormat`)."""

    JADES = "JAdES"  # a JWS: compact, or JSON-serialised with a stapled OCSP response
    GBT38540 = "GB/T 38540"  # a DER SES_Signature over the payload
    OFD = "OFD"  # an OFD file whose signatures are inside it


@dataclass(frozen=True, slots=True)
class SealedDocument:
    """A sealed payload: its seal (a compact JAdES JWS, or a GB/T 38540 SES_Signature), and who
    sealed it when."""

    jws: str  # "" unless format is JADES
    kid: str  # the seal key's x5t#S256, its id in the registry
    region: str
    sealed_at: datetime  # whole seconds: the JWS `iat` / the SES_Signature's timeInfo exactly
    format: SealFormat = SealFormat.JADES
    ses_signature: bytes = b""  # DER, when format is GBT38540

    @property
    def seal(self) -> str:
        """The seal as text (what an audit record's digest stands for): the JWS, or the
        SES_Signature in base64 after the format's name."""
        return seal_text(self.format, self.jws, self.ses_signature, b"")


def seal_text(format: SealFormat, jws: str, ses_signature: bytes, payload: bytes) -> str:
    """A seal as text, whatever its format: the JWS; the SES_Signature in base64; for an OFD
    file, whose signatures are inside it, the file's SHA-256. Formats never share a text."""
    if format is SealFormat.GBT38540:
        return "GB/T 38540 " + base64.b64encode(ses_signature).decode("ascii")
    if format is SealFormat.OFD:
        return "OFD " + hashlib.sha256(payload).hexdigest()
    return jws


class Sm2SealKey:
    """An SM2 seal key held by the gateway: a `KeyProvider` for choosing it by kid (it makes no
    JWS), an `Sm2Signer` for GB/T 38540, with the `SESeal` (DER) that lists its certificate."""

    algorithm: Final = "SM2"

    def __init__(
        self, signer: Sm2FileSigner, chain: tuple[x509.Certificate, ...], eseal: bytes
    ) -> None:
        self._signer = signer
        self._chain = chain
        self._kid = x5t_s256_of_certificate(chain[0])
        self.eseal = eseal

    @classmethod
    def from_files(cls, key_path: Path, certificate_path: Path, eseal_path: Path) -> Sm2SealKey:
        """The key, its chain (PEM, leaf first) and its seal; `KeyFileError` names what is wrong.
        A signature is made on the spot, so a seal that does not list this key is refused now
        rather than at the first answer."""
        key = load_sm2_private_key(key_path)
        try:
            chain = tuple(x509.load_pem_x509_certificates(certificate_path.read_bytes()))
            signer = Sm2FileSigner(key, chain[0])
            eseal = eseal_path.read_bytes()
        except (OSError, ValueError, IndexError) as exc:
            raise KeyFileError(
                f"{key_path}: no usable SM2 seal key with {certificate_path} and {eseal_path}: "
                f"{exc.strerror if isinstance(exc, OSError) else exc}"
            ) from exc
        made = cls(signer, chain, eseal)
        try:
            sign_with_seal(
                b"", seal=eseal, signer=signer, at=chain[0].not_valid_before_utc, property_info=""
            )
        except ValueError as exc:
            raise KeyFileError(f"{eseal_path}: not a seal of {certificate_path}: {exc}") from exc
        return made

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def certificate_chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    @property
    def certificate(self) -> x509.Certificate:
        return self._chain[0]

    def sign_sm2(self, data: bytes) -> bytes:
        return self._signer.sign_sm2(data)

    def sign(self, signing_input: bytes) -> bytes:
        raise UnsupportedAlgorithm(f"seal key {self._kid} is SM2: it seals as GB/T 38540, not JWS")

    def __repr__(self) -> str:
        return f"Sm2SealKey(kid={self._kid!r})"


Staple = Callable[[KeyProvider], bytes | None]  # the OCSP response (DER) to embed, if any


def ocsp_staple(fetcher: RevocationFetcher) -> Staple:
    """A `Staple` that asks `fetcher` (its cache first) for the seal certificate's status and
    gives the OCSP response when it says "good"; None otherwise, logged (the seal stays compact:
    a responder's outage must not stop sealing). It blocks on a fetch: call it in a thread."""

    def staple(provider: KeyProvider) -> bytes | None:
        chain = provider.certificate_chain
        if len(chain) < 2:
            return None  # no issuer at hand: nothing to ask about
        try:  # only an OCSP response is stapled: CRL URLs are not fetched for it
            status = fetcher.check(chain[0], chain[1], have_current_crl=True)
        except (RevocationUnavailable, RevocationDataInvalid) as exc:
            log.warning("no OCSP response stapled to seals of key %s: %s", provider.kid, exc)
            return None
        if status is None or status.source != "ocsp" or status.status is not CertStatus.GOOD:
            return None
        return status.der

    return staple


def staple_of(verifier: SealVerifier) -> Staple | None:
    """The gateway's staple: over the seal verifier's `RevocationFetcher` when online revocation
    is on (`[revocation] online`), else None (seals stay compact)."""
    return ocsp_staple(verifier.revocation) if verifier.revocation is not None else None


class RegionSealer:
    """Seals for `region` with its active seal key, among the private keys `keys` (by kid; the
    gateway's own map, which a reload refills in place: it is read at each seal, never copied);
    with `staple`, JAdES seals embed the key's OCSP response (module docstring).
    """

    def __init__(
        self,
        region: str,
        keys: Mapping[str, KeyProvider],
        *,
        staple: Staple | None = None,
        stamper: TimeStampClient | None = None,
    ) -> None:
        self.region = region
        self._keys = keys
        self._staple = staple
        self._stamper = stamper

    def active_key(self, registry: Registry, at: datetime) -> KeyProvider:
        """The region's active seal key at `at` in `registry`; `SealKeyUnavailable` if there is
        none or this gateway does not hold it."""
        try:
            kid = registry.signing_key(self.region, KeyUsage.SEAL, at).kid
        except KeyRefused as exc:
            raise SealKeyUnavailable(str(exc)) from exc
        provider = self._keys.get(kid)
        if provider is None:
            raise SealKeyUnavailable(
                f"registry version {registry.version} names seal key {kid} as region "
                f"{self.region}'s active key, and this gateway does not hold it"
            )
        return provider

    async def seal(
        self,
        registry: Registry,
        payload: bytes,
        *,
        content_type: str,
        now: datetime,
        detached: bool = False,
    ) -> SealedDocument:
        """`payload` sealed at `now` (to the second) with the key `active_key` chooses; in a
        worker thread when it is larger than SEAL_IN_THREAD_BYTES. An SM2 key seals as a
        GB/T 38540 SES_Signature over the payload (always detached: `detached` is for JWS)."""
        sealed_at = now.replace(microsecond=0)  # the JWS iat has whole seconds
        provider = self.active_key(registry, sealed_at)
        if isinstance(provider, Sm2SealKey):
            make_ses = functools.partial(
                sign_with_seal,
                payload,
                seal=provider.eseal,
                signer=provider,
                at=sealed_at,
                property_info=content_type if content_type.isascii() else "",
            )
            if self._stamper is not None:  # the TSA is asked in a thread: it blocks
                try:
                    ses = await asyncio.to_thread(functools.partial(make_ses, tsa=self._stamper))
                except TimeStampUnavailable as exc:
                    log.warning("a GB/T 38540 seal made without a time-stamp: %s", exc)
                    ses = make_ses()
            else:
                big = len(payload) > SEAL_IN_THREAD_BYTES
                ses = await asyncio.to_thread(make_ses) if big else make_ses()
            return SealedDocument(
                jws="",
                kid=provider.kid,
                region=self.region,
                sealed_at=sealed_at,
                format=SealFormat.GBT38540,
                ses_signature=ses,
            )
        make = functools.partial(
            seal,
            payload,
            provider,
            content_type=content_type,
            detached=detached,
            signing_time=sealed_at,
        )
        try:
            jws = await asyncio.to_thread(make) if len(payload) > SEAL_IN_THREAD_BYTES else make()
        except SignerError as exc:  # a key in a cryptographic module that failed to sign
            # The module's refusal (and where the module is) goes to the log, not to the caller.
            log.warning("seal key %s could not sign: %s", provider.kid, exc)
            raise SealKeyUnavailable(
                f"seal key {provider.kid} could not sign (its cryptographic module refused)"
            ) from exc
        if self._staple is not None:
            response = await asyncio.to_thread(self._staple, provider)
            if response is not None:
                jws = add_validation_data(jws, ocsp_responses=[response])
        if self._stamper is not None:
            jws = await asyncio.to_thread(_time_stamped_jws, jws, self._stamper)
        return SealedDocument(jws=jws, kid=provider.kid, region=self.region, sealed_at=sealed_at)

    async def seal_licence(
        self, registry: Registry, record: bytes, *, credential_type: str, now: datetime
    ) -> tuple[SealedDocument, bytes] | None:
        """`record` (a JSON credential record) as an OFD e-licence sealed at `now` with the
        region's SESeal, and its seal's description, when the active seal key is SM2
        (`gateway.licences`); None when the region seals with JWS (the record leaves as is)."""
        sealed_at = now.replace(microsecond=0)
        if not seals_with_sm2(registry, self.region, sealed_at):
            return None  # (without an active key at all, the record was sealed before)
        provider = self.active_key(registry, sealed_at)
        if not isinstance(provider, Sm2SealKey):
            raise SealKeyUnavailable(
                f"seal key {provider.kid} is SM2 in the registry, and not an SM2 key here"
            )
        doc_id = f"{self.region}-{secrets.token_hex(8)}"

        def make() -> bytes:
            unsealed = licence_ofd(
                record, credential_type=credential_type, issued=sealed_at, doc_id=doc_id
            )
            return seal_ofd(unsealed, seal=provider.eseal, signer=provider, at=sealed_at)

        ofd = await asyncio.to_thread(make)  # a few milliseconds of SM2 and zip
        sealed = SealedDocument(
            jws="", kid=provider.kid, region=self.region, sealed_at=sealed_at, format=SealFormat.OFD
        )
        return sealed, ofd


def _time_stamped_jws(jws: str, stamper: TimeStampClient) -> str:
    """`jws` with a sigTst, or as it was when the TSA fails (logged; counted by the client)."""
    try:
        return add_timestamp(jws, stamper)
    except TimeStampUnavailable as exc:
        log.warning("a JAdES seal made without a time-stamp: %s", exc)
        return jws


def seals_with_sm2(registry: Registry, region: str, at: datetime) -> bool:
    """Whether `region`'s active seal key at `at` in `registry` is SM2 (False without one)."""
    try:
        return registry.signing_key(region, KeyUsage.SEAL, at).algorithm == "SM2"
    except KeyRefused:
        return False


def check_region_seal(
    *,
    format: SealFormat,
    jws: str,
    ses_signature: bytes,
    payload: bytes,
    region: str,
    jades: SealVerifier,
    gm: GmVerifier,
    at: datetime | None = None,
) -> ValidationReport:
    """The report on a record sealed by `region`, whatever its format: it passes only when the
    seal is valid, is a seal (not a person's signature), is `region`'s own, and covers exactly
    `payload`. Both verifiers must hold the same registry (the gateway switches them together).
    """
    if format is SealFormat.JADES:
        report = jades.validate(
            jws,
            expected_kind=SignatureKind.SEAL,
            expected_owner_region=region,
            validation_time=at,
        )
        if report.passed and report.payload != payload:
            return _refused(
                report, SubIndication.HASH_FAILURE, "the sealed bytes are not the payload sent"
            )
        return report
    if format is SealFormat.GBT38540:
        report = gm.validate_signature(ses_signature, payload, validation_time=at)
        signers: tuple[ValidationReport, ...] = (report,)
    else:
        report = OfdVerifier(gm).validate(payload, validation_time=at)
        signers = report.signatures or (report,)
    if not report.passed:
        return report
    for signer in signers:
        if signer.kind is not SignatureKind.SEAL:
            return _refused(report, SubIndication.CHAIN_CONSTRAINTS_FAILURE, "it is not an e-seal")
        if signer.owner_region != region:
            return _refused(
                report,
                SubIndication.CHAIN_CONSTRAINTS_FAILURE,
                f"it is region {signer.owner_region or 'unknown'}'s seal, not region {region}'s",
            )
    return report


def _refused(report: ValidationReport, why: SubIndication, message: str) -> ValidationReport:
    return replace(
        report,
        indication=why.indication,
        sub_indication=why,
        message=message,
    )
