"""Seal-key and TLS-certificate rotation of one region while queries flow (issue 9, item 3).

重庆 (500000) owns the data the other regions ask for. While agencies of 四川 and 浙江 query it
continuously (over their gateways' pooled peer channels), 重庆's own agencies query the others
through it (its client certificate), and one more stream opens a new channel for every query
(a new TLS handshake with 重庆's gateway each time), the security team rotates both keys the
way `docs/security.md` describes:

1. a successor seal key and a successor TLS key are issued by 重庆's CA and recorded `pending`;
2. the gateway takes the successor seal key (what SIGHUP does: `reload_seal_keys`);
3. a publish carries both successors, pending: every gateway learns them;
4. the next publish makes them active (the old ones retiring): new answers are sealed by the
   new key;
5. the gateway takes the now-active TLS key (`reload_tls`): new handshakes are served the new
   certificate, and its calls to peers present it;
6. one more publish makes the peers build new channels to 重庆: they handshake with the new
   certificate too. It also carries a new trusted root (issue 17): province 2's authority key
   leaves, a newcomer's joins, root 2 is signed by 2 of root 1's keys and 2 of its own, and every
   gateway follows from root 1 to root 2 while the queries flow.

Nothing may fail: zero refused requests, zero failed handshakes, and every sealed answer the
clients received verifies against the final registry (old key retiring, new key active); the
gateways' own verification counters show no failure either. Every stream is answered before
the rotation, between its steps and after it; how many answers that takes depends on the
machine, so no count or rate is asserted (a loaded machine sends fewer, never fails more). The
time limit only catches a hang; the one-line report (with -s) gives the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from fault_support import (
    BAD_CODES,
    Tally,
    bad_server_codes,
    check_audit_ids,
    held_subjects,
    pump,
    query_maker,
    running_gateways,
    wait_until,
)
from query_support import Cluster, bearer
from support import Federation, make_federation

from gateway.config import GatewayConfig
from gateway.demo.config import config_for_dev_pki
from gateway.sealing import SealFormat, check_region_seal
from gateway.services.exchange import seal_format
from registry import (
    Inventory,
    KeyUsage,
    RegistryTrust,
    SnapshotVerifier,
    authority_key_id,
    load_trusted_root,
    next_root,
    read_root,
    rotate_key,
    sign_root,
)
from signer import (
    GmVerifier,
    Indication,
    SealVerifier,
    SignatureKind,
    load_private_key,
    write_private_key,
    x5t_s256_of_certificate,
)

pytestmark = pytest.mark.integration

OWNER = "500000"  # 重庆: the region whose keys rotate
TEST_SECONDS = 180.0  # a hang guard for the whole test, set-up and tear-down included
WAIT_SECONDS = 60.0  # for an expected answer or registry version; a hang guard, not a bound
CALL_TIMEOUT = 5.0
# two 四川 streams at 4 calls a second at most: 480 a minute, under CY-SI-2026's 600
RATE = 4.0
FLOOR = 5  # answers a stream in each phase of the rotation, at least
SI = ("si.participation", "SI-TRANSFER")
LICENCE = ("market.business_licence", "LICENCE-VERIFY")
# (agency, provider region, (dataset, purpose), first subject)
STREAMS = [
    ("sc.hrss", OWNER, SI, 0),  # 四川 asks 重庆 (510000's peer channel)
    ("sc.hrss", OWNER, SI, 100),
    ("zj.amr", OWNER, LICENCE, 0),  # 浙江 asks 重庆 (330000's peer channel)
    ("cq.amr", "330000", LICENCE, 0),  # 重庆 asks 浙江: 重庆's client certificate
]
FRESH = ("cq.hrss", "510000", SI, 0)  # 重庆 asks 四川, a new channel (handshake) per call


def rotate_root(federation: Federation) -> None:
    """Root 2: without province 2's key, with a newcomer's (kept in the folder, so the next
    publish signs with it), signed by national + province 1 (old) and province 1 + newcomer."""
    authority = federation.pki / "authority"
    keys = {}
    for name in ("national", "province-1", "province-2"):
        key = load_private_key(authority / f"{name}.key")
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        keys[name] = key
    newcomer = ed25519.Ed25519PrivateKey.generate()
    (authority / "province-2.key").unlink()  # lost
    write_private_key(authority / "province-3.key", newcomer)
    installed = read_root(authority / "root.json").root
    made = next_root(
        installed,
        add=[(newcomer.public_key(), "440000 security team")],
        remove=[authority_key_id(keys["province-2"].public_key())],
        now=datetime.now(UTC),
    )
    for signer_key in (keys["national"], keys["province-1"], newcomer):
        made = sign_root(made, signer_key, previous=installed)
    (authority / "root-2.json").write_bytes(made.to_bytes())


def answered_on_every_stream(tally: Tally, phase: str) -> bool:
    """Every stream of the test has had FLOOR answers to queries it sent in `phase`: each step
    of the rotation is taken under traffic on every stream, however slow the machine."""
    streams = {f"{agency}->{provider}" for agency, provider, *_ in STREAMS}
    streams.add(f"{FRESH[0]}->{FRESH[1]} (new channel each)")
    answered = Counter(s.stream for s in tally.where(phase_sent=phase) if s.ok)
    return all(answered[name] >= FLOOR for name in streams)


def served_certificate(fed: Federation, port: int) -> str:
    """The x5t#S256 of the certificate a new TLS handshake with 重庆's gateway presents."""
    chain, key = fed.tls_files("cq.hrss")
    context = ssl.create_default_context(cafile=str(fed.pki / f"regions/{OWNER}/ca/root.pem"))
    context.load_cert_chain(str(chain), str(key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x5t_s256_of_certificate(x509.load_der_x509_certificate(der))


def seal_failures(cluster: Cluster) -> dict[str, float]:
    """Seal verifications each gateway counted that did not pass."""
    out = {}
    for region, gateway in cluster.gateways.items():
        failed = 0.0
        for metric in gateway.metrics.registry.collect():
            if metric.name != "tongban_seal_verifications":
                continue
            for sample in metric.samples:
                if (
                    sample.name.endswith("_total")
                    and sample.labels["indication"] != Indication.TOTAL_PASSED.value
                ):
                    failed += sample.value
        out[region] = failed
    return out


def seal_passes(cluster: Cluster) -> float:
    return sum(
        gateway.metrics.registry.get_sample_value(
            "tongban_seal_verifications_total",
            {"indication": Indication.TOTAL_PASSED.value, "sub_indication": ""},
        )
        or 0.0
        for gateway in cluster.gateways.values()
    )


@pytest.mark.parametrize("seal_algorithm", ["ES256", "SM2"])
async def test_seal_key_and_tls_certificate_rotation_under_load(
    seal_algorithm: str, tmp_path: Path
) -> None:
    """Also with SM2 seal keys (issue 16): the answers are GB/T 38540 SES_Signatures, the
    successor is an SM2 key with its own SESeal, and no request is lost either."""
    federation = make_federation(tmp_path / "federation", seal_algorithm=seal_algorithm)
    federation.publish()
    tally = Tally(f"rotation of {OWNER}'s {seal_algorithm} seal key and TLS certificate under load")
    old_seal = federation.active(OWNER, KeyUsage.SEAL)
    old_tls = federation.active(OWNER, KeyUsage.TLS)
    probes: list[str] = []  # the certificate each probe handshake was served
    async with (
        asyncio.timeout(TEST_SECONDS),
        running_gateways(federation, tmp_path) as cluster,
    ):
        owner = cluster.gateways[OWNER]
        port = cluster.ports[OWNER]

        async def probe() -> str:
            kid = await asyncio.to_thread(served_certificate, federation, port)
            probes.append(kid)
            return kid

        async def everyone_holds(version: int) -> None:
            await wait_until(
                lambda: all(g.store.status().version == version for g in cluster.gateways.values()),
                f"every gateway to take registry version {version}",
                WAIT_SECONDS,
            )

        def reread() -> GatewayConfig:
            return config_for_dev_pki(
                federation.pki,
                OWNER,
                listen=owner.config.listen,
                snapshot_file=federation.current,
                bind_queries=False,  # as its first start (made-up case ids)
            )

        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            tasks = []
            for agency, provider, (dataset, purpose), first in [*STREAMS, FRESH]:
                fresh = (agency, provider) == FRESH[:2]
                stub: Any = (
                    (lambda agency=agency: cluster.exchange(agency))
                    if fresh
                    else await stack.enter_async_context(cluster.exchange(agency))
                )
                subjects = held_subjects(provider, dataset, 600)  # new subjects: new seals
                tasks.append(
                    asyncio.create_task(
                        pump(
                            tally,
                            f"{agency}->{provider}" + (" (new channel each)" if fresh else ""),
                            stub,
                            query_maker(provider, dataset, purpose, subjects, offset=first),
                            bearer(cluster.token(agency)),
                            stop=stop,
                            timeout=CALL_TIMEOUT,
                            rate=RATE,
                        )
                    )
                )
            try:
                tally.enter("before")
                await wait_until(
                    lambda: answered_on_every_stream(tally, "before"),
                    "answers on every stream before the rotation",
                    WAIT_SECONDS,
                )
                assert await probe() == old_tls

                # 1. The successors, issued by 重庆's CA, recorded pending.
                now = datetime.now(UTC)
                issued = {
                    usage: rotate_key(federation.pki, OWNER, KeyUsage(usage), now=now).successor
                    for usage in ("seal", "tls")
                }
                new_seal, new_tls = issued["seal"].kid, issued["tls"].kid
                # 2. The gateway holds the successor seal key (SIGHUP).
                assert set(owner.reload_seal_keys(reread().seal_keys)) == {old_seal, new_seal}
                # 3. Published pending.
                federation.publish()
                await everyone_holds(2)
                tally.enter("pending")
                await wait_until(
                    lambda: answered_on_every_stream(tally, "pending"),
                    "answers on every stream with the successors pending",
                    WAIT_SECONDS,
                )
                # 4. Active: new answers are sealed by the successor.
                federation.publish()
                await everyone_holds(3)
                tally.enter("seal rotated")
                assert federation.active(OWNER, KeyUsage.SEAL) == new_seal
                assert federation.active(OWNER, KeyUsage.TLS) == new_tls
                await wait_until(
                    lambda: answered_on_every_stream(tally, "seal rotated"),
                    "answers on every stream with the new seal key active",
                    WAIT_SECONDS,
                )
                # 5. The gateway serves (and calls peers with) the now-active TLS key.
                assert owner.reload_tls(reread()) == new_tls
                tally.enter("tls rotated")
                assert await probe() == new_tls
                # 6. One more publish: the peers' channels to 重庆 are built anew; with root 2.
                rotate_root(federation)
                federation.publish()
                await everyone_holds(4)
                roots = {g.store.status().root_version for g in cluster.gateways.values()}
                assert roots == {2}
                tally.enter("after")
                await wait_until(
                    lambda: answered_on_every_stream(tally, "after"),
                    "answers on every stream after the rotation",
                    WAIT_SECONDS,
                )
                assert await probe() == new_tls
            finally:
                stop.set()
                await asyncio.gather(*tasks)

        # Every sealed answer verifies on its own against the final registry.
        snapshot = SnapshotVerifier(
            load_trusted_root(federation.pki / "authority" / "root.json")
        ).verify(federation.current.read_bytes(), held_version=None, now=None)
        trust = RegistryTrust(snapshot.registry)
        verifier, gm = SealVerifier(trust), GmVerifier(trust)
        formats: Counter[SealFormat] = Counter()
        verified = 0
        sealers: Counter[str] = Counter()
        late_old = []  # answers sealed after the activation, but by the old key
        fresh_after = 0  # answers sealed (not cached) after the activation
        for shot in tally.shots:
            if not shot.ok or shot.response is None:
                continue
            record = shot.response.record
            provider = shot.stream.split("->")[1][:6]
            report = check_region_seal(
                format=seal_format(record.format),
                jws=record.jws,
                ses_signature=record.ses_signature,
                payload=record.payload,
                region=provider,
                jades=verifier,
                gm=gm,
            )
            assert report.indication is Indication.TOTAL_PASSED, (shot.stream, report.message)
            assert report.kind is SignatureKind.SEAL
            verified += 1
            if provider == OWNER:
                formats[seal_format(record.format)] += 1
                sealers[record.sealer_kid] += 1
                if shot.phase_sent in ("seal rotated", "tls rotated", "after") and not (
                    shot.response.cache_hit
                ):
                    fresh_after += 1
                    if record.sealer_kid != new_seal:
                        late_old.append(shot)
        gateway_failures = seal_failures(cluster)
        gateway_passes = seal_passes(cluster)
        assert {r: bad_server_codes(g) for r, g in cluster.gateways.items()} == dict.fromkeys(
            cluster.gateways, 0
        )
        for region, agency_prefix in (("510000", "sc."), ("330000", "zj."), (OWNER, "cq.")):
            audit = cluster.gateways[region].audit
            assert audit is not None
            tally.audit_checked += await check_audit_ids(
                audit, [s for s in tally.shots if s.stream.startswith(agency_prefix)]
            )
        owner_log = owner.audit
        assert owner_log is not None
        integrity = await owner_log.verify()

    handshakes = len(tally.where(stream=f"{FRESH[0]}->{FRESH[1]} (new channel each)")) + len(probes)
    line = tally.report(
        f"{verified} sealed answers verified against registry v{snapshot.registry.version} "
        f"(gateways counted {gateway_passes:.0f} passed, {sum(gateway_failures.values()):.0f} "
        f"failed); 重庆's answers sealed by the old key {sealers[old_seal]}, by the new "
        f"{sealers[new_seal]} ({fresh_after} sealed after the activation, all by the new); "
        f"{handshakes} new TLS handshakes with 重庆 "
        f"({sum(k == new_tls for k in probes)} probes served the new certificate); 重庆's log "
        f"intact ({integrity.records_checked} records)"
    )
    assert not [s for s in tally.shots if s.code in BAD_CODES]
    assert tally.refused() == Counter(), line  # zero failed requests, handshakes included
    assert gateway_failures == dict.fromkeys(gateway_failures, 0.0), gateway_failures
    expected_format = SealFormat.GBT38540 if seal_algorithm == "SM2" else SealFormat.JADES
    assert set(formats) == {expected_format}, formats
    successor = Inventory.load(federation.pki).get(new_seal)
    assert successor.algorithm == seal_algorithm  # a rotation keeps the key's algorithm
    assert sealers[old_seal] > 0, sealers
    assert sealers[new_seal] > 0, sealers
    assert not late_old, f"{len(late_old)} new answers after the rotation under the old key"
    assert fresh_after > 0, line  # the new key sealed something (and nothing else did, above)
    assert probes == [old_tls, new_tls, new_tls]
    fresh_stream = f"{FRESH[0]}->{FRESH[1]} (new channel each)"
    for phase in ("before", "after"):  # new handshakes succeeded on both sides of the rotation
        assert any(s.ok for s in tally.where(stream=fresh_stream, phase_sent=phase)), phase
    assert integrity.intact, integrity.problem
