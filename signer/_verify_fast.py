"""The repeat of a passing validation: what `SealVerifier.validate` does for a compact seal whose
protected header it has already seen pass, against the same trust source and expectations.

Of the checks of `validate`, all but a few depend only on the protected header (profile,
algorithm, key, x5c, signing time, chain, kind and region, the registry's key state and CRLs):
the same header, trust source, caller expectations and detached-or-attached form give the same
outcome. What may differ from one call to the next is checked again on each repeat, in full:

- (0) the rest of the JWS: exactly three parts, the payload part unpadded base64url, the
  signature part strict base64url;
- (1), (11), (12) the validation time: within the interval of times for which the first run's
  time-dependent checks (signing time not ahead of the clock, CRLs current, certificate valid
  now) pass, which that run recorded beside each of those checks (`Run.during`);
- (5), (7) the signed data: attached, or detached with the `sigD` digest of the supplied payload;
- (6) the signature, with the registry's key, over the signed bytes.

A validation whose outcome depended on anything else (an online OCSP responder, validation data
or time-stamps embedded in a JSON-serialised seal) is not remembered (`Run.repeatable`). Any
difference, and any failure, leaves the repeat to the full validation, which then reports it
with every check: a repeat can only confirm a pass, never make a report of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final

from signer._algorithms import verify_fitted
from signer._jades import (
    _BASE64URL_ALPHABET,
    MAX_CACHED_HEADER_BYTES,
    MAX_CACHED_HEADERS,
    MAX_JWS_BYTES,
    JwsFormatError,
    b64url_decode,
)
from signer._keyfile import PublicKey
from signer._report import SignatureKind, ValidationReport
from signer._trust import TrustSource
from signer._verify_helpers import Request, Run

__all__: list[str] = []  # internals of `_verify`

MAX_VERDICTS: Final = MAX_CACHED_HEADERS  # remembered headers before the memory is cleared
# A report is made from its fields in order (faster than `dataclasses.replace`, which looks
# each of them up by name on every call).
_FIELDS: Final = tuple(field.name for field in fields(ValidationReport))
_SIGNED_PAYLOAD_B64: Final = _FIELDS.index("signed_payload_b64")
_DETACHED_PAYLOAD: Final = _FIELDS.index("detached_payload")


@dataclass(slots=True)
class Verdict:
    """A validation that passed, and what a repeat of it must check again. Only `report` and
    `fields` change (the last report given, and its fields once another payload needs them)."""

    trust: TrustSource  # the very trust source (registry version) it passed against
    expected_kind: SignatureKind | None
    expected_region: str | None
    detached: bool  # the payload part is empty: the payload is supplied, its digest in sigD
    digest: bytes  # SHA-256 of the detached payload that passed (sigD's hashV); b"" if attached
    algorithm: str
    public_key: PublicKey
    now_from: datetime  # the validation times for which the time-dependent checks pass
    now_until: datetime
    report: ValidationReport  # the last report given: the same seal gets the same (frozen) one
    fields: tuple[Any, ...] = ()  # `report` field by field (`_FIELDS`), made when first needed


class Verdicts:
    """The passing validations of compact seals, by protected header (base64url, as it came)."""

    def __init__(self) -> None:
        self._by_header: dict[str, Verdict] = {}
        # Hashes of the headers that passed once: a verdict is kept from the second pass on,
        # so a stream of seals each seen once (distinct signing times) costs a set entry each.
        self._seen: set[int] = set()

    def clear(self) -> None:
        """Forget every verdict (a new trust source: keys, states and CRLs may differ)."""
        self._by_header = {}
        self._seen = set()

    def remember(self, run: Run, request: Request, report: ValidationReport) -> None:
        """Remember the validation `run` that passed, reported as `report`, if it may be
        repeated: a compact seal, attached or detached with sigD, judged on its own."""
        jws = request.jws
        if not isinstance(jws, str) or not run.header_b64:
            return
        if len(run.header_b64) > MAX_CACHED_HEADER_BYTES or run.facts is None:
            return
        seen = hash(run.header_b64)
        if seen not in self._seen:
            if len(self._seen) >= MAX_VERDICTS:
                self._seen = set()
            self._seen.add(seen)
            return
        public_key = run.facts.public_key
        detached = request.detached_payload is not None
        if public_key is None or (detached and not run.sig_d):
            return  # an RFC 7515 appendix F payload signs its own base64url: not repeated here
        payload = request.detached_payload or b""
        verdict = Verdict(
            trust=request.trust,
            expected_kind=request.expected_kind,
            expected_region=request.expected_region,
            detached=detached,
            digest=hashlib.sha256(payload).digest() if detached else b"",
            algorithm=run.algorithm,
            public_key=public_key,
            now_from=run.now_from,
            now_until=run.now_until,
            report=report,
        )
        if len(self._by_header) >= MAX_VERDICTS:
            self._by_header = {}
        self._by_header[run.header_b64] = verdict

    def repeat(
        self,
        jws: str | bytes,
        detached_payload: bytes | None,
        now: datetime,
        trust: TrustSource,
        *,
        expected_kind: SignatureKind | None,
        expected_region: str | None,
    ) -> ValidationReport | None:
        """The report of a remembered validation that this one repeats and passes, re-checking
        what the module docstring lists; None (validate in full) on any difference."""
        if not self._by_header or not isinstance(jws, str):
            return None
        jws = jws.strip()  # as `parse_compact`
        first = jws.find(".")
        if first < 0 or len(jws) > MAX_JWS_BYTES:
            return None
        verdict = self._by_header.get(jws[:first])
        if (
            verdict is None
            or verdict.trust is not trust
            or verdict.expected_kind is not expected_kind
            or verdict.expected_region != expected_region
            or not verdict.now_from <= now <= verdict.now_until
        ):
            return None
        last = jws.rfind(".")
        payload_chars = last - first - 1
        if payload_chars % 4 == 1 or (payload_chars == 0) is not verdict.detached:
            return None
        if verdict.detached:
            if (
                detached_payload is None
                or hashlib.sha256(detached_payload).digest() != verdict.digest
            ):
                return None
        elif detached_payload is not None:
            return None
        try:
            signed = jws[:last].encode("ascii")
            signature = b64url_decode(jws[last + 1 :])
        except (UnicodeEncodeError, JwsFormatError):
            return None
        # The header part is the one that passed; the payload part must be base64url.
        if signed[first + 1 :].translate(None, _BASE64URL_ALPHABET):
            return None
        if not verify_fitted(verdict.algorithm, verdict.public_key, signed, signature):
            return None
        return _report(verdict, jws[first + 1 : last], detached_payload)


def _report(verdict: Verdict, payload_b64: str, detached_payload: bytes | None) -> ValidationReport:
    """The passing report for this payload: the last one given if it names the same payload
    (a report is a frozen value), else the last one with this payload in its place."""
    last = verdict.report
    if last.signed_payload_b64 == payload_b64 and last.detached_payload == detached_payload:
        return last
    if not verdict.fields:
        verdict.fields = tuple(getattr(last, name) for name in _FIELDS)
    values = list(verdict.fields)
    if verdict.detached:
        values[_DETACHED_PAYLOAD] = detached_payload
    else:
        values[_SIGNED_PAYLOAD_B64] = payload_b64
    verdict.report = report = ValidationReport(*values)
    return report
