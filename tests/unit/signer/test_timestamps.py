"""RFC 3161 time-stamps (`signer._timestamps`) and JAdES baseline-T (`sigTst` in `etsiU`): tokens
from a real TSA on loopback (`openssl ts -reply`, tests/tsa_support.py), checked by `openssl ts
-verify`; seal certificates of an OpenSSL CA imported into a dev federation (as in
test_jades_lt.py), revoked with keyCompromise by `openssl ca` and reported by `openssl ocsp`
responses embedded in the seals. The acceptance pair: a seal time-stamped before its
certificate's revocation passes with the time-stamp as proof of existence; one time-stamped
after it is REVOKED."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import Run
from cryptography import x509
from openssl_ca import OpenSslCa, make_openssl_ca
from support import make_federation
from tsa_support import Tsa, running_tsa

from registry import (
    TRUSTED_ROOT,
    ImportedKey,
    KeyUsage,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    import_ca,
    import_cert,
    import_crl,
    load_trusted_root,
    publish,
)
from registry._pki import ca_dir
from signer import (
    FileKeyProvider,
    Indication,
    JwsFormatError,
    SealVerifier,
    SubIndication,
    TimeStampClient,
    TimeStampUnavailable,
    ValidationReport,
    add_timestamp,
    add_validation_data,
    parse_jws,
    proof_of_existence,
    seal,
    to_compact,
)
from signer._jades_json import timestamp_input

REGION = "500000"
PAYLOAD = b'{"licence": "91500000MA5U7XXX1K", "status": "valid"}'


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    ca: OpenSslCa
    tsa: Tsa
    client: TimeStampClient
    early: Path  # revoked (keyCompromise) after `early_stamped` was time-stamped
    late: Path  # revoked (keyCompromise) before `late_stamped` was made and time-stamped
    responder: Path
    registry: Registry
    early_stamped: str  # baseline-T, in JSON serialisation
    early_bare: str  # the same key's seal without a time-stamp (compact)
    late_stamped: str
    backdated: str  # `late`'s seal claiming a time before the revocation, stamped after it
    early_good: bytes  # an OCSP response saying `early` is good, from before its revocation
    trust_options: tuple[str | Path, ...]  # `tongban verify`'s for the published snapshot

    def provider(self, leaf: Path) -> FileKeyProvider:
        chain = leaf.with_suffix(".chain.pem")
        chain.write_bytes(leaf.read_bytes() + self.ca.intermediate.read_bytes())
        return FileKeyProvider(leaf.with_suffix(".key"), chain)

    def respond(self, leaf: Path) -> bytes:
        """`openssl ocsp` answering for `leaf` from the CA's index (after the revocations)."""
        request, out = leaf.with_suffix(".req"), leaf.with_suffix(".resp")
        _openssl("ocsp", "-issuer", self.ca.intermediate, "-cert", leaf, "-no_nonce",
                 "-reqout", request)  # fmt: skip
        _openssl("ocsp", "-index", self.ca.dir / "index.txt", "-CA", self.ca.intermediate,
                 "-rsigner", self.responder, "-rkey", self.responder.with_suffix(".key"),
                 "-reqin", request, "-respout", out, "-nmin", "60")  # fmt: skip
        return out.read_bytes()

    def verifier(self, anchors: tuple[x509.Certificate, ...] | None = None) -> SealVerifier:
        trusted = (self.tsa.root,) if anchors is None else anchors
        return SealVerifier(RegistryTrust(self.registry), tsa_anchors=trusted)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    folder = tmp_path_factory.mktemp("tsa")
    with running_tsa(folder) as tsa:
        client = TimeStampClient(tsa.url, anchors=[tsa.root])
        now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
        fed = make_federation(folder / "fed", now=now - timedelta(hours=1))
        shutil.rmtree(ca_dir(fed.pki, REGION))
        ca = make_openssl_ca(folder / "ca", "Chongqing")
        early, early_key = ca.issue("early-seal", "seal")
        late, late_key = ca.issue("late-seal", "seal")
        responder, _ = ca.issue("responder", "ocsp")
        import_ca(fed.pki, REGION, ca.root, [ca.intermediate], now=now)
        for owner, leaf, key in ((REGION, early, early_key), ("cq.hrss", late, late_key)):
            import_cert(fed.pki, leaf, owner=owner, usage=KeyUsage.SEAL,
                        key=ImportedKey(key_file=key), now=now)  # fmt: skip
        import_crl(fed.pki, REGION, ca.crl("published.crl"), now=now)
        publish(fed.source, fed.pki, fed.published, now=now)
        authority = load_trusted_root(fed.pki / TRUSTED_ROOT)
        snapshot = fed.current.read_bytes()
        registry = (
            SnapshotVerifier(authority).verify(snapshot, held_version=None, now=None).registry
        )
        options = ("--snapshot", fed.current, "--authority", fed.pki / TRUSTED_ROOT)
        unfinished = Pki(ca, tsa, client, early, late, responder, registry, "", "", "", "", b"",
                         options)  # fmt: skip
        early_good = unfinished.respond(early)
        before = datetime.now(UTC).replace(microsecond=0)
        early_bare = seal(PAYLOAD, unfinished.provider(early))
        early_stamped = add_timestamp(early_bare, client)
        backdated_bare = seal(PAYLOAD, unfinished.provider(late), signing_time=before)
        time.sleep(1.01 - time.time() % 1)  # revoked in a later whole second than stamped
        ca.revoke_for(early, "keyCompromise")
        ca.revoke_for(late, "keyCompromise")
        late_stamped = add_timestamp(seal(PAYLOAD, unfinished.provider(late)), client)
        backdated = add_timestamp(backdated_bare, client)
        yield Pki(ca, tsa, client, early, late, responder, registry, early_stamped,
                  early_bare, late_stamped, backdated, early_good, options)  # fmt: skip


