"""Consent artefacts (issue 21, part 1) on three gateways in-process, with real Redis: 四川's
medical insurance (510000 medical.insurance) is marked requires_consent; 重庆 (500000) is the
citizen's home region, whose identity service issues the consent and whose gateway keeps the
register of revocations.

- no consent, a forged one, another subject's, another purpose's, an expired one: each refused
  with its own reason on the requesting gateway, audited; a valid one is answered and both
  gateways' records name the consent; the owner refuses a bad consent sent to it straight
  (Peer.Forward, signed by 重庆's gateway as a peer would)
- Consents.Register/List/Revoke as the citizen portal for the applicant: another applicant's
  portal token cannot revoke it; once revoked the home gateway refuses at once, the owner within
  its consent_status_seconds
- max_uses counted by the owner: one more is CONSENT_EXHAUSTED; a query that released no
  answer (the data system failed) uses nothing, nor does a refusal for an exhausted consent
- the artefact verifies with PyJWT's own JWS code and the registry's public key
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import redis.asyncio as redis
from cli_support import Run
from cryptography import x509
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import Federation, credentials_as, error_info, sign_forward_message

from gateway.audit import AuditQuery, Outcome
from gateway.consent import CONSENT_TYPE, ConsentUses, issue_consent, issue_region_consent
from gateway.errors import Refusal
from gateway.rpcs import CONSENTS_LIST
from registry import KeyState, KeyUsage
from signer import load_private_key
from tongban.v1 import common_pb2, consents_pb2, consents_pb2_grpc, exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

REDIS = "redis://127.0.0.1:6379/0"
OWNER, HOME = "510000", "500000"
MED = ("medical.insurance", "MED-REG")
FIELDS = ("citizen_id", "name", "status")
STATUS_SECONDS = 0.5  # the owner's consent_status_seconds in these tests


def consent(cluster: Cluster, subject: str, **claims: Any) -> str:
    """重庆's identity service's consent for 重庆's agencies over 四川's medical insurance."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "subject": subject,
        "purpose": MED[1],
        "datasets": [(OWNER, MED[0], FIELDS)],
        "regions": (HOME,),
        "not_before": now - timedelta(minutes=1),
        "expires_at": now + timedelta(hours=1),
        "max_uses": 10,
        "now": now,
        **claims,
    }
    return issue_region_consent(cluster.fed.pki, values.pop("home", HOME), **values)


def med_query(subject: str, artefact: str = "", **kwargs: Any) -> exchange_pb2.QueryRequest:
    query = request(OWNER, *MED, subject, fields=FIELDS, **kwargs)
    query.consent = artefact
    return query


