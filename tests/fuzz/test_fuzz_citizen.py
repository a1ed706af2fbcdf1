"""Property-based fuzzing of what a citizen's portal and the other regions' gateways call for
the citizen (issue 21): `Consents.Register`, `List` and `Revoke`, `Tracker.Trail`, and the
peer side of both, `Peer.ConsentStatus` and `Peer.SubjectTrail`, over real mutual TLS.

The same properties as test_fuzz_rpcs.py (never UNKNOWN or INTERNAL, never a hang, every error
a rich status with its ErrorInfo, the gateways healthy afterwards), and per RPC what a success
must look like. The calls come mostly from 重庆's portal (cq.hrss) with a token naming a citizen
of the demo as its applicant, else from other agencies, a gateway's certificate, and tokens of
every broken shape; consents are a genuine artefact of 重庆's identity service, that artefact
with a character changed or cut short, or any text at all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fuzz.fuzz_support import Harness, check, fuzz_settings
from fuzz.strategies import (
    AGENCIES,
    REGIONS,
    Metadata,
    Raw,
    Token,
    metadata,
    mostly,
    mutated,
    raw_messages,
    texts,
    timestamps,
)
from hypothesis import given
from hypothesis import strategies as st

from gateway.consent import issue_region_consent
from tongban.v1 import common_pb2, consents_pb2, exchange_pb2, tracker_pb2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fuzz,
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

REGISTER = "/tongban.v1.Consents/Register"
LIST = "/tongban.v1.Consents/List"
REVOKE = "/tongban.v1.Consents/Revoke"
TRAIL = "/tongban.v1.Tracker/Trail"
CONSENT_STATUS = "/tongban.v1.Peer/ConsentStatus"
SUBJECT_TRAIL = "/tongban.v1.Peer/SubjectTrail"
HOME, PORTAL = "500000", "cq.hrss"
# (owner of the client certificate, region of the gateway called): mostly the portal at home.
PORTAL_CALLERS = st.sampled_from(
    [(PORTAL, HOME)] * 6 + [("cq.psb", HOME), ("sc.hrss", "510000"), (HOME, HOME)]
)
PEER_CALLERS = st.sampled_from([("510000", HOME)] * 6 + [("330000", HOME), (PORTAL, HOME)])


def citizen_of(h: Harness, n: int = 0) -> str:
    return h.cluster.subject("510000", "medical.insurance", n=n)


def genuine_consent(h: Harness, citizen: str) -> str:
    """重庆's identity service's consent for its agencies over 四川's medical insurance."""
    now = datetime.now(UTC)
    return issue_region_consent(
        h.fed.pki,
        HOME,
        subject=citizen,
        purpose="MED-REG",
        datasets=[("510000", "medical.insurance", ("citizen_id", "name", "status"))],
        regions=(HOME,),
        not_before=now - timedelta(minutes=1),
        expires_at=now + timedelta(hours=1),
        max_uses=5,
        now=now,
    )


def spoilt(artefact: str) -> st.SearchStrategy[str]:
    """The artefact itself, cut short, or with one character changed."""
    cut = st.integers(0, len(artefact) - 1).map(lambda n: artefact[:n])
    changed = st.tuples(st.integers(0, len(artefact) - 1), st.sampled_from("A_-.=/+\x00é")).map(
        lambda edit: artefact[: edit[0]] + edit[1] + artefact[edit[0] + 1 :]
    )
    return st.one_of(st.just(artefact), cut, changed)


def citizen_metadata(citizen: str) -> st.SearchStrategy[Metadata]:
    """Mostly the portal's good token for `citizen`; else for any applicant at all, or any
    metadata `strategies.metadata` makes for the portal's agency (no applicant)."""
    good = st.just(Metadata(token=Token(agency=PORTAL, claims_edit={"applicant": citizen})))
    anyone = texts(citizen, huge=False).map(
        lambda applicant: Metadata(token=Token(agency=PORTAL, claims_edit={"applicant": applicant}))
    )
    return mostly(st.one_of(anyone, metadata(PORTAL)), good, one_in=2)


# -- Consents ------------------------------------------------------------------------------------
def test_consents(harness: Harness) -> None:
    h = harness
    citizen = citizen_of(h)
    artefact = genuine_consent(h, citizen)
    example = consents_pb2.RegisterConsentRequest(consent=artefact)
    consents = st.one_of(spoilt(artefact), texts(artefact))
    messages = {
        REGISTER: (
            consents.map(lambda c: consents_pb2.RegisterConsentRequest(consent=c)),
            consents_pb2.ConsentSummary,
        ),
        LIST: (st.just(consents_pb2.ListConsentsRequest()), consents_pb2.ListConsentsResponse),
        REVOKE: (
            texts("consent-unknown", huge=False).map(
                lambda i: consents_pb2.RevokeConsentRequest(consent_id=i)
            ),
            consents_pb2.ConsentSummary,
        ),
    }

    @fuzz_settings()
    @given(
        method=st.sampled_from(sorted(messages)),
        data=st.data(),
        md=citizen_metadata(citizen),
        caller=PORTAL_CALLERS,
    )
    def one(method: str, data: st.DataObject, md: Metadata, caller: tuple[str, str]) -> None:
        made, response = messages[method]
        message: Any = data.draw(mostly(made, raw_messages(example.SerializeToString())))
        pairs = h.render(md)
        result = h.unary(*caller, method, response, message, pairs)
        check(result, pairs, f"{method} {message!r} as {caller}")
        if result.ok:
            assert caller == (PORTAL, HOME) or caller[0].startswith("cq."), caller
            if method == REGISTER:
                assert result.response.consent_id
                assert list(result.response.datasets) == ["510000/medical.insurance"]

    one()
    h.assert_healthy()