def _check(report: ValidationReport, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


def _token(jws: str) -> bytes:
    (token,) = parse_jws(jws)[1].time_stamps
    return token


def test_sigtst_is_in_etsiu_over_the_signature_value_and_openssl_verifies_it(pki: Pki) -> None:
    document = json.loads(pki.early_stamped)
    (element,) = document["header"]["etsiU"]
    decoded = json.loads(base64.urlsafe_b64decode(element + "=" * (-len(element) % 4)))
    token = base64.b64decode(decoded["sigTst"]["tstTokens"][0]["val"])
    assert set(decoded["sigTst"]) == {"tstTokens"}
    # ETSI TS 119 182-1 5.3.4.2: the imprint is over the base64url JWS Signature Value
    assert pki.tsa.verify(token, document["signature"].encode("ascii")) == "Verification: OK"
    with pytest.raises(subprocess.CalledProcessError):
        pki.tsa.verify(token, PAYLOAD)
    assert to_compact(pki.early_stamped) == pki.early_bare  # nothing was re-signed
    # augmenting with validation data keeps the time-stamp, first in etsiU
    lt = add_validation_data(pki.early_stamped, ocsp_responses=[pki.respond(pki.early)])
    assert _token(lt) == token
    assert len(json.loads(lt)["header"]["etsiU"]) == 2


def test_revoked_after_the_time_stamp_passes_with_the_proof_of_existence(pki: Pki) -> None:
    response = pki.respond(pki.early)
    report = pki.verifier().validate(
        add_validation_data(pki.early_stamped, ocsp_responses=[response])
    )
    assert report.passed, report.message
    proof = proof_of_existence(
        _token(pki.early_stamped), timestamp_input(parse_jws(pki.early_stamped)[0]), [pki.tsa.root]
    )
    assert proof.gen_time is not None
    assert report.proof_of_existence == proof.gen_time
    assert report.time_stamp_authority == "CN=tsa,O=Region"
    assert "after the time-stamp of" in _check(report, "revocation")
    assert "key_compromise" in _check(report, "revocation")
    assert f"proof of existence at {proof.gen_time:%Y-%m-%dT%H:%M:%SZ}" in _check(
        report, "time-stamp"
    )
    assert "by a time-stamp" in report.message
    # the same key's seal without a time-stamp cannot show it was made before the compromise
    bare = pki.verifier().validate(add_validation_data(pki.early_bare, ocsp_responses=[response]))
    assert bare.sub_indication is SubIndication.REVOKED_NO_POE
    assert bare.proof_of_existence is None


def test_time_stamped_after_the_revocation_fails(pki: Pki) -> None:
    response = pki.respond(pki.late)
    report = pki.verifier().validate(
        add_validation_data(pki.late_stamped, ocsp_responses=[response])
    )
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.REVOKED,
    )
    # a signing time claimed before the revocation, proved only after it, is not believed
    backdated = pki.verifier().validate(
        add_validation_data(pki.backdated, ocsp_responses=[response])
    )
    assert backdated.sub_indication is SubIndication.REVOKED_NO_POE
    assert backdated.proof_of_existence is not None


