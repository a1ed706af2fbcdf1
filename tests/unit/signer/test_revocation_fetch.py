"""`signer._revocation_fetch`: a real `openssl ocsp` responder serving an `openssl ca` index on a
loopback port, and CRLs served by an `http.server` thread, asked where the certificates say."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from openssl_ca import OpenSslCa, make_openssl_ca
from revocation_support import Responder, Served, cert, free_port

from signer import (
    CertStatus,
    FileKeyProvider,
    Indication,
    RevocationFetcher,
    RevocationUnavailable,
    SealVerifier,
    SubIndication,
    TrustedKey,
    seal,
)


@dataclass
class World:
    ca: OpenSslCa
    responder: Responder
    served: Served
    certs: dict[str, x509.Certificate]

    @property
    def issuer(self) -> x509.Certificate:
        return cert(self.ca.intermediate)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ca = make_openssl_ca(tmp_path_factory.mktemp("fetch") / "ca", "Chongqing")
    served = Served(ca.dir)
    http_port, ocsp_port, closed_port = served.start(), free_port(), free_port()
    ocsp_url, crl_url = f"http://127.0.0.1:{ocsp_port}/", f"http://127.0.0.1:{http_port}/crl.der"
    dead = f"http://127.0.0.1:{closed_port}/"
    ca.issue("responder", "ocsp")
    profiles = {
        "good": {"ocsp_url": ocsp_url, "crl_url": crl_url},
        "revoked": {"ocsp_url": ocsp_url, "crl_url": crl_url},
        "crl-only": {"crl_url": crl_url},
        "crl-only-2": {"crl_url": crl_url},
        "crl-revoked": {"crl_url": crl_url},
        "dead-ocsp": {"ocsp_url": dead, "crl_url": crl_url},
        "dead": {"ocsp_url": dead},
        "slow": {"crl_url": f"http://127.0.0.1:{http_port}/slow/crl.der"},
        "ldap": {"crl_url": "ldap://ldap.example.test/cn=CA?certificateRevocationList"},
        "none": {},
        "seal-good": {"ocsp_url": ocsp_url},
        "seal-revoked": {"ocsp_url": ocsp_url},
        "seal-dead": {"ocsp_url": dead},
    }
    certs = {
        name: cert(ca.issue(name, "seal" if name.startswith("seal") else "tls", **urls)[0])
        for name, urls in profiles.items()
    }
    for name in ("revoked", "crl-revoked", "seal-revoked"):
        ca.revoke_for(ca.dir / f"{name}.pem", "keyCompromise")
    ca.crl("crl.der", der=True)
    responder = Responder(ca, ocsp_port)
    responder.start()
    yield World(ca, responder, served, certs)
    responder.stop()
    served.stop()


def _fetcher(
    clock: list[datetime] | None = None, **options: object
) -> tuple[RevocationFetcher, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    moment = clock or [datetime.now(UTC)]
    fetcher = RevocationFetcher(
        clock=lambda: moment[0],
        observe=lambda source, result, _seconds: seen.append((source, result)),
        timeout_seconds=2.0,
        **options,  # type: ignore[arg-type]
    )
    return fetcher, seen


def test_ocsp_answers_first_then_the_cache_until_next_update(world: World) -> None:
    clock = [datetime.now(UTC)]
    fetcher, seen = _fetcher(clock)
    good = fetcher.check(world.certs["good"], world.issuer)
    revoked = fetcher.check(world.certs["revoked"], world.issuer)
    assert good is not None
    assert revoked is not None
    assert (good.status, good.source) == (CertStatus.GOOD, "ocsp")
    assert (revoked.status, revoked.source, revoked.reason) == (
        CertStatus.REVOKED,
        "ocsp",
        "key_compromise",
    )
    assert seen == [("ocsp", "good"), ("ocsp", "revoked")]
    world.responder.stop()  # from now on only the cache can answer
    try:
        assert fetcher.check(world.certs["good"], world.issuer) is good
        assert seen[-1] == ("ocsp", "good")
        clock[0] = good.next_update + timedelta(seconds=1)  # type: ignore[operator]
        # stale: asked again; the responder is down, the CRL (30 days) answers
        again = fetcher.check(world.certs["good"], world.issuer)
        assert again is not None
        assert again.source == "crl"
        assert seen[-2:] == [("ocsp", "unreachable"), ("crl", "good")]
    finally:
        world.responder.start()


def test_crls_are_fetched_once_per_url_and_cached(world: World) -> None:
    fetcher, seen = _fetcher()
    before = world.served.counts["/crl.der"]
    first = fetcher.check(world.certs["crl-only"], world.issuer)
    second = fetcher.check(world.certs["crl-only-2"], world.issuer)
    revoked = fetcher.check(world.certs["crl-revoked"], world.issuer)
    assert first is not None
    assert second is not None
    assert revoked is not None
    assert (first.status, second.status, revoked.status) == (
        CertStatus.GOOD,
        CertStatus.GOOD,
        CertStatus.REVOKED,
    )
    assert revoked.reason == "key_compromise"
    assert world.served.counts["/crl.der"] == before + 1
    assert seen == [("crl", "good"), ("crl", "good"), ("crl", "revoked")]


def test_an_unreachable_responder_falls_back_to_the_crl(world: World) -> None:
    fetcher, seen = _fetcher()
    status = fetcher.check(world.certs["dead-ocsp"], world.issuer)
    assert status is not None
    assert (status.status, status.source) == (CertStatus.GOOD, "crl")
    assert seen == [("ocsp", "unreachable"), ("crl", "good")]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dead", r"cannot be learnt: ocsp http://127\.0\.0\.1:\d+/: not reachable"),
        ("ldap", "only http:// URLs are fetched, not ldap URL"),
    ],
)
def test_no_usable_source_is_unavailable(world: World, name: str, message: str) -> None:
    fetcher, seen = _fetcher()
    with pytest.raises(RevocationUnavailable, match=message):
        fetcher.check(world.certs[name], world.issuer)
    assert seen[-1][1] == "unreachable"


def test_a_certificate_without_sources_is_left_to_the_registry(world: World) -> None:
    fetcher, seen = _fetcher()
    assert fetcher.check(world.certs["none"], world.issuer) is None
    assert seen == []


def test_responses_over_the_size_cap_are_refused(world: World) -> None:
    fetcher, _ = _fetcher(max_response_bytes=64)
    with pytest.raises(RevocationUnavailable, match="exceeds 64 bytes"):
        fetcher.check(world.certs["crl-only"], world.issuer)


def test_concurrent_callers_share_one_fetch(world: World) -> None:
    fetcher, seen = _fetcher()
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(
            pool.map(lambda _: fetcher.check(world.certs["slow"], world.issuer), range(6))
        )
    assert {a.status for a in answers if a is not None} == {CertStatus.GOOD}
    assert world.served.counts["/slow/crl.der"] == 1
    assert seen == [("crl", "good")]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        RevocationFetcher(timeout_seconds=0)
    with pytest.raises(ValueError, match="cert_id_hash"):
        RevocationFetcher(cert_id_hash="md5")


class _Trust:
    """The region's anchors, published seal keys and CRLs, as the registry would give them."""

    version = 1

    def __init__(
        self,
        ca: OpenSslCa,
        keys: dict[str, TrustedKey],
        crls: tuple[x509.CertificateRevocationList, ...] = (),
    ) -> None:
        self._ca, self._keys, self._crls = ca, keys, crls

    def key(self, kid: str) -> TrustedKey | None:
        return self._keys.get(kid)

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return (cert(self._ca.root),), (cert(self._ca.intermediate),)

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return self._crls

    def regions(self) -> tuple[str, ...]:
        return ("500000",)


