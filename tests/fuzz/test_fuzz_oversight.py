"""Property-based fuzzing of `Oversight` and `Registry.GetSnapshot` over real mutual TLS.

The same properties as test_fuzz_rpcs.py (never UNKNOWN or INTERNAL, never a hang, every error
with its ErrorInfo, the gateways healthy afterwards), on a cluster of its own whose 浙江 audit
log is seeded with allowed, denied and sealed records first: `VerifyAudit` rehashes the whole log
on every call, so it must not share a log that the query fuzzing grows by thousands of records.
"""

from __future__ import annotations

from typing import Any

import pytest
from fuzz.fuzz_support import Harness, bearer, check_contract, fuzz_settings
from fuzz.strategies import (
    AGENCIES,
    INT32,
    PURPOSES,
    REGIONS,
    UINT32,
    UINT64,
    Raw,
    mostly,
    mutated,
    raw_messages,
    texts,
    timestamps,
)
from hypothesis import given
from hypothesis import strategies as st
from query_support import request

from gateway.audit import verify_inclusion
from tongban.v1 import credentials_pb2, exchange_pb2, oversight_pb2, registry_pb2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fuzz,
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

QUERY_AUDIT = "/tongban.v1.Oversight/QueryAudit"
VERIFY_AUDIT = "/tongban.v1.Oversight/VerifyAudit"
GET_PROOF = "/tongban.v1.Oversight/GetProof"
SUBJECT_ACCESS = "/tongban.v1.Oversight/SubjectAccess"
SIGN_CHECKPOINT = "/tongban.v1.Oversight/SignCheckpoint"
GET_SNAPSHOT = "/tongban.v1.Registry/GetSnapshot"
SEEDED_SUBJECTS = 5


@pytest.fixture(scope="module", autouse=True)
def seeded(harness: Harness) -> list[str]:
    """浙江's audit log with records to find: for five citizens, 四川人社 asks 浙江 (allowed,
    then a field outside the purpose: denied), and 浙江's market regulator seals a document."""
    h = harness
    people = [h.cluster.subject("330000", "si.participation", n=i) for i in range(SEEDED_SUBJECTS)]
    for subject in people:
        for fields, code in (((), "OK"), (("marital_status",), "PERMISSION_DENIED")):
            query = request("330000", "si.participation", "SI-TRANSFER", subject, fields=fields)
            result = h.unary(
                "sc.hrss",
                "510000",
                "/tongban.v1.DataExchange/Query",
                exchange_pb2.QueryResponse,
                query,
                bearer(h.token("sc.hrss")),
            )
            assert result.code.name == code, result
        sealed = h.unary(
            "zj.amr",
            "330000",
            "/tongban.v1.Credentials/Seal",
            credentials_pb2.SealResponse,
            credentials_pb2.SealRequest(payload=subject.encode()),
        )
        assert sealed.ok
    return people


OVERSIGHT_CALLERS = st.sampled_from(
    [("zj.data", "330000")] * 6
    + [("zj.hrss", "330000"), ("sc.data", "330000"), ("330000", "330000")]
)


def page_tokens() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.integers(-5, 2**70).map(str),
        st.sampled_from(["²", "٣", "१२", "0x10", "1e3", " 1", "1_000", "９"]),
        st.integers(4_000, 6_000).map(lambda n: "9" * n),
        texts(huge=False),
    )


def test_oversight_query_audit(harness: Harness, seeded: list[str]) -> None:
    h = harness
    example = oversight_pb2.QueryAuditRequest(subject_id="x", page_size=5, page_token="1")

    @fuzz_settings()
    @given(
        message=mostly(
            mutated(
                {},
                {
                    "subject_id": st.sampled_from(seeded) | texts(),
                    "caller_agency": texts(*AGENCIES),
                    "provider_region": texts(*REGIONS),
                    "purpose": texts(*PURPOSES),
                    "dataset": texts("si.participation"),
                    "outcome": INT32,
                    "since": timestamps(),
                    "until": timestamps(),
                    "page_size": UINT32,
                    "page_token": page_tokens(),
                },
                max_changes=4,
            ).map(lambda fields: oversight_pb2.QueryAuditRequest(**fields)),
            raw_messages(example.SerializeToString()),
        ),
        caller=OVERSIGHT_CALLERS,
    )
    def one(message: Any, caller: tuple[str, str]) -> None:
        result = h.stream(*caller, QUERY_AUDIT, oversight_pb2.AuditRecord, message)
        check_contract(result, f"QueryAudit {message!r}")
        if result.ok:
            assert caller == ("zj.data", "330000")
            assert len(result.response) <= 1000

    one()
    h.assert_healthy()


def checkpoints() -> st.SearchStrategy[oversight_pb2.Checkpoint]:
    return st.builds(
        oversight_pb2.Checkpoint,
        origin=texts("audit.tongban/330000"),
        size=st.integers(0, 2**64 - 1) | st.integers(0, 50),
        root_hash=st.binary(max_size=64),
        note=texts("audit.tongban/330000\n1\nAAAA\n\n— audit-330000 AAAA\n"),
        signed_at=timestamps(),
        key_name=texts("audit-330000"),
    )