def test_expired_after_the_proof_of_existence_passes(pki: Pki) -> None:
    # a baseline-LT seal (its OCSP response of before the revocation) validated when the
    # certificate has expired and the registry's CRLs are long out of date
    later = x509.load_pem_x509_certificate(pki.early.read_bytes()).not_valid_after_utc + timedelta(
        days=1
    )
    lt = add_validation_data(pki.early_stamped, ocsp_responses=[pki.early_good])
    report = pki.verifier().validate(lt, validation_time=later)
    assert report.passed, report.message
    assert "after the time-stamp of" in _check(report, "validity now")
    assert "good by the embedded OCSP response" in _check(report, "revocation")
    bare_lt = add_validation_data(pki.early_bare, ocsp_responses=[pki.early_good])
    bare = pki.verifier().validate(bare_lt, validation_time=later)
    assert bare.sub_indication is SubIndication.OUT_OF_BOUNDS_NO_POE


def test_untrusted_tsa_or_a_token_over_another_signature_gives_no_proof(pki: Pki) -> None:
    response = pki.respond(pki.early)
    lt = add_validation_data(pki.early_stamped, ocsp_responses=[response])
    ca_root = x509.load_pem_x509_certificate(pki.ca.root.read_bytes())
    untrusted = pki.verifier(anchors=(ca_root,)).validate(lt)
    assert untrusted.sub_indication is SubIndication.REVOKED_NO_POE
    assert "a time-stamp proves nothing: the TSA certificate" in _check(untrusted, "time-stamp")
    assert pki.verifier(anchors=()).validate(lt).sub_indication is SubIndication.REVOKED_NO_POE
    # the late seal's token moved onto the early seal: valid token, another signature value
    document = json.loads(add_validation_data(pki.early_bare, ocsp_responses=[response]))
    moved = json.loads(pki.late_stamped)["header"]["etsiU"][0]
    document["header"]["etsiU"].insert(0, moved)
    report = pki.verifier().validate(json.dumps(document))
    assert report.sub_indication is SubIndication.REVOKED_NO_POE
    assert "not over this signature value" in _check(report, "time-stamp")


@pytest.mark.parametrize(
    ("sig_tst", "message"),
    [
        ({"tstTokens": []}, "tstTokens must be a non-empty array"),
        ({"tstTokens": [{"val": "AAAA"}], "canonAlg": "x"}, "must hold tstTokens and nothing else"),
        (
            {"tstTokens": [{"val": base64.b64encode(b"\x30\x03\x02\x01\x01").decode()}]},
            "not a CMS time-stamp token",
        ),
    ],
)
def test_malformed_sigtst_is_refused(pki: Pki, sig_tst: object, message: str) -> None:
    document = json.loads(pki.early_stamped)
    document["header"]["etsiU"] = [{"sigTst": sig_tst}]
    with pytest.raises(JwsFormatError, match=message):
        parse_jws(json.dumps(document))


