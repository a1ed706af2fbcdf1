"""Property-based fuzzing of every Tongban RPC over real mutual TLS (issue 9, item 1).

Each test sends one RPC arbitrary and adversarial messages — random field values, huge and odd
strings, malformed protobuf (truncated, bit-flipped, invalid UTF-8 in string fields, deep
nesting), garbage and crafted request tokens (right key with wrong claim types, missing claims,
alg none, truncated and oversized JWS), random certificate bytes inside seals, deeply nested
JSON — from a legitimate identity and from identities that should be refused, to the in-process
gateways of a three-region cluster. Properties, for every call:

- the status is never UNKNOWN or INTERNAL, and no call reaches its 5 s deadline (no hang);
- every error is a rich status with a `google.rpc.ErrorInfo` (domain "tongban", a reason of
  `tongban.v1.ErrorReason`); the only exception is gRPC's own refusal of metadata over its
  8 KiB soft limit (RESOURCE_EXHAUSTED before the gateway sees the call);
- per RPC, what a success must look like (a sealed record, one result per batch item, a report
  that never passes a tampered seal, ...);
and after each test: every gateway answers SERVING on gRPC health, a valid query is still
answered and sealed, and the event loop reported no stray exception.

`TONGBAN_FUZZ_EXAMPLES` sets the number of examples per RPC (default 50; the long target runs
10000, see tests/fuzz/conftest.py).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fuzz.fuzz_support import (
    Harness,
    check,
    check_contract,
    check_item_status,
    fuzz_settings,
)
from fuzz.strategies import (
    AGENCIES,
    CREDENTIAL_TYPES,
    FRESH,
    PURPOSES,
    REGIONS,
    HeaderEdit,
    Metadata,
    Mutation,
    QuerySpec,
    Raw,
    apply_header_edit,
    fresh,
    jws_texts,
    metadata,
    mostly,
    mutated,
    payloads,
    queries,
    raw_messages,
    request_ids,
    texts,
    timestamps,
)
from hypothesis import given
from hypothesis import strategies as st
from support import sign_forward_message

from registry import KeyState, KeyUsage
from tongban.v1 import (
    common_pb2,
    credentials_pb2,
    exchange_pb2,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fuzz,
    # Hypothesis warns when it prints a huge example (a 200 kB string): that is the point here.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

QUERY = "/tongban.v1.DataExchange/Query"
BATCH = "/tongban.v1.DataExchange/BatchQuery"
FORWARD = "/tongban.v1.Peer/Forward"
FETCH = "/tongban.v1.Credentials/Fetch"
VERIFY = "/tongban.v1.Credentials/Verify"
SEAL = "/tongban.v1.Credentials/Seal"

# (owner of the client certificate, region of the gateway called): mostly the legitimate one.
AGENCY_CALLERS = st.sampled_from(
    [("sc.hrss", "510000")] * 6
    + [("sc.amr", "510000"), ("sc.hrss", "330000"), ("zj.hrss", "330000"), ("510000", "510000")]
)


def subjects(h: Harness) -> dict[tuple[str, str], str]:
    c = h.cluster
    return {
        (region, dataset): c.subject(region, dataset)
        for region in REGIONS
        for dataset in ("si.participation", "market.business_licence")
    }


def sent(h: Harness, md: Metadata) -> tuple[tuple[str, str | bytes], ...]:
    return h.render(md)


# -- DataExchange.Query ----------------------------------------------------------------------------
def test_query(harness: Harness) -> None:
    h = harness
    people = subjects(h)
    example = QuerySpec("500000", "si.participation", "SI-TRANSFER", "x", (), "", "r").build(people)

    @fuzz_settings()
    @given(
        spec=mostly(queries(), raw_messages(example.SerializeToString())),
        md=metadata("sc.hrss"),
        caller=AGENCY_CALLERS,
    )
    def one(spec: QuerySpec | Raw, md: Metadata, caller: tuple[str, str]) -> None:
        message = spec if isinstance(spec, Raw) else spec.build(people)
        pairs = sent(h, md)
        result = h.unary(*caller, QUERY, exchange_pb2.QueryResponse, message, pairs)
        check(result, pairs, f"Query {spec!r}")
        if result.ok and not isinstance(message, Raw):
            answer = result.response
            assert answer.record.jws
            assert answer.record.payload
            assert answer.audit_id
            assert answer.record.sealer_region == message.provider_region
            assert set(json.loads(answer.record.payload)) == set(answer.fields)
            if message.fields:  # minimised: never more than was asked for
                assert set(answer.fields) <= set(message.fields)

    one()
    h.assert_healthy()


# -- DataExchange.BatchQuery ---------------------------------------------------------------------
def test_batch_query(harness: Harness) -> None:
    h = harness
    people = subjects(h)
    example = exchange_pb2.BatchQueryRequest(
        items=[
            QuerySpec("500000", "si.participation", "SI-TRANSFER", "x", (), "", "r").build(people)
        ],
        request_id="b",
    )
    items = st.lists(queries(huge=False), max_size=24) | st.lists(queries(), max_size=2)

    @fuzz_settings()
    @given(
        batch=mostly(st.tuples(items, request_ids()), raw_messages(example.SerializeToString())),
        md=metadata("sc.hrss"),
        caller=AGENCY_CALLERS,
    )
    def one(
        batch: tuple[list[QuerySpec], str] | Raw, md: Metadata, caller: tuple[str, str]
    ) -> None:
        if isinstance(batch, Raw):
            message: Any = batch
        else:
            message = exchange_pb2.BatchQueryRequest(
                items=[spec.build(people) for spec in batch[0]], request_id=fresh(batch[1])
            )
        pairs = sent(h, md)
        result = h.unary(*caller, BATCH, exchange_pb2.BatchQueryResponse, message, pairs)
        check(result, pairs, f"BatchQuery {batch!r}")
        if result.ok:
            answered = result.response.items
            expected = len(message.items) if not isinstance(message, Raw) else len(answered)
            assert [r.index for r in answered] == list(range(expected))
            for item in answered:
                check_item_status(item.status, f"BatchQuery item {item.index}")
                if item.status.code == 0:
                    assert item.response.record.jws
                    assert item.response.audit_id
                else:
                    assert not item.HasField("response")

    one()
    h.assert_healthy()


# -- Peer.Forward --------------------------------------------------------------------------------
def test_peer_forward(harness: Harness) -> None:
    h = harness
    people = subjects(h)
    example = exchange_pb2.ForwardRequest(
        query=QuerySpec("330000", "si.participation", "SI-TRANSFER", "x", (), "", "r").build(
            people
        ),
        caller=common_pb2.CallerIdentity(agency_id="sc.hrss", region="510000"),
        requesting_region="510000",
    )
    example = sign_forward_message(h.fed, example)  # raw mutations of a signed request
    thumbprints = st.one_of(
        st.sampled_from([h.cluster.thumbprint("sc.hrss"), h.cluster.thumbprint("cq.hrss")]),
        texts(huge=False),
    )
    identities = st.builds(
        common_pb2.CallerIdentity,
        agency_id=st.one_of(st.sampled_from(AGENCIES), texts(*AGENCIES)),
        region=texts(*REGIONS),
        operator=texts("经办人 张三"),
        certificate_thumbprint=thumbprints,
    )
    # A peer gateway's certificate ("510000" calling 330000's gateway) mostly, sometimes an
    # agency's or the provider's own gateway certificate.
    callers = st.sampled_from(
        [("510000", "330000")] * 8
        + [("500000", "330000"), ("510000", "500000"), ("sc.hrss", "330000"), ("330000", "330000")]
    )

    forwards = mutated(
        {
            "query": QuerySpec(
                "330000", "si.participation", "SI-TRANSFER", "<valid>", (), "C-1", FRESH
            ),
            "caller": common_pb2.CallerIdentity(
                agency_id="sc.hrss",
                region="510000",
                operator="经办人 张三",
                certificate_thumbprint=h.cluster.thumbprint("sc.hrss"),
            ),
            "requesting_region": "510000",
            "linked": "",
            "credential": "",
        },
        {
            "query": queries(regions=("330000", "500000")),
            "caller": identities,
            "requesting_region": texts(*REGIONS),
            "linked": texts("audit.tongban/510000#1"),
            "credential": texts(*CREDENTIAL_TYPES),
        },
    )

    @fuzz_settings()
    @given(
        parts=mostly(forwards, raw_messages(example.SerializeToString())),
        caller=callers,
    )
    def one(parts: Any, caller: tuple[str, str]) -> None:
        if isinstance(parts, Raw):
            message: Any = parts
        else:
            message = exchange_pb2.ForwardRequest(
                query=parts["query"].build(people),
                caller=parts["caller"],
                requesting_region=parts["requesting_region"],
                requesting_gateway_audit_id=parts["linked"],
                credential_type=parts["credential"],
            )
            # signed by the requesting region's audit key, as its gateway does: the owner's
            # checks past the signature are what is fuzzed
            message = sign_forward_message(h.fed, message)
        result = h.unary(*caller, FORWARD, exchange_pb2.ForwardResponse, message)
        check_contract(result, f"Forward {parts!r} as {caller}")
        if result.ok:
            assert caller[0].isdigit()
            assert caller[0] == message.requesting_region
            assert result.response.record.sealer_region == caller[1]
            assert result.response.audit_id
            assert result.response.record.jws

    one()
    h.assert_healthy()


# -- Credentials.Fetch ---------------------------------------------------------------------------
def test_credentials_fetch(harness: Harness) -> None:
    h = harness
    people = subjects(h)
    licence_holder = people[("330000", "market.business_licence")]
    example = credentials_pb2.FetchCredentialRequest(
        issuing_region="330000",
        credential_type="business_licence",
        subject_id=licence_holder,
        request_id="r",
    )

    @fuzz_settings()
    @given(
        parts=mostly(
            mutated(
                {
                    "issuing_region": "330000",
                    "credential_type": "business_licence",
                    "subject_id": licence_holder,
                    "purpose": "",
                    "case_id": "CASE-1",
                    "request_id": FRESH,
                },
                {
                    "issuing_region": texts(*REGIONS),
                    "credential_type": texts(*CREDENTIAL_TYPES),
                    "subject_id": texts(licence_holder),
                    "purpose": texts(*PURPOSES),
                    "case_id": texts("CASE-1"),
                    "request_id": request_ids(),
                },
            ),
            raw_messages(example.SerializeToString()),
        ),
        md=metadata("sc.amr"),
        caller=st.sampled_from(
            [("sc.amr", "510000")] * 5 + [("sc.hrss", "510000"), ("330000", "330000")]
        ),
    )
    def one(parts: Any, md: Metadata, caller: tuple[str, str]) -> None:
        if isinstance(parts, Raw):
            message: Any = parts
        else:
            message = credentials_pb2.FetchCredentialRequest(
                **{**parts, "request_id": fresh(parts["request_id"])}
            )
        pairs = sent(h, md)
        result = h.unary(*caller, FETCH, credentials_pb2.FetchCredentialResponse, message, pairs)
        check(result, pairs, f"Fetch {parts!r}")
        if result.ok:
            answer = result.response
            assert answer.credential.jws
            assert answer.audit_id
            assert answer.report.indication == credentials_pb2.TOTAL_PASSED

    one()
    h.assert_healthy()


# -- Credentials.Verify --------------------------------------------------------------------------
def genuine_seals(h: Harness) -> tuple[list[str], list[bytes], list[bytes]]:
    """Real seals of 330000 (attached and detached), their payloads, and DER certificates of
    the federation (seal and TLS) to put in headers."""
    seals: list[str] = []
    payloads_: list[bytes] = []
    for detached in (False, True):
        for payload in (b'{"licence":"ok"}', b"\x00binary\xff"):
            result = h.unary(
                "zj.hrss",
                "330000",
                SEAL,
                credentials_pb2.SealResponse,
                credentials_pb2.SealRequest(payload=payload, detached=detached),
            )
            assert result.ok, result
            seals.append(result.response.record.jws)
            payloads_.append(payload)
    ders: list[bytes] = []
    inventory = h.fed.inventory()
    for owner, usage in (
        ("330000", KeyUsage.SEAL),
        ("zj.hrss", KeyUsage.TLS),
        ("510000", KeyUsage.TOKEN),
    ):
        (record,) = inventory.find(owner, usage, KeyState.ACTIVE)
        chain = x509.load_pem_x509_certificates((h.fed.pki / record.certificate).read_bytes())
        ders.extend(c.public_bytes(Encoding.DER) for c in chain)
    return seals, payloads_, ders


def signed_content(jws: str) -> tuple[bytes, bytes] | None:
    """(header bytes, payload bytes) of a compact JWS, decoded leniently; None if it is not."""
    parts = jws.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        return tuple(  # type: ignore[return-value]
            base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in parts[:2]
        )
    except ValueError:
        return None


def test_credentials_verify(harness: Harness) -> None:
    h = harness
    seals, sealed_payloads, certificates = genuine_seals(h)
    genuine_content = {signed_content(s) for s in seals}
    example = credentials_pb2.VerifyRequest(jws=seals[0])

    @fuzz_settings()
    @given(
        parts=mostly(
            st.tuples(
                jws_texts(certificates, len(seals)),
                st.one_of(st.just(b""), st.sampled_from(sealed_payloads), payloads()),
                mostly(st.none(), timestamps(), one_in=3),
            ),
            raw_messages(example.SerializeToString()),
        ),
        caller=st.sampled_from(
            [
                ("sc.hrss", "510000"),
                ("zj.hrss", "330000"),
                ("500000", "330000"),
                ("cq.data", "500000"),
            ]
        ),
    )
    def one(parts: Any, caller: tuple[str, str]) -> None:
        if isinstance(parts, Raw):
            message: Any = parts
        else:
            jws, detached, when = parts
            if isinstance(jws, Mutation):
                jws = jws.apply(seals)
            elif isinstance(jws, HeaderEdit):
                jws = apply_header_edit(jws, seals)
            message = credentials_pb2.VerifyRequest(jws=jws, detached_payload=detached)
            if when is not None:
                message.validation_time.CopyFrom(when)
        result = h.unary(*caller, VERIFY, credentials_pb2.ValidationReport, message)
        check_contract(result, f"Verify {parts!r}")
        if isinstance(message, Raw):
            return
        if not result.ok:  # a failed verification is a report, not an error
            assert result.code is grpc.StatusCode.INVALID_ARGUMENT, result
            assert result.reason in ("INVALID_ARGUMENT_FORMAT", "REQUEST_TOO_LARGE"), result
            return
        report = result.response
        assert report.indication != credentials_pb2.INDICATION_UNSPECIFIED
        if report.indication == credentials_pb2.TOTAL_PASSED:  # never for a tampered seal
            assert signed_content(message.jws) in genuine_content, message.jws[:200]
            assert report.owner_region == "330000"

    one()
    h.assert_healthy()


# -- Credentials.Seal ----------------------------------------------------------------------------
def test_credentials_seal(harness: Harness) -> None:
    h = harness
    example = credentials_pb2.SealRequest(payload=b"{}", content_type="application/json")

    @fuzz_settings()
    @given(
        parts=mostly(
            st.tuples(
                payloads(),
                mostly(
                    st.sampled_from(["", "application/json", "application/pdf; charset=utf-8"]),
                    texts("application/json", 'text/plain; a="b"'),
                    one_in=3,
                ),
                st.booleans(),
            ),
            raw_messages(example.SerializeToString()),
        ),
        caller=st.sampled_from(
            [("zj.hrss", "330000")] * 5
            + [("sc.hrss", "510000"), ("330000", "330000"), ("sc.hrss", "330000")]
        ),
    )
    def one(parts: Any, caller: tuple[str, str]) -> None:
        if isinstance(parts, Raw):
            message: Any = parts
        else:
            payload, content_type, detached = parts
            message = credentials_pb2.SealRequest(
                payload=payload, content_type=content_type, detached=detached
            )
        result = h.unary(*caller, SEAL, credentials_pb2.SealResponse, message)
        check_contract(result, f"Seal {parts!r} as {caller}")
        if result.ok:
            record = result.response.record
            assert record.sealer_region == caller[1]
            assert record.jws
            if not isinstance(message, Raw):
                assert record.payload == message.payload
                assert (record.jws.split(".")[1] == "") == message.detached

    one()
    h.assert_healthy()