# -- Tracker.Trail -------------------------------------------------------------------------------
def test_tracker_trail(harness: Harness) -> None:
    h = harness
    citizen = citizen_of(h, 1)
    example = tracker_pb2.TrailRequest(subject_id=citizen)
    requests = mutated(
        {"subject_id": citizen},
        {
            "subject_id": texts(citizen, citizen_of(h, 2)),
            "since": timestamps(),
            "until": timestamps(),
            "regions": st.lists(texts(*REGIONS, huge=False), max_size=5),
        },
    ).map(lambda fields: tracker_pb2.TrailRequest(**fields))
    staff = st.just(Metadata(token=Token(agency="cq.data")))

    @fuzz_settings()
    @given(
        message=mostly(requests, raw_messages(example.SerializeToString())),
        md=st.one_of(citizen_metadata(citizen), staff),
        caller=st.one_of(PORTAL_CALLERS, st.just(("cq.data", HOME))),
    )
    def one(message: Any, md: Metadata, caller: tuple[str, str]) -> None:
        pairs = h.render(md)
        result = h.unary(*caller, TRAIL, tracker_pb2.TrailResponse, message, pairs)
        check(result, pairs, f"Trail {message!r} as {caller}")
        if result.ok:
            answer = result.response
            assert {r.region for r in answer.regions} <= set(REGIONS)
            assert answer.regions
            times = [e.time.ToDatetime() for e in answer.entries]
            assert times == sorted(times)
            assert {e.region for e in answer.entries} <= {r.region for r in answer.regions}

    one()
    h.assert_healthy()


# -- Peer.ConsentStatus and Peer.SubjectTrail ------------------------------------------------------
def test_peer_consent_status_and_subject_trail(harness: Harness) -> None:
    h = harness
    citizen = citizen_of(h, 3)
    registered = h.unary(
        PORTAL,
        HOME,
        REGISTER,
        consents_pb2.ConsentSummary,
        consents_pb2.RegisterConsentRequest(consent=genuine_consent(h, citizen)),
        h.render(Metadata(token=Token(agency=PORTAL, claims_edit={"applicant": citizen}))),
    )
    assert registered.ok, registered
    statuses = texts(registered.response.consent_id, huge=False).map(
        lambda i: exchange_pb2.ConsentStatusRequest(consent_id=i)
    )
    # 四川's gateway relays its portal's token for a citizen, as its Tracker does.
    relayed = h.render_token(Token(agency="sc.hrss", claims_edit={"applicant": citizen}))
    trails = mutated(
        {
            "token": relayed,
            "caller": common_pb2.CallerIdentity(
                agency_id="sc.hrss",
                region="510000",
                operator="经办人 张三",
                certificate_thumbprint=h.thumbprint("sc.hrss"),
            ),
            "subject_id": citizen,
            "nonce": "n-0123456789abcdef",
        },
        {
            "token": texts(relayed),
            "caller": st.builds(
                common_pb2.CallerIdentity,
                agency_id=texts(*AGENCIES),
                region=texts(*REGIONS),
                operator=texts("经办人 张三"),
                certificate_thumbprint=texts(h.thumbprint("sc.hrss")),
            ),
            "subject_id": texts(citizen, citizen_of(h, 4)),
            "since": timestamps(),
            "until": timestamps(),
            "nonce": texts(huge=False),
        },
    ).map(lambda fields: exchange_pb2.SubjectTrailRequest(**fields))
    examples = {
        CONSENT_STATUS: exchange_pb2.ConsentStatusRequest(consent_id="consent-0001"),
        SUBJECT_TRAIL: exchange_pb2.SubjectTrailRequest(token=relayed, subject_id=citizen),
    }

    @fuzz_settings()
    @given(method=st.sampled_from(sorted(examples)), data=st.data(), caller=PEER_CALLERS)
    def one(method: str, data: st.DataObject, caller: tuple[str, str]) -> None:
        made = statuses if method == CONSENT_STATUS else trails
        message: Any = data.draw(mostly(made, raw_messages(examples[method].SerializeToString())))
        response = (
            exchange_pb2.ConsentStatusResponse
            if method == CONSENT_STATUS
            else exchange_pb2.SubjectTrailResponse
        )
        result = h.unary(*caller, method, response, message)
        check(result, (), f"{method} {message!r} as {caller}")
        if result.ok:
            assert caller[0].isdigit(), caller  # a gateway's certificate only
            if method == SUBJECT_TRAIL:
                assert result.response.sealed.count(".") == 2
                assert not isinstance(message, Raw)

    one()
    h.assert_healthy()
