"""JAdES in JWS JSON serialisation with embedded validation data (`signer._jades_json`), and
`SealVerifier` reading it: OCSP responses made by `openssl ocsp` (a delegated responder over
the index of an `openssl ca`), CRLs by `openssl ca -gencrl`, seal certificates issued by the
same OpenSSL CA, region 500000's CA imported into a dev federation whose published registry
holds the seal keys (`import_ca`, `import_cert`, `import_crl`, `publish`): a JWS is proved with a
key the registry holds, never with one it does not (not even with `--ca`); no network."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cli_support import Run
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from openssl_ca import OpenSslCa, make_openssl_ca
from support import Federation, make_federation

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
    MAX_JWS_BYTES,
    DocumentVerifier,
    FileKeyProvider,
    Format,
    GmVerifier,
    Indication,
    JwsFormatError,
    SealVerifier,
    SubIndication,
    ValidationReport,
    add_validation_data,
    parse_jws,
    recognise,
    seal,
    to_compact,
    to_json,
)

WYCHEPROOF = Path(__file__).parents[3] / ".." / "shared" / "vectors" / "wycheproof"


REGION = "500000"  # a demo region whose dev CA is taken away: it brings its OpenSSL one


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@dataclass(frozen=True)
class Pki:
    ca: OpenSslCa
    good: Path  # seal certificates the registry publishes (region 500000's, cq.hrss's)
    revoked: Path
    stranger: Path  # a seal certificate of the same CA that the registry does not publish
    responder: Path  # delegated OCSP responder of the CA
    foreign_responder: Path  # an OCSP responder of another CA
    fed: Federation
    registry: Registry

    def provider(self, leaf: Path) -> FileKeyProvider:
        chain = leaf.with_suffix(".chain.pem")
        chain.write_bytes(leaf.read_bytes() + self.ca.intermediate.read_bytes())
        return FileKeyProvider(leaf.with_suffix(".key"), chain)

    def respond(self, leaf: Path, signer: Path | None = None) -> bytes:
        """`openssl ocsp` answering for `leaf` from the CA's index, signed by `signer`."""
        signer = signer or self.responder
        request = leaf.with_suffix(".req")
        out = leaf.with_suffix(f".{signer.stem}.resp")
        _openssl("ocsp", "-issuer", self.ca.intermediate, "-cert", leaf, "-no_nonce",
                 "-reqout", request)  # fmt: skip
        _openssl("ocsp", "-index", self.ca.dir / "index.txt", "-CA", self.ca.intermediate,
                 "-rsigner", signer, "-rkey", signer.with_suffix(".key"), "-reqin", request,
                 "-respout", out, "-nmin", "60")  # fmt: skip
        return out.read_bytes()

    def crl_der(self) -> bytes:
        return self.ca.crl("embedded.crl", der=True).read_bytes()

    def verifier(self) -> SealVerifier:
        return SealVerifier(RegistryTrust(self.registry))

    def trust_options(self) -> tuple[str | Path, ...]:
        """`tongban verify`'s options for the published registry snapshot."""
        authority = self.fed.pki / TRUSTED_ROOT
        return ("--snapshot", self.fed.current, "--authority", authority)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The registry publishes `good` and `revoked` with the CA's CRL of before the revocation:
    only the embedded evidence knows that `revoked` is revoked."""
    folder = tmp_path_factory.mktemp("lt")
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)  # after OpenSSL's dates
    fed = make_federation(folder / "fed", now=now - timedelta(hours=1))
    shutil.rmtree(ca_dir(fed.pki, REGION))
    ca = make_openssl_ca(folder / "ca", "Chongqing")
    good, good_key = ca.issue("good-seal", "seal")
    revoked, revoked_key = ca.issue("revoked-seal", "seal")
    stranger, _ = ca.issue("stranger-seal", "seal")
    responder, _ = ca.issue("responder", "ocsp")
    foreign = make_openssl_ca(folder / "foreign", "Foreign")
    foreign_responder, _ = foreign.issue("foreign-responder", "ocsp")
    import_ca(fed.pki, REGION, ca.root, [ca.intermediate], now=now)
    # one pending key per owner and usage: the region's and one of its agencies'
    for owner, leaf, key in ((REGION, good, good_key), ("cq.hrss", revoked, revoked_key)):
        import_cert(fed.pki, leaf, owner=owner, usage=KeyUsage.SEAL,
                    key=ImportedKey(key_file=key), now=now)  # fmt: skip
    import_crl(fed.pki, REGION, ca.crl("published.crl"), now=now)
    publish(fed.source, fed.pki, fed.published, now=now)
    authority = load_trusted_root(fed.pki / TRUSTED_ROOT)
    snapshot = fed.current.read_bytes()
    registry = SnapshotVerifier(authority).verify(snapshot, held_version=None, now=None).registry
    ca.revoke_for(revoked, "keyCompromise")
    return Pki(ca, good, revoked, stranger, responder, foreign_responder, fed, registry)


PAYLOAD = b'{"licence": "91500000MA5U7XXX1K", "status": "valid"}'


def _check(report: ValidationReport, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


# -- the serialisations -----------------------------------------------------------------------


@pytest.mark.parametrize("detached", [False, True])
def test_compact_and_json_convert_without_change(pki: Pki, detached: bool) -> None:
    compact = seal(PAYLOAD, pki.provider(pki.good), detached=detached)
    as_json = to_json(compact)
    document = json.loads(as_json)
    header_b64, payload_b64, signature_b64 = compact.split(".")
    assert document["protected"] == header_b64
    assert document["signature"] == signature_b64
    assert document.get("payload") == (None if detached else payload_b64)
    assert "header" not in document  # a B-level seal has no unsigned properties
    assert to_compact(as_json) == compact
    lt = add_validation_data(compact, ocsp_responses=[pki.respond(pki.good)])
    assert to_compact(lt) == compact  # augmenting re-signs nothing
    assert json.loads(lt)["signature"] == signature_b64


def test_etsiu_is_base64url_by_default_and_clear_json_is_read(pki: Pki) -> None:
    response = pki.respond(pki.good)
    crl = pki.crl_der()
    intermediate = _cert(pki.ca.intermediate)
    lt = add_validation_data(
        seal(PAYLOAD, pki.provider(pki.good)),
        ocsp_responses=[response],
        crls=[crl],
        certificates=[intermediate],
    )
    elements = json.loads(lt)["header"]["etsiU"]
    assert all(isinstance(e, str) for e in elements)
    decoded = [json.loads(base64.urlsafe_b64decode(e + "=" * (-len(e) % 4))) for e in elements]
    assert decoded == [
        {"xVals": [{"x509Cert": {"val": base64.b64encode(intermediate.public_bytes(Encoding.DER)).decode()}}]},
        {"rVals": {"crlVals": [{"val": base64.b64encode(crl).decode()}], "ocspVals": [{"val": base64.b64encode(response).decode()}]}},
    ]  # fmt: skip
    clear = json.loads(lt)
    clear["header"]["etsiU"] = decoded
    _, data = parse_jws(json.dumps(clear))
    assert data.clear
    assert (data.ocsp_responses, data.crls) == ((response,), (crl,))
    # augmenting a clear seal keeps the clear form: one etsiU form per seal
    again = json.loads(add_validation_data(json.dumps(clear), ocsp_responses=[response]))
    assert all(isinstance(e, dict) for e in again["header"]["etsiU"])
    assert parse_jws(json.dumps(again))[1].ocsp_responses == (response, response)


def _lt_document(pki: Pki) -> dict[str, Any]:
    lt = add_validation_data(
        seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[pki.respond(pki.good)]
    )
    document: dict[str, Any] = json.loads(lt)
    return document


def _element(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


MALFORMED: list[tuple[str, Any, str]] = [
    ("array", lambda d: json.dumps([d]), "not a compact JWS"),
    ("not JSON", lambda d: json.dumps(d)[:-1], "not JSON"),
    ("duplicate member", lambda d: json.dumps(d)[:-1] + ',"signature":"AAAA"}', "duplicate JSON member signature"),
    ("general serialisation", lambda d: {"payload": d["payload"], "signatures": [{"protected": d["protected"], "signature": d["signature"]}]}, "general JSON serialisation"),
    ("no protected", lambda d: {k: v for k, v in d.items() if k != "protected"}, "protected must be a non-empty string"),
    ("signature a number", lambda d: {**d, "signature": 1}, "signature must be a non-empty string"),
    ("payload a number", lambda d: {**d, "payload": 1}, "payload must be a string"),
    ("padded payload", lambda d: {**d, "payload": d["payload"] + "="}, "payload is not unpadded base64url"),
    ("padded signature", lambda d: {**d, "signature": d["signature"] + "="}, "not unpadded base64url"),
    ("header a list", lambda d: {**d, "header": []}, "must be a JSON object"),
    ("unprotected kid", lambda d: {**d, "header": {**d["header"], "kid": "x"}}, "only etsiU may be unprotected"),
    ("empty etsiU", lambda d: {**d, "header": {"etsiU": []}}, "etsiU must be a non-empty array"),
    ("mixed etsiU", lambda d: {**d, "header": {"etsiU": [*d["header"]["etsiU"], {"xVals": []}]}}, "not a mixture"),
    ("two properties", lambda d: {**d, "header": {"etsiU": [_element({"xVals": [], "rVals": {}})]}}, "exactly one property"),
    ("empty time-stamp", lambda d: {**d, "header": {"etsiU": [_element({"sigTst": {"tstTokens": []}})]}}, "tstTokens must be a non-empty array"),
    ("archive time-stamp", lambda d: {**d, "header": {"etsiU": [_element({"arcTst": {"tstTokens": []}})]}}, "'arcTst': only sigTst, xVals and rVals"),
    ("not base64url", lambda d: {**d, "header": {"etsiU": ["e30+"]}}, "etsiU[0]: not unpadded base64url"),
    ("element not JSON", lambda d: {**d, "header": {"etsiU": [_element(1)[:-2]]}}, "etsiU[0]"),
    ("empty xVals", lambda d: {**d, "header": {"etsiU": [_element({"xVals": []})]}}, "xVals must be a non-empty array"),
    ("encoding", lambda d: {**d, "header": {"etsiU": [_element({"xVals": [{"x509Cert": {"val": "AA==", "encoding": "urn:x"}}]})]}}, "'encoding': only DER in val"),
    ("val not base64", lambda d: {**d, "header": {"etsiU": [_element({"rVals": {"crlVals": [{"val": "*"}]}})]}}, "val is not base64"),
    ("not a certificate", lambda d: {**d, "header": {"etsiU": [_element({"xVals": [{"x509Cert": {"val": "MAA="}}]})]}}, "is not an X.509 certificate"),
    ("not an OCSP response", lambda d: {**d, "header": {"etsiU": [_element({"rVals": {"ocspVals": [{"val": "MAA="}]}})]}}, "is not an OCSPResponse"),
    ("other rVals", lambda d: {**d, "header": {"etsiU": [_element({"rVals": {"otherVals": []}})]}}, "crlVals and/or ocspVals, nothing else"),
    ("too many", lambda d: {**d, "header": {"etsiU": [_element({"rVals": {"crlVals": [{"val": "MAA="}] * 65}})]}}, "is not a CRL"),
    ("too large", lambda d: {**d, "pad": "A" * MAX_JWS_BYTES}, "larger than"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_json_serialisation_is_refused(pki: Pki, mutate: Any, message: str) -> None:
    changed = mutate(_lt_document(pki))
    text = changed if isinstance(changed, str) else json.dumps(changed)
    with pytest.raises(JwsFormatError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_jws(text)
    report = pki.verifier().validate(text)
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.FORMAT_FAILURE,
    )


def test_unknown_members_are_ignored_as_rfc_7515_says(pki: Pki) -> None:
    document = {**_lt_document(pki), "comment": "not understood"}
    assert pki.verifier().validate(json.dumps(document)).passed


def test_wycheproof_json_serialisation_case_is_refused() -> None:
    groups = json.loads((WYCHEPROOF / "json_web_signature_test.json").read_text())["testGroups"]
    cases = [t for g in groups for t in g["tests"] if "JsonSerialization" in t.get("flags", [])]
    assert cases
    for case in cases:  # tcId 17: a general serialisation cut short ("]}" missing)
        with pytest.raises(JwsFormatError, match="not JSON"):
            parse_jws(case["jws"])
        with pytest.raises(JwsFormatError, match="general JSON serialisation"):
            parse_jws(case["jws"] + "]}")


def test_augmenting_refuses_what_is_not_what_it_is_given_as(pki: Pki) -> None:
    compact = seal(PAYLOAD, pki.provider(pki.good))
    with pytest.raises(JwsFormatError, match="is not an OCSPResponse"):
        add_validation_data(compact, ocsp_responses=[pki.crl_der()])
    with pytest.raises(JwsFormatError, match="not a compact JWS"):
        add_validation_data("nonsense", crls=[pki.crl_der()])


# -- verification with embedded data ----------------------------------------------------------


def test_embedded_good_ocsp_response_passes_offline(pki: Pki) -> None:
    response = pki.respond(pki.good)
    lt = add_validation_data(seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[response])
    report = pki.verifier().validate(lt)
    assert report.passed, report.message
    this_update = next(ocsp.load_der_ocsp_response(response).responses).this_update_utc
    assert f"embedded OCSP response of {this_update:%Y-%m-%dT%H:%M:%SZ}" in _check(
        report, "revocation"
    )
    assert "delegate CN=responder" in _check(report, "revocation")
    assert "1 OCSP response(s)" in _check(report, "format")
    assert f"region {REGION}'s root" in _check(report, "certificate chain")
    assert f"from registry version {pki.registry.version}" in _check(report, "signing key")
    assert report.payload == PAYLOAD
    # the same seal without its validation data is checked on the registry's CRL alone
    bare = pki.verifier().validate(to_compact(lt))
    assert bare.passed
    assert _check(bare, "revocation").endswith(f"not on region {REGION}'s CRLs")


def test_embedded_revoked_ocsp_response_is_revoked(pki: Pki) -> None:
    compact = seal(PAYLOAD, pki.provider(pki.revoked))
    lt = add_validation_data(compact, ocsp_responses=[pki.respond(pki.revoked)])
    report = pki.verifier().validate(lt)
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.REVOKED,
    )
    assert "embedded OCSP response" in report.message
    assert "key_compromise" in report.message
    # the registry's CRL predates the revocation: without the evidence the seal passes
    assert pki.verifier().validate(compact).passed


def _tampered(der: bytes) -> bytes:
    signature = ocsp.load_der_ocsp_response(der).signature
    at = der.index(signature) + len(signature) // 2
    return der[:at] + bytes([der[at] ^ 0x01]) + der[at + 1 :]


@pytest.mark.parametrize("how", ["tampered", "wrong responder"])
def test_embedded_data_that_cannot_be_relied_on_is_refused(pki: Pki, how: str) -> None:
    if how == "tampered":
        response = _tampered(pki.respond(pki.good))
        why = "signature does not verify"
    else:
        response = pki.respond(pki.good, pki.foreign_responder)
        why = "foreign-responder,O=Region is not certified by the issuer"
    lt = add_validation_data(seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[response])
    report = pki.verifier().validate(lt)
    assert (report.indication, report.sub_indication) == (
        Indication.INDETERMINATE,
        SubIndication.TRY_LATER,
    )
    assert (
        "the embedded OCSP response for the signing certificate cannot be relied on"
        in report.message
    )
    assert why in report.message


def test_embedded_crl(pki: Pki) -> None:
    crl = pki.crl_der()
    good = pki.verifier().validate(
        add_validation_data(seal(PAYLOAD, pki.provider(pki.good)), crls=[crl])
    )
    assert good.passed, good.message
    assert "embedded CRL of" in _check(good, "revocation")
    revoked = pki.verifier().validate(
        add_validation_data(seal(PAYLOAD, pki.provider(pki.revoked)), crls=[crl])
    )
    assert revoked.sub_indication is SubIndication.REVOKED
    assert "embedded CRL" in revoked.message


def test_items_about_other_certificates_are_ignored_and_counted(pki: Pki) -> None:
    other = pki.respond(pki.revoked)  # about another certificate: says nothing of this one
    lt = add_validation_data(
        seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[other, pki.respond(pki.good)]
    )
    report = pki.verifier().validate(lt)
    assert report.passed, report.message
    assert "1 embedded item(s) about no certificate of the chain" in _check(report, "revocation")


def test_recognised_and_validated_as_a_document(pki: Pki) -> None:
    lt = add_validation_data(
        seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[pki.respond(pki.good)]
    )
    assert recognise(lt.encode() + b"\n") is Format.JWS
    assert recognise(b'{"protected": 1}') is Format.UNKNOWN
    documents = DocumentVerifier(pki.verifier(), GmVerifier(RegistryTrust(pki.registry)))
    assert documents.validate(lt.encode()).passed


def test_signature_cross_checked_by_openssl_and_pyjwt(pki: Pki, tmp_path: Path) -> None:
    lt = add_validation_data(
        seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[pki.respond(pki.good)]
    )
    document = json.loads(lt)
    signing_input = f"{document['protected']}.{document['payload']}".encode()
    raw = base64.urlsafe_b64decode(document["signature"] + "==")
    der = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    public = _cert(pki.good).public_key()
    (tmp_path / "input").write_bytes(signing_input)
    (tmp_path / "sig").write_bytes(der)
    (tmp_path / "pub.pem").write_bytes(
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    verified = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", tmp_path / "pub.pem", "-signature",
         tmp_path / "sig", tmp_path / "input"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0
    assert "Verified OK" in verified.stdout
    decoded = jwt.api_jws.PyJWS().decode_complete(to_compact(lt), key=public, algorithms=["ES256"])
    assert decoded["payload"] == PAYLOAD


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every connection attempt is refused and recorded: the command must not make one."""
    attempts: list[object] = []

    def connect(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    return attempts


def test_tongban_verify_offline_with_a_snapshot(
    pki: Pki, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Baseline-LT offline: the registry snapshot file proves the key, the embedded OCSP
    response decides revocation, and nothing is fetched."""
    attempts = _no_network(monkeypatch)
    good = tmp_path / "good.jws.json"
    good.write_text(
        add_validation_data(
            seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[pki.respond(pki.good)]
        )
    )
    code, out, err = run("verify", good, *pki.trust_options(), "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["indication"] == "TOTAL_PASSED"
    checks = {c["name"]: c["detail"] for c in report["checks"]}
    assert "good by the embedded OCSP response of" in checks["revocation"]
    assert f"from registry version {pki.registry.version}" in checks["signing key"]
    revoked = tmp_path / "revoked.jws.json"
    revoked.write_text(
        add_validation_data(
            seal(PAYLOAD, pki.provider(pki.revoked)), ocsp_responses=[pki.respond(pki.revoked)]
        )
    )
    code, out, err = run("verify", revoked, *pki.trust_options(), "--json")
    assert (code, err) == (1, "")
    report = json.loads(out)
    assert (report["indication"], report["sub_indication"]) == ("TOTAL_FAILED", "REVOKED")
    assert "embedded OCSP response" in report["message"]
    code, out, _ = run("verify", revoked, *pki.trust_options())
    assert code == 1
    assert "REVOKED" in out
    assert attempts == []


def test_a_key_the_registry_does_not_hold_is_not_accepted_with_ca(
    pki: Pki, run: Run, tmp_path: Path
) -> None:
    """`--ca` anchors GB/T 38540 seals and OFD files, never a JWS key: a seal whose key the
    registry does not publish fails as it always did, though its chain leads to the --ca root
    and it carries a good OCSP response; and --ca does not stand in for the registry."""
    stranger = pki.provider(pki.stranger)
    lt = add_validation_data(seal(PAYLOAD, stranger), ocsp_responses=[pki.respond(pki.stranger)])
    report = pki.verifier().validate(lt)
    assert (report.indication, report.sub_indication) == (
        Indication.INDETERMINATE,
        SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
    )
    not_published = f"key {stranger.kid} is not published in registry version"
    assert report.message == f"{not_published} {pki.registry.version}"
    document = tmp_path / "stranger.jws.json"
    document.write_text(lt)
    for trust in (("--ca", pki.ca.root, *pki.trust_options()), ("--ca", pki.ca.root)):
        code, out, err = run("verify", document, *trust, "--json")
        assert (code, err) == (1, "")
        report_json = json.loads(out)
        assert (report_json["indication"], report_json["sub_indication"]) == (
            "INDETERMINATE",
            "NO_CERTIFICATE_CHAIN_FOUND",
        )
        assert report_json["message"].startswith(not_published)
        assert not any(c["name"] == "signature" for c in report_json["checks"])
    # a key the registry does publish is not proved by --ca without the registry either
    good = tmp_path / "good.jws.json"
    good.write_text(
        add_validation_data(
            seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[pki.respond(pki.good)]
        )
    )
    code, out, _ = run("verify", good, "--ca", pki.ca.root, "--json")
    assert code == 1
    assert json.loads(out)["sub_indication"] == "NO_CERTIFICATE_CHAIN_FOUND"


def test_tongban_seal_embeds_at_sealing_time(pki: Pki, run: Run, tmp_path: Path) -> None:
    provider = pki.provider(pki.good)  # writes the chain file beside the leaf
    (tmp_path / "doc.json").write_bytes(PAYLOAD)
    (tmp_path / "good.resp").write_bytes(pki.respond(pki.good))
    (tmp_path / "ca.crl").write_bytes(pki.crl_der())
    chain = pki.good.with_suffix(".chain.pem")
    key = pki.good.with_suffix(".key")
    out = tmp_path / "doc.json.jws"
    code, _, err = run("seal", tmp_path / "doc.json", "--key", key, "--cert", chain,
                       "--ocsp", tmp_path / "good.resp", "--crl", tmp_path / "ca.crl",
                       "--out", out)  # fmt: skip
    assert (code, err) == (0, "")
    _, data = parse_jws(out.read_text())
    assert (len(data.ocsp_responses), len(data.crls)) == (1, 1)
    code, out_text, _ = run("verify", out, *pki.trust_options())
    assert code == 0, out_text
    assert provider.kid in out_text
    code, _, err = run("seal", tmp_path / "doc.json", "--key", key, "--cert", chain,
                       "--ocsp", tmp_path / "ca.crl")  # fmt: skip
    assert code == 1
    assert err.startswith("tongban: the validation data cannot be embedded: ")
    assert "is not an OCSPResponse" in err
    assert "Traceback" not in err


def test_signing_time_after_expiry_of_response_window(pki: Pki) -> None:
    """A response is checked at the later of the signing time and its own issue: one that was
    no longer current when the seal was made proves nothing about it."""
    response = pki.respond(pki.good)
    later = datetime.now(UTC) + timedelta(hours=3)
    compact = seal(PAYLOAD, pki.provider(pki.good), signing_time=later)
    report = pki.verifier().validate(
        add_validation_data(compact, ocsp_responses=[response]),
        validation_time=later + timedelta(minutes=1),
    )
    assert report.sub_indication is SubIndication.TRY_LATER
    assert "stale" in report.message


def test_one_verifier_reports_each_seals_own_evidence(pki: Pki) -> None:
    """The verifier caches a passing key's checks per form; a JSON seal's are its own."""
    verifier = pki.verifier()
    compact = seal(PAYLOAD, pki.provider(pki.good))
    for _ in range(2):  # the second pass is served from the cache
        assert _check(verifier.validate(compact), "format").startswith("compact JWS")
    as_json = verifier.validate(to_json(compact))
    assert _check(as_json, "format").startswith("JWS JSON serialisation")
    lt = add_validation_data(compact, ocsp_responses=[pki.respond(pki.good)])
    for _ in range(2):
        report = verifier.validate(lt)
        assert "embedded OCSP response of" in _check(report, "revocation")
    compact_again = _check(verifier.validate(compact), "revocation")
    assert compact_again == f"key is pending in the registry; not on region {REGION}'s CRLs"


def test_byte_flips_in_the_json_form_never_raise(pki: Pki) -> None:
    """Every single-byte change of a baseline-LT seal gives a report, never an exception; and
    only changes outside what is signed or checked may still pass."""
    lt = add_validation_data(
        seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[pki.respond(pki.good)]
    ).encode()
    verifier = pki.verifier()
    step = max(1, len(lt) // 400)
    for at in range(0, len(lt), step):
        flipped = lt[:at] + bytes([lt[at] ^ 0x04]) + lt[at + 1 :]
        report = verifier.validate(flipped)
        assert isinstance(report, ValidationReport)
        if report.passed:  # JSON whitespace or letter case in names nothing checks
            assert parse_jws(flipped)[0].signature == parse_jws(lt)[0].signature


def test_every_byte_of_an_embedded_ocsp_response_changed_gives_a_report(pki: Pki) -> None:
    """cryptography reads an OCSP response's inner parts only when they are asked for: a change
    anywhere in an embedded response is a report (never an exception), and never a pass unless
    the response still says the same thing of the same certificate, signed the same."""
    response = pki.respond(pki.good)
    document = json.loads(
        add_validation_data(seal(PAYLOAD, pki.provider(pki.good)), ocsp_responses=[response])
    )
    verifier = pki.verifier()
    passed = 0
    for at in range(len(response)):
        flipped = response[:at] + bytes([response[at] ^ 0x01]) + response[at + 1 :]
        value = {"rVals": {"ocspVals": [{"val": base64.b64encode(flipped).decode()}]}}
        document["header"]["etsiU"] = [_element(value)]
        report = verifier.validate(json.dumps(document))
        assert isinstance(report, ValidationReport)
        passed += report.passed
    assert passed < len(response) // 10  # almost every change is refused