@pytest.mark.parametrize(
    ("name", "indication", "sub", "fragment"),
    [
        ("seal-good", Indication.TOTAL_PASSED, None, "OCSP (delegate CN=responder"),
        ("seal-revoked", Indication.TOTAL_FAILED, SubIndication.REVOKED, "by its OCSP"),
        ("seal-dead", Indication.INDETERMINATE, SubIndication.TRY_LATER, "not reachable"),
        ("seal-dead+registry-crl", Indication.TOTAL_PASSED, None, "no OCSP responder or CRL"),
    ],
)
def test_seal_verifier_honours_the_signers_responder(
    world: World, name: str, indication: Indication, sub: SubIndication | None, fragment: str
) -> None:
    """A seal made now by a key whose certificate names the responder: good passes (the report
    says which source answered), revoked fails REVOKED, unreachable is hard-fail (TRY_LATER)
    unless the registry holds the issuer's CRL, the third source, which then decides."""
    name, _, registry_crl = name.partition("+")
    crls = (
        (x509.load_der_x509_crl((world.ca.dir / "crl.der").read_bytes()),) if registry_crl else ()
    )
    key_pkcs8 = world.ca.dir / f"{name}.p8"
    subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", world.ca.dir / f"{name}.key", "-out",
         key_pkcs8], check=True, capture_output=True,
    )  # fmt: skip
    chain = world.ca.dir / f"{name}.chain.pem"
    chain.write_bytes(
        (world.ca.dir / f"{name}.pem").read_bytes() + world.ca.intermediate.read_bytes()
    )
    provider = FileKeyProvider(key_pkcs8, chain)
    trusted = TrustedKey(
        provider.kid, world.certs[name], "seal", "500000", "Chongqing", "500000", "active"
    )
    fetcher, _ = _fetcher()
    verifier = SealVerifier(_Trust(world.ca, {provider.kid: trusted}, crls), revocation=fetcher)
    report = verifier.validate(seal(b'{"a": 1}', provider))
    assert (report.indication, report.sub_indication) == (indication, sub), report.message
    assert fragment in (report.message if sub else report.checks[-2].detail)


def test_a_failure_is_remembered_for_a_while(world: World) -> None:
    clock = [datetime.now(UTC)]
    fetcher, seen = _fetcher(clock)
    for _ in range(2):
        with pytest.raises(RevocationUnavailable, match="not reachable"):
            fetcher.check(world.certs["dead"], world.issuer)
    assert seen == [("ocsp", "unreachable")]  # the second was answered from the failure
    clock[0] += timedelta(seconds=11)
    with pytest.raises(RevocationUnavailable):
        fetcher.check(world.certs["dead"], world.issuer)
    assert seen == [("ocsp", "unreachable")] * 2


def test_a_caller_holding_a_current_crl_skips_the_crl_urls(world: World) -> None:
    fetcher, seen = _fetcher()
    before = world.served.counts["/crl.der"]
    assert fetcher.check(world.certs["crl-only"], world.issuer, have_current_crl=True) is None
    with pytest.raises(RevocationUnavailable):  # its OCSP responder is down; the CRL not asked
        fetcher.check(world.certs["dead-ocsp"], world.issuer, have_current_crl=True)
    assert world.served.counts["/crl.der"] == before
    assert seen == [("ocsp", "unreachable")]