def test_the_client_refuses_an_untrusted_tsa_and_says_when_none_answers(pki: Pki) -> None:
    ca_root = x509.load_pem_x509_certificate(pki.ca.root.read_bytes())
    with pytest.raises(TimeStampUnavailable, match="not accepted: the TSA certificate"):
        TimeStampClient(pki.tsa.url, anchors=[ca_root]).stamp(b"checkpoint")
    with pytest.raises(TimeStampUnavailable, match="not reachable"):
        TimeStampClient("http://127.0.0.1:9/tsr", anchors=[pki.tsa.root], timeout_seconds=1).stamp(
            b"x"
        )
    with pytest.raises(ValueError, match="http:// or https://"):
        TimeStampClient("ftp://tsa.example/", anchors=[pki.tsa.root])
    results: list[str] = []
    reporting = TimeStampClient(
        pki.tsa.url, anchors=[pki.tsa.root], report=lambda r, _s: results.append(r)
    )
    token = reporting.stamp(b"checkpoint")
    assert results == ["ok"]
    assert pki.tsa.verify(token, b"checkpoint") == "Verification: OK"
    assert len(pki.tsa.requests[-1]) < 100  # a query: imprint and nonce, no data


def test_tongban_seal_with_tsa_and_verify_with_tsa_ca(pki: Pki, run: Run, tmp_path: Path) -> None:
    pki.provider(pki.late)  # writes the chain file beside the leaf
    (tmp_path / "doc.json").write_bytes(PAYLOAD)
    (tmp_path / "tsa-root.pem").write_bytes(pki.tsa.ca.root.read_bytes())
    key, chain = pki.late.with_suffix(".key"), pki.late.with_suffix(".chain.pem")
    out = tmp_path / "doc.json.jws"
    code, _, err = run("seal", tmp_path / "doc.json", "--key", key, "--cert", chain,
                       "--tsa", pki.tsa.url, "--tsa-ca", tmp_path / "tsa-root.pem",
                       "--out", out)  # fmt: skip
    assert (code, err) == (0, "")
    document = json.loads(out.read_text())
    assert (
        pki.tsa.verify(_token(out.read_text()), document["signature"].encode())
        == "Verification: OK"
    )
    code, _, err = run("seal", tmp_path / "doc.json", "--key", key, "--cert", chain,
                       "--tsa", pki.tsa.url)  # fmt: skip
    assert (code, err.strip()) == (
        1,
        "tongban: --tsa needs --tsa-ca: the root the TSA's certificate chains to",
    )
    code, _, err = run("seal", tmp_path / "doc.json", "--key", key, "--cert", chain,
                       "--tsa", "http://127.0.0.1:9/", "--tsa-ca", tmp_path / "tsa-root.pem")  # fmt: skip
    assert code == 1
    assert err.startswith(
        "tongban: no time-stamp from http://127.0.0.1:9/: the TSA is not reachable"
    )
    # verify: the early seal, time-stamped before its revocation, with its OCSP response
    stamped = tmp_path / "early.jws.json"
    stamped.write_text(
        add_validation_data(pki.early_stamped, ocsp_responses=[pki.respond(pki.early)])
    )
    trusted = ("--tsa-ca", tmp_path / "tsa-root.pem")
    code, text, err = run("verify", stamped, *pki.trust_options, *trusted, "--json")
    assert (code, err) == (0, "")
    report = json.loads(text)
    assert report["indication"] == "TOTAL_PASSED"
    assert report["proof_of_existence"] is not None
    code, text, _ = run("verify", stamped, *pki.trust_options, *trusted)
    assert code == 0
    assert "(time-stamp)" in text
    code, text, _ = run("verify", stamped, *pki.trust_options, "--json")  # no TSA anchors
    assert (code, json.loads(text)["sub_indication"]) == (1, "REVOKED_NO_POE")


def test_every_byte_of_a_token_changed_gives_a_finding_never_an_exception(pki: Pki) -> None:
    # pyca reads a carried certificate's fields lazily: a changed curve, version or name must be
    # a proof of nothing, not an exception out of every caller (validation, audit verify, evidence)
    token = _token(pki.early_stamped)
    message = timestamp_input(parse_jws(pki.early_stamped)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a malformed name is a UserWarning of pyca's
        for index in range(len(token)):
            changed = bytearray(token)
            changed[index] ^= 0x01
            proof = proof_of_existence(bytes(changed), message, [pki.tsa.root])
            assert proof.proved or proof.problem, index  # (fields the signature does not
            # cover, e.g. SignedData's digestAlgorithms, may change and still prove)