def test_oversight_verify_audit(harness: Harness) -> None:
    h = harness

    @fuzz_settings()
    @given(
        message=mostly(
            st.one_of(
                st.just(oversight_pb2.VerifyAuditRequest()),
                checkpoints().map(lambda c: oversight_pb2.VerifyAuditRequest(trusted_checkpoint=c)),
            ),
            raw_messages(
                oversight_pb2.VerifyAuditRequest(
                    trusted_checkpoint=oversight_pb2.Checkpoint(origin="o", size=1, note="n")
                ).SerializeToString()
            ),
        ),
        caller=OVERSIGHT_CALLERS,
    )
    def one(message: Any, caller: tuple[str, str]) -> None:
        result = h.unary(*caller, VERIFY_AUDIT, oversight_pb2.VerifyAuditResponse, message)
        check_contract(result, f"VerifyAudit {message!r}")
        if result.ok and not isinstance(message, Raw):
            answer = result.response
            # The log itself is intact; a forged "trusted" checkpoint is reported, not believed.
            if not message.HasField("trusted_checkpoint"):
                assert answer.intact, answer.problem
            elif not answer.intact:
                assert answer.problem

    one()
    h.assert_healthy()


def test_oversight_get_proof(harness: Harness) -> None:
    h = harness
    sizes = mostly(st.integers(0, 40), UINT64)

    @fuzz_settings()
    @given(
        message=mostly(
            st.one_of(
                st.just(oversight_pb2.GetProofRequest()),
                st.builds(
                    lambda i, n: oversight_pb2.GetProofRequest(
                        inclusion=oversight_pb2.InclusionProofRequest(index=i, tree_size=n)
                    ),
                    sizes,
                    sizes,
                ),
                st.builds(
                    lambda a, b: oversight_pb2.GetProofRequest(
                        consistency=oversight_pb2.ConsistencyProofRequest(
                            first_size=a, second_size=b
                        )
                    ),
                    sizes,
                    sizes,
                ),
            ),
            raw_messages(
                oversight_pb2.GetProofRequest(
                    inclusion=oversight_pb2.InclusionProofRequest(index=1, tree_size=2)
                ).SerializeToString()
            ),
        ),
        caller=OVERSIGHT_CALLERS,
    )
    def one(message: Any, caller: tuple[str, str]) -> None:
        result = h.unary(*caller, GET_PROOF, oversight_pb2.GetProofResponse, message)
        check_contract(result, f"GetProof {message!r}")
        if result.ok and not isinstance(message, Raw) and message.HasField("inclusion"):
            proof = result.response  # an inclusion proof given is one that holds
            verify_inclusion(
                proof.leaf_hash,
                message.inclusion.index,
                proof.tree_size,
                list(proof.hashes),
                proof.root_hash,
            )

    one()
    h.assert_healthy()


def test_oversight_subject_access(harness: Harness, seeded: list[str]) -> None:
    h = harness

    @fuzz_settings()
    @given(
        message=mostly(
            st.builds(
                lambda subject, since, until, size, token: oversight_pb2.SubjectAccessRequest(
                    subject_id=subject,
                    since=since,
                    until=until,
                    page_size=size,
                    page_token=token,
                ),
                st.sampled_from(seeded) | texts(),
                mostly(st.none(), timestamps(), one_in=3),
                mostly(st.none(), timestamps(), one_in=3),
                st.integers(0, 2**32 - 1),
                page_tokens(),
            ),
            raw_messages(oversight_pb2.SubjectAccessRequest(subject_id="x").SerializeToString()),
        ),
        caller=OVERSIGHT_CALLERS,
    )
    def one(message: Any, caller: tuple[str, str]) -> None:
        result = h.unary(*caller, SUBJECT_ACCESS, oversight_pb2.SubjectAccessResponse, message)
        check_contract(result, f"SubjectAccess {message!r}")
        if result.ok and not isinstance(message, Raw):
            assert len(result.response.entries) <= min(message.page_size or 100, 1000)

    one()
    h.assert_healthy()


def test_oversight_sign_checkpoint(harness: Harness) -> None:
    h = harness

    @fuzz_settings()
    @given(
        message=mostly(
            st.just(oversight_pb2.SignCheckpointRequest()),
            raw_messages(oversight_pb2.SignCheckpointRequest().SerializeToString()),
        ),
        caller=OVERSIGHT_CALLERS,
    )
    def one(message: Any, caller: tuple[str, str]) -> None:
        result = h.unary(*caller, SIGN_CHECKPOINT, oversight_pb2.SignCheckpointResponse, message)
        check_contract(result, f"SignCheckpoint {message!r}")
        if result.ok:
            assert result.response.checkpoint.key_name == "audit.tongban/330000"

    one()
    h.assert_healthy()


# -- Registry.GetSnapshot ------------------------------------------------------------------------
def test_registry_get_snapshot(harness: Harness) -> None:
    h = harness
    version = h.cluster.gateways["330000"].store.current().version

    @fuzz_settings()
    @given(
        message=mostly(
            st.builds(
                registry_pb2.GetSnapshotRequest,
                known_version=st.integers(0, 2**64 - 1) | st.integers(0, version + 2),
            ),
            raw_messages(registry_pb2.GetSnapshotRequest(known_version=1).SerializeToString()),
        ),
        caller=st.sampled_from(
            [
                ("510000", "330000"),
                ("zj.hrss", "330000"),
                ("sc.data", "510000"),
                ("cq.hrss", "500000"),
            ]
        ),
    )
    def one(message: Any, caller: tuple[str, str]) -> None:
        result = h.unary(*caller, GET_SNAPSHOT, registry_pb2.GetSnapshotResponse, message)
        check_contract(result, f"GetSnapshot {message!r}")
        if result.ok and not isinstance(message, Raw):
            answer = result.response
            if message.known_version >= version:
                assert answer.not_modified
                assert not answer.HasField("snapshot")
            else:
                assert answer.snapshot.version == version
                assert answer.snapshot.jws

    one()
    h.assert_healthy()
