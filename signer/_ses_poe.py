"""Whether the RFC 3161 `timeStamp` of a GB/T 38540 `SES_Signature` proves the signature existed
(step (12) of `GmVerifier.validate_signature`): the token checks out (`signer._ses_tsp`), its
TSA certificate is a TSA's (critical EKU id-kp-timeStamping alone) and it chains, at the
genTime, to a configured TSA anchor (`tsa_anchors`, as for JAdES) or, as before, like the
seal's other certificates to a region CA of the registry or an extra (`--ca`) anchor."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from signer._report import SubIndication
from signer._ses_trust import anchor, path_time
from signer._ses_tsp import check_time_stamp
from signer._timestamps import carried_certificates, proof_of_existence, time_stamping_problem
from signer._trust import TrustSource

__all__: list[str] = []  # internals of `_ses_verify`


def ses_time_stamp(
    token: bytes,
    signature_value: bytes,
    *,
    trust: TrustSource | None,
    extra_anchors: Sequence[x509.Certificate],
    extra_intermediates: Sequence[x509.Certificate],
    tsa_anchors: Sequence[x509.Certificate],
) -> tuple[datetime | None, SubIndication | None, str]:
    """(the proof of existence or None, the sub-indication of a failed check or None, detail).
    A token that is not over this signature or does not verify fails the check; one whose TSA
    is not trusted passes it, reported and not relied on."""
    finding = check_time_stamp(token, signature_value)
    if finding.problem:
        return None, finding.sub, finding.problem
    assert finding.tsa_certificate is not None
    assert finding.gen_time is not None
    stamped = f"{finding.gen_time:%Y-%m-%dT%H:%M:%SZ}"
    if tsa_anchors and proof_of_existence(token, signature_value, tsa_anchors).proved:
        where = "a configured TSA anchor"
        return (
            finding.gen_time,
            None,
            f"{finding.detail}; the TSA chains to {where}: proof of existence at {stamped}",
        )
    if not_tsa := time_stamping_problem(finding.tsa_certificate):
        return None, None, f"{finding.detail}; not taken as proof of existence: {not_tsa}"
    when, _ = path_time(finding.tsa_certificate, finding.gen_time)
    tsa = anchor(
        finding.tsa_certificate,
        trust=trust,
        extra_anchors=extra_anchors,
        extra_intermediates=(*extra_intermediates, *carried_certificates(finding)),
        at=when,
        default_owner="",
    )
    if tsa.failure is not None:
        return (
            None,
            None,
            f"{finding.detail}; the TSA's certificate is not anchored ({tsa.failure.message}): its time is reported, not taken as proof of existence",
        )
    return (
        finding.gen_time,
        None,
        f"{finding.detail}; the TSA is anchored in {tsa.where}: proof of existence at {stamped}",
    )