async def refusal(cluster: Cluster, query: exchange_pb2.QueryRequest) -> tuple[str, str]:
    async with cluster.exchange("cq.hsa") as stub:
        try:
            await stub.Query(query, metadata=bearer(cluster.token("cq.hsa")), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, error_info(exc).reason
    return "OK", ""


async def answer(cluster: Cluster, query: exchange_pb2.QueryRequest) -> Any:
    async with cluster.exchange("cq.hsa") as stub:
        return await stub.Query(
            query, metadata=bearer(cluster.token("cq.hsa")), timeout=CALL_TIMEOUT
        )


async def records(cluster: Cluster, region: str, request_id: str) -> list[Any]:
    audit = cluster.gateways[region].audit
    assert audit is not None
    found = [r for _, r in await audit.store.query(AuditQuery(limit=5000))]
    return [r for r in found if r.request_id == request_id]


@dataclasses.dataclass
class Portal:
    cluster: Cluster

    async def call(self, applicant: str, method: str, message: Any) -> Any:
        async with grpc.aio.secure_channel(
            f"localhost:{self.cluster.ports[HOME]}",
            credentials_as(self.cluster.fed, "cq.hsa", HOME),
        ) as channel:
            stub = consents_pb2_grpc.ConsentsStub(channel)
            token = self.cluster.token("cq.hsa", applicant=applicant)
            return await getattr(stub, method)(
                message, metadata=bearer(token), timeout=CALL_TIMEOUT
            )


@pytest.fixture
async def cluster(federation: Federation, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as made:
        for gateway in made.gateways.values():
            assert gateway.query_path is not None
            gateway.query_path.consents.status_seconds = STATUS_SECONDS
        yield made


async def test_a_consent_is_required_checked_by_both_gateways_and_named_in_the_audit(
    cluster: Cluster,
) -> None:
    citizen = cluster.subject(OWNER, MED[0])
    other = cluster.subject(OWNER, MED[0], n=1)
    # no consent: refused by the requesting gateway, audited there, nothing forwarded
    query = med_query(citizen)
    assert await refusal(cluster, query) == ("PERMISSION_DENIED", "CONSENT_REQUIRED")
    [record] = await records(cluster, HOME, query.request_id)
    assert (record.outcome.value, record.reason, record.consent_id) == (
        "denied",
        "CONSENT_REQUIRED",
        "",
    )
    assert await records(cluster, OWNER, query.request_id) == []
    # forged: signed by a key that is not 重庆's token key (its audit key's registry kid)
    inventory = cluster.fed.inventory()
    (token_key,) = inventory.find(HOME, KeyUsage.TOKEN, KeyState.ACTIVE)
    stranger = load_private_key(
        cluster.fed.pki / inventory.find(HOME, KeyUsage.SEAL)[0].private_key
    )
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "region": HOME,
        "subject": citizen,
        "purpose": MED[1],
        "datasets": [(OWNER, MED[0], FIELDS)],
        "regions": (HOME,),
        "not_before": now,
        "expires_at": now + timedelta(hours=1),
        "max_uses": 3,
        "now": now,
    }
    forged = issue_consent(stranger, token_key.kid, **claims)  # type: ignore[arg-type]
    cases = {
        "forged": (forged, "CONSENT_INVALID"),
        "another citizen's": (consent(cluster, other), "CONSENT_MISMATCH"),
        "another purpose": (consent(cluster, citizen, purpose="SI-TRANSFER"), "CONSENT_MISMATCH"),
        "fewer fields": (
            consent(cluster, citizen, datasets=[(OWNER, MED[0], ("name",))]),
            "CONSENT_MISMATCH",
        ),
        "another region's agencies": (
            consent(cluster, citizen, regions=("330000",)),
            "CONSENT_MISMATCH",
        ),
        "expired": (
            consent(
                cluster,
                citizen,
                not_before=now - timedelta(hours=2),
                expires_at=now - timedelta(hours=1),
                now=now - timedelta(hours=2),
            ),
            "CONSENT_INVALID",
        ),
    }
    for name, (artefact, reason) in cases.items():
        query = med_query(citizen, artefact)
        assert await refusal(cluster, query) == ("PERMISSION_DENIED", reason), name
        [record] = await records(cluster, HOME, query.request_id)
        assert (record.outcome.value, record.reason) == ("denied", reason), name
    # a valid one: answered; both gateways' records name it, neither the subject
    consent_id = f"c-{secrets.token_hex(8)}"
    good = consent(cluster, citizen, consent_id=consent_id)
    query = med_query(citizen, good)
    answered = await answer(cluster, query)
    assert set(answered.fields) == set(FIELDS)
    assert not answered.cache_hit
    for region in (HOME, OWNER):
        [record] = await records(cluster, region, query.request_id)
        assert (record.outcome.value, record.consent_id) == ("allowed", consent_id), region
        assert citizen.encode() not in record.canonical
    # again: never from the requesting gateway's cache (the owner counts every use)
    query = med_query(citizen, good)
    await answer(cluster, query)
    [record] = await records(cluster, OWNER, query.request_id)  # forwarded, counted there
    assert record.consent_id == consent_id
    # the owner decides again: a bad consent forwarded to it straight is refused there
    for artefact, reason in (
        (forged, "CONSENT_INVALID"),
        (consent(cluster, other), "CONSENT_MISMATCH"),
    ):
        direct = med_query(citizen, artefact)
        message = sign_forward_message(cluster.fed, forward_of(direct))
        code, refused = await forward(cluster, message)
        assert (code, refused) == ("PERMISSION_DENIED", reason)
        [record] = await records(cluster, OWNER, direct.request_id)
        assert (record.outcome.value, record.reason) == ("denied", reason)
    # the signed request covers the consent: another one beside it is refused
    swapped = sign_forward_message(cluster.fed, forward_of(med_query(citizen, good)))
    swapped.query.consent = consent(cluster, citizen)
    assert await forward(cluster, swapped) == ("INVALID_ARGUMENT", "REQUEST_PAYLOAD_MISMATCH")


def forward_of(query: exchange_pb2.QueryRequest) -> exchange_pb2.ForwardRequest:
    thumbprint = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return exchange_pb2.ForwardRequest(
        query=query,
        caller=common_pb2.CallerIdentity(
            agency_id="cq.hsa",
            region=HOME,
            operator="经办人 张三",
            certificate_thumbprint=thumbprint,
        ),
        requesting_region=HOME,
    )


async def forward(cluster: Cluster, message: exchange_pb2.ForwardRequest) -> tuple[str, str]:
    async with grpc.aio.secure_channel(
        f"localhost:{cluster.ports[OWNER]}", credentials_as(cluster.fed, HOME, OWNER)
    ) as channel:
        try:
            await exchange_pb2_grpc.PeerStub(channel).Forward(message, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, error_info(exc).reason
    return "OK", ""


async def test_a_revoked_consent_is_refused_everywhere_and_uses_are_counted(
    cluster: Cluster,
) -> None:
    citizen = cluster.subject(OWNER, MED[0], n=2)
    other = cluster.subject(OWNER, MED[0], n=3)
    portal = Portal(cluster)
    artefact = consent(cluster, citizen, max_uses=10)
    kept = await portal.call(
        citizen, "Register", consents_pb2.RegisterConsentRequest(consent=artefact)
    )
    consent_id = kept.consent_id
    assert (list(kept.datasets), kept.purpose, kept.max_uses, kept.revoked) == (
        [f"{OWNER}/{MED[0]}"],
        MED[1],
        10,
        False,
    )
    listed = await portal.call(citizen, "List", consents_pb2.ListConsentsRequest())
    assert [c.consent_id for c in listed.consents] == [consent_id]
    assert (await portal.call(other, "List", consents_pb2.ListConsentsRequest())).consents == []
    # each List shows a citizen's data: each is audited, under that citizen's pseudonym
    home = cluster.gateways[HOME].audit
    assert home is not None
    lists = [r for _, r in await home.store.query(AuditQuery(limit=5000)) if r.rpc == CONSENTS_LIST]
    assert [r.outcome for r in lists] == [Outcome.ALLOWED, Outcome.ALLOWED]
    assert lists[0].subject != lists[1].subject
    assert all(len(r.subject) == 64 and citizen not in r.canonical.decode() for r in lists)
    # answered while in force; the owner learns it is not revoked (kept STATUS_SECONDS)
    await answer(cluster, med_query(citizen, artefact))
    # another applicant's portal token cannot revoke it (told as for an unknown id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await portal.call(other, "Revoke", consents_pb2.RevokeConsentRequest(consent_id=consent_id))
    assert error_info(caught.value).reason == "CONSENT_MISMATCH"
    await answer(cluster, med_query(citizen, artefact))
    revoked = await portal.call(
        citizen, "Revoke", consents_pb2.RevokeConsentRequest(consent_id=consent_id)
    )
    assert revoked.revoked
    assert revoked.revoked_at.seconds > 0
    # the home gateway (the requester here) refuses at once
    query = med_query(citizen, artefact)
    assert await refusal(cluster, query) == ("PERMISSION_DENIED", "CONSENT_REVOKED")
    [record] = await records(cluster, HOME, query.request_id)
    assert (record.reason, record.consent_id) == ("CONSENT_REVOKED", consent_id)
    # the owner, asked straight, within its consent_status_seconds
    await asyncio.sleep(STATUS_SECONDS)
    direct = med_query(citizen, artefact)
    assert await forward(cluster, sign_forward_message(cluster.fed, forward_of(direct))) == (
        "PERMISSION_DENIED",
        "CONSENT_REVOKED",
    )
    [record] = await records(cluster, OWNER, direct.request_id)
    assert (record.reason, record.consent_id) == ("CONSENT_REVOKED", consent_id)
    # uses: two allowed, the third refused by the owner (passed on by the requester)
    twice = consent(cluster, other, max_uses=2)
    for _ in range(2):
        await answer(cluster, med_query(other, twice))
    query = med_query(other, twice)
    assert await refusal(cluster, query) == ("PERMISSION_DENIED", "CONSENT_EXHAUSTED")
    [record] = await records(cluster, OWNER, query.request_id)
    assert record.reason == "CONSENT_EXHAUSTED"


class FailingDataSystem:
    """A data system that fails every fetch, as one that is down does."""

    async def fetch(self, *_: Any) -> Any:
        raise Refusal("PROVIDER_UNAVAILABLE", "the data system is down (a test)")


async def test_a_query_that_released_no_answer_uses_nothing_of_the_consent(
    cluster: Cluster,
) -> None:
    """A consent is used by the answers it let out: a query the data system failed gives its
    use back, and so does a query refused because the consent was used up. With max_uses 1,
    two failed queries leave the use for the third, which is answered; the fourth is
    CONSENT_EXHAUSTED, and the owner's count in Redis stays at the one use made. Three queries
    at once under a consent of one use: one is answered."""
    citizen = cluster.subject(OWNER, MED[0], n=4)
    once = consent(cluster, citizen, max_uses=1)
    owner = cluster.gateways[OWNER].query_path.owner  # type: ignore[union-attr]
    working, owner.data_system = owner.data_system, FailingDataSystem()
    try:
        for _ in range(2):
            failed = med_query(citizen, once)
            assert await refusal(cluster, failed) == ("UNAVAILABLE", "PROVIDER_UNAVAILABLE")
    finally:
        owner.data_system = working
    [record] = await records(cluster, OWNER, failed.request_id)
    assert (record.outcome, record.reason) == (Outcome.FAILED, "PROVIDER_UNAVAILABLE")
    consent_id = record.consent_id
    assert consent_id
    await answer(cluster, med_query(citizen, once))
    for _ in range(2):
        assert await refusal(cluster, med_query(citizen, once)) == (
            "PERMISSION_DENIED",
            "CONSENT_EXHAUSTED",
        )
    # Three at once under a fresh consent of one use: one answered, the two others exhausted.
    other = cluster.subject(OWNER, MED[0], n=5)
    single = consent(cluster, other, max_uses=1)
    queries = [med_query(other, single) for _ in range(3)]
    outcomes = await asyncio.gather(*(refusal(cluster, query) for query in queries))
    assert sorted(outcomes) == [
        ("OK", ""),
        ("PERMISSION_DENIED", "CONSENT_EXHAUSTED"),
        ("PERMISSION_DENIED", "CONSENT_EXHAUSTED"),
    ]
    [record] = await records(cluster, OWNER, queries[0].request_id)
    client = redis.Redis.from_url(REDIS)
    try:
        for used in (consent_id, record.consent_id):
            assert int(await client.get(ConsentUses.key(used))) == 1
    finally:
        await client.aclose()


def test_the_artefact_verifies_with_pyjwt_and_the_registry_key(
    federation: Federation, run: Run
) -> None:
    """`tongban consent issue`'s artefact verifies with an independent JWS implementation
    (PyJWT) and the public key of the home region's token certificate: the format is plain
    JWS, not only our reading of it."""
    subject = "11010519491231002X"
    code, out, err = run(
        "consent", "issue", "--pki", federation.pki, "--region", HOME, "--subject", subject,
        "--purpose", MED[1], "--dataset", f"{OWNER}/{MED[0]}:{','.join(FIELDS)}",
        "--agency", "cq.hsa", "--valid", "1d", "--max-uses", "3",
    )  # fmt: skip
    assert code == 0, err
    assert subject not in err
    artefact = out.strip()
    inventory = federation.inventory()
    (token_key,) = inventory.find(HOME, KeyUsage.TOKEN, KeyState.ACTIVE)
    certificate = x509.load_pem_x509_certificates(
        (federation.pki / token_key.certificate).read_bytes()
    )[0]
    header = jwt.get_unverified_header(artefact)
    assert (header["typ"], header["kid"]) == (CONSENT_TYPE, token_key.kid)
    claims = jwt.decode(
        artefact,
        certificate.public_key(),  # type: ignore[arg-type]
        algorithms=[header["alg"]],
        options={"verify_aud": False},
    )
    assert claims["iss"] == f"urn:tongban:idp:{HOME}"
    assert claims["sub"] == subject
    assert claims["datasets"] == [{"region": OWNER, "dataset": MED[0], "fields": sorted(FIELDS)}]
    assert (claims["agencies"], claims["regions"], claims["max_uses"]) == (["cq.hsa"], [], 3)
    payload = jwt.api_jws.decode(artefact, certificate.public_key(), algorithms=[header["alg"]])  # type: ignore[arg-type]
    assert b'"jti"' in payload
    tampered = artefact[:-4] + ("AAAA" if not artefact.endswith("AAAA") else "BBBB")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.api_jws.decode(tampered, certificate.public_key(), algorithms=[header["alg"]])  # type: ignore[arg-type]
