"""`RegionSealer` with a staple: the seal certificate's OCSP response (made by `openssl ocsp`,
signed by the region's issuing CA from an index written for it) embedded in the JAdES seal,
which a registry-backed `SealVerifier` then uses before the region's CRLs."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from openssl_ca import make_openssl_ca
from support import Federation, free_port, make_federation

from gateway._tls import NoTrust
from gateway.sealing import RegionSealer, ocsp_staple, staple_of
from registry import (
    TRUSTED_ROOT,
    KeyState,
    KeyUsage,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import (
    CertStatus,
    FileKeyProvider,
    KeyProvider,
    RevocationFetcher,
    SealVerifier,
    SubIndication,
    add_validation_data,
    check_ocsp_response,
    parse_jws,
    seal,
)

NOW = datetime.now(UTC).replace(microsecond=0)
REGION = "330000"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    federation = make_federation(tmp_path_factory.mktemp("fed"), now=NOW - timedelta(days=1))
    federation.publish(now=NOW - timedelta(hours=1))
    return federation


@pytest.fixture(scope="module")
def registry(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / TRUSTED_ROOT))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


def _seal_key(fed: Federation) -> tuple[KeyProvider, Path]:
    (record,) = fed.inventory().find(REGION, KeyUsage.SEAL, KeyState.ACTIVE)
    return FileKeyProvider(fed.pki / record.private_key, fed.pki / record.certificate), (
        fed.pki / record.certificate
    )


def _ocsp(fed: Federation, provider: KeyProvider, folder: Path, *, revoked_at: str = "") -> bytes:
    """`openssl ocsp` as the region's issuing CA, answering from an index that lists the seal
    certificate as valid, or revoked (keyCompromise) at `revoked_at` (YYMMDDHHMMSSZ)."""
    ca = fed.pki / "regions" / REGION / "ca"
    leaf = provider.certificate_chain[0]
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    serial = f"{leaf.serial_number:X}"
    serial = "0" * (len(serial) % 2) + serial
    state = (
        f"R\t{leaf.not_valid_after_utc:%y%m%d%H%M%SZ}\t{revoked_at},keyCompromise"
        if revoked_at
        else f"V\t{leaf.not_valid_after_utc:%y%m%d%H%M%SZ}\t"
    )
    (folder / "index.txt").write_text(f"{state}\t{serial}\tunknown\t/CN=seal\n")
    (folder / "index.txt.attr").write_text("unique_subject = no\n")
    run = ["openssl", "ocsp", "-issuer", ca / "intermediate.pem", "-cert", folder / "leaf.pem"]
    subprocess.run([*run, "-no_nonce", "-reqout", folder / "req"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "ocsp", "-index", folder / "index.txt", "-CA", ca / "intermediate.pem",
         "-rsigner", ca / "intermediate.pem", "-rkey", ca / "intermediate.key",
         "-reqin", folder / "req", "-respout", folder / "resp", "-nmin", "60"],
        check=True, capture_output=True,
    )  # fmt: skip
    return (folder / "resp").read_bytes()


async def test_a_stapled_good_response_travels_in_the_json_form(
    fed: Federation, registry: Registry, tmp_path: Path
) -> None:
    provider, _ = _seal_key(fed)
    response = _ocsp(fed, provider, tmp_path)
    asked: list[str] = []

    def staple(key: KeyProvider) -> bytes:
        asked.append(key.kid)
        return response

    sealer = RegionSealer(REGION, {provider.kid: provider}, staple=staple)
    sealed = await sealer.seal(registry, b'{"a": 1}', content_type="application/json", now=NOW)
    assert asked == [provider.kid]
    assert json.loads(sealed.jws)["header"]["etsiU"]
    report = SealVerifier(RegistryTrust(registry)).validate(sealed.jws)
    assert report.passed, report.message
    revocation = next(c.detail for c in report.checks if c.name == "revocation")
    assert "good by the embedded OCSP response of" in revocation
    assert "(issuer)" in revocation
    assert report.payload == b'{"a": 1}'
    # no staple: compact, as before
    plain = await RegionSealer(REGION, {provider.kid: provider}).seal(
        registry, b"x", content_type="application/json", now=NOW
    )
    assert plain.jws.count(".") == 2


async def test_an_embedded_revocation_counts_though_the_registry_knows_none(
    fed: Federation, registry: Registry, tmp_path: Path
) -> None:
    provider, _ = _seal_key(fed)
    before = NOW - timedelta(minutes=30)
    response = _ocsp(fed, provider, tmp_path, revoked_at=f"{before:%y%m%d%H%M%SZ}")
    sealer = RegionSealer(REGION, {provider.kid: provider}, staple=lambda _key: response)
    sealed = await sealer.seal(registry, b"x", content_type="application/json", now=NOW)
    report = SealVerifier(RegistryTrust(registry)).validate(sealed.jws)
    assert report.sub_indication is SubIndication.REVOKED
    assert "embedded OCSP response" in report.message


def test_ocsp_staple_asks_the_responder_the_certificate_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`ocsp_staple` over a real `RevocationFetcher` and an `openssl ocsp` responder: the good
    response is stapled (the responder's, about this certificate, and what
    `add_validation_data` embeds); no responder named, or none answering, gives None (a compact
    seal) and a warning, never an error."""
    ca = make_openssl_ca(tmp_path / "ca", "Chongqing")
    port, dead = free_port(), free_port()
    ca.issue("responder", "ocsp")
    named, _ = ca.issue("named", "seal", ocsp_url=f"http://127.0.0.1:{port}/")
    unnamed, _ = ca.issue("unnamed", "seal")
    unreachable, _ = ca.issue("unreachable", "seal", ocsp_url=f"http://127.0.0.1:{dead}/")
    responder = subprocess.Popen(
        ["openssl", "ocsp", "-index", str(ca.dir / "index.txt"), "-port", str(port),
         "-rsigner", str(ca.dir / "responder.pem"), "-rkey", str(ca.dir / "responder.key"),
         "-CA", str(ca.intermediate), "-nmin", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert responder.stdout is not None
        assert f":{port} " in responder.stdout.readline()

        def provider(leaf: Path) -> KeyProvider:
            chain = leaf.with_suffix(".chain.pem")
            chain.write_bytes(leaf.read_bytes() + ca.intermediate.read_bytes())
            return FileKeyProvider(leaf.with_suffix(".key"), chain)

        staple = ocsp_staple(RevocationFetcher(timeout_seconds=2.0))
        key = provider(named)
        response = staple(key)
        assert response is not None
        assert staple(provider(unnamed)) is None
        assert staple(provider(unreachable)) is None
        assert "no OCSP response stapled to seals of key" in caplog.text
    finally:
        responder.kill()
        responder.wait()
        assert responder.stdout is not None
        responder.stdout.close()
    leaf, issuer = key.certificate_chain[0], key.certificate_chain[1]
    status = check_ocsp_response(response, leaf, issuer, now=datetime.now(UTC))
    assert status.status is CertStatus.GOOD
    assert status.responder.startswith("delegate CN=responder,O=Region")
    lt = add_validation_data(seal(b"x", key), ocsp_responses=[response])
    assert parse_jws(lt)[1].ocsp_responses == (response,)


def test_the_gateway_staples_only_with_online_revocation() -> None:
    """`staple_of` is what the services give their `RegionSealer`: a staple over the seal
    verifier's fetcher when `[revocation] online` gave it one, else none (compact seals)."""
    assert staple_of(SealVerifier(NoTrust())) is None
    assert staple_of(SealVerifier(NoTrust(), revocation=RevocationFetcher())) is not None


def test_no_crl_is_fetched_for_a_staple(fed: Federation, caplog: pytest.LogCaptureFixture) -> None:
    # the dev PKI's seal certificate names a CRL URL (on a host that does not resolve) and no
    # OCSP responder: nothing can be stapled, so nothing is fetched and nothing is logged
    provider, _ = _seal_key(fed)
    asked: list[str] = []
    fetcher = RevocationFetcher(observe=lambda source, result, seconds: asked.append(source))
    with caplog.at_level("WARNING"):
        assert ocsp_staple(fetcher)(provider) is None
    assert asked == []
    assert "stapled" not in caplog.text
