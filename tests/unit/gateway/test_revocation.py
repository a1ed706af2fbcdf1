"""`gateway.revocation`: TLS callers' certificates checked with their own OCSP responder (a real
`openssl ocsp` on loopback), under the `[revocation]` policy: revoked is refused, an unreachable
responder is refused (hard-fail) or admitted with a log line and a metric (soft-fail)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from openssl_ca import OpenSslCa, make_openssl_ca
from revocation_support import Responder, cert, free_port

from gateway.config import RevocationConfig
from gateway.errors import CallerRejected, status_code
from gateway.metrics import GatewayMetrics
from gateway.revocation import CallerRevocation, make_fetcher


@dataclass
class Pki:
    ca: OpenSslCa
    chains: dict[str, list[x509.Certificate]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    ca = make_openssl_ca(tmp_path_factory.mktemp("callers") / "ca", "Chongqing")
    port = free_port()
    ca.issue("responder", "ocsp")
    urls = {
        "good": f"http://127.0.0.1:{port}/",
        "revoked": f"http://127.0.0.1:{port}/",
        "dead": f"http://127.0.0.1:{free_port()}/",
        "none": None,
    }
    issuer = cert(ca.intermediate)
    chains = {
        name: [cert(ca.issue(name, "tls", ocsp_url=url)[0]), issuer] for name, url in urls.items()
    }
    dead_crl = f"http://127.0.0.1:{free_port()}/ca.crl"
    chains["crl-only"] = [cert(ca.issue("crl-only", "tls", crl_url=dead_crl)[0]), issuer]
    ca.revoke_for(ca.dir / "revoked.pem", "keyCompromise")
    responder = Responder(ca, port)
    responder.start()
    yield Pki(ca, chains)
    responder.stop()


def _checker(policy: str) -> tuple[CallerRevocation, GatewayMetrics]:
    metrics = GatewayMetrics()
    fetcher = make_fetcher(RevocationConfig(timeout_seconds=2.0, unreachable=policy), metrics)
    assert fetcher is not None
    return CallerRevocation(fetcher, unreachable=policy), metrics


def _count(metrics: GatewayMetrics, source: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "tongban_revocation_checks_total", {"source": source, "result": result}
    )
    return value or 0.0


async def _check(
    checker: CallerRevocation, pki: Pki, name: str, registry_crls: tuple[bytes, ...] = ()
) -> None:
    key = hashlib.sha256(name.encode()).digest()
    checker.remember(key, pki.chains[name], registry_crls)
    await checker.check(key, f"agency:{name}")


async def test_good_passes_and_is_answered_from_the_cache_after(pki: Pki) -> None:
    checker, metrics = _checker("hard-fail")
    await _check(checker, pki, "good")
    await _check(checker, pki, "good")
    assert _count(metrics, "ocsp", "good") == 2
    fetches = metrics.registry.get_sample_value(
        "tongban_revocation_fetch_seconds_count", {"source": "ocsp"}
    )
    assert fetches == 1  # the second answer came from the cache


@pytest.mark.parametrize("policy", ["hard-fail", "soft-fail"])
async def test_revoked_is_refused_whatever_the_policy(pki: Pki, policy: str) -> None:
    checker, metrics = _checker(policy)
    with pytest.raises(CallerRejected, match=r"revoked at .* \(key_compromise\), by its OCSP") as e:
        await _check(checker, pki, "revoked")
    assert e.value.reason == "CERTIFICATE_REVOKED"
    assert status_code(e.value.reason).name == "UNAUTHENTICATED"
    assert _count(metrics, "ocsp", "revoked") == 1


async def test_unreachable_hard_fail_refuses(pki: Pki) -> None:
    checker, metrics = _checker("hard-fail")
    with pytest.raises(CallerRejected, match=r"cannot be learnt: .*not reachable") as e:
        await _check(checker, pki, "dead")
    assert e.value.reason == "REVOCATION_UNAVAILABLE"
    assert status_code(e.value.reason).name == "UNAVAILABLE"
    assert _count(metrics, "ocsp", "unreachable") == 1
    # remembered for a while: refused again at once, without another request
    with pytest.raises(CallerRejected):
        await _check(checker, pki, "dead")
    assert _count(metrics, "ocsp", "unreachable") == 1


async def test_unreachable_falls_back_on_the_registrys_current_crl(pki: Pki) -> None:
    """The registry's CRL of the issuer is the third source (the resolver checks the caller
    against it): while it is current, an unreachable responder refuses no one."""
    checker, metrics = _checker("hard-fail")
    crl = pki.ca.crl("registry.crl", der=True).read_bytes()
    await _check(checker, pki, "dead", (crl,))
    assert _count(metrics, "ocsp", "unreachable") == 1
    other = make_openssl_ca(pki.ca.dir.parent / "other", "Other").crl("o.crl", der=True)
    with pytest.raises(CallerRejected, match="cannot be learnt"):  # not the issuer's CRL
        await _check(checker, pki, "dead", (other.read_bytes(),))


async def test_unreachable_soft_fail_admits_with_a_log_line(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    checker, metrics = _checker("soft-fail")
    with caplog.at_level(logging.WARNING, logger="tongban.revocation"):
        await _check(checker, pki, "dead")
    assert (
        "accepted agency:dead without a revocation status of its client certificate (soft-fail)"
        in caplog.text
    )
    assert _count(metrics, "ocsp", "unreachable") == 1


async def test_a_certificate_naming_no_source_is_left_to_the_registry(pki: Pki) -> None:
    checker, metrics = _checker("hard-fail")
    await _check(checker, pki, "none")
    assert _count(metrics, "ocsp", "good") == _count(metrics, "crl", "good") == 0


async def test_a_crl_only_certificate_under_a_current_registry_crl_asks_no_one(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry's current CRL of the issuer is what the certificate's CRL URL serves: with
    no OCSP responder named, there is nothing to ask, and no worker thread is taken per call."""
    checker, metrics = _checker("hard-fail")
    crl = pki.ca.crl("registry-crl-only.crl", der=True).read_bytes()

    async def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker thread was taken")

    monkeypatch.setattr("gateway.revocation.asyncio.to_thread", no_thread)
    for _ in range(3):
        await _check(checker, pki, "crl-only", (crl,))
    assert _count(metrics, "crl", "unreachable") == _count(metrics, "crl", "good") == 0
    # without the registry's CRL the URL is asked (dead here): hard-fail refuses
    monkeypatch.undo()
    with pytest.raises(CallerRejected, match="cannot be learnt") as e:
        await _check(checker, pki, "crl-only")
    assert e.value.reason == "REVOCATION_UNAVAILABLE"


def test_online_checking_can_be_turned_off() -> None:
    assert make_fetcher(RevocationConfig(online=False), None) is None
