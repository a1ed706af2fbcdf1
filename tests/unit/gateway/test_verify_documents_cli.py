"""`tongban verify` on every format it recognises: ofdrw's OFD file, its SESeal and its
SES_Signature (with the signed Signature.xml as --payload) against --ca, an SM2 seal made here
that passes (through an intermediate given with --ca), the JSON keys, and the inputs from which
no report can be made (exit 2, one line, never a traceback)."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import Run
from sm2_support import SIGNING_USAGE, Issued, issue
from support import SHARED, Federation, make_federation

from signer import MAX_DOCUMENT_BYTES, Sm2FileSigner, make_seal, sign_with_seal

GM = SHARED / "vectors" / "gm"
OFD = GM / "ses-v4-signed.ofd"
ESL = GM / "seal-v4.esl"
ROOT = GM / "ofdrw-root.pem"
SIGN = "Doc_0/Signs/Sign_0/"
DATA = "<licence>91330000MA27XL0T4K 浙江通办科技有限公司</licence>".encode()
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(64)


@pytest.fixture(scope="module")
def ofd_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(SignedValue.dat, Signature.xml) of the ofdrw OFD: a DER SES_Signature and its data."""
    folder = tmp_path_factory.mktemp("ofd")
    with zipfile.ZipFile(OFD) as archive:
        for name in ("SignedValue.dat", "Signature.xml"):
            (folder / name).write_bytes(archive.read(SIGN + name))
    return folder / "SignedValue.dat", folder / "Signature.xml"


def verify_json(run: Run, *argv: str | Path) -> tuple[int, dict[str, object]]:
    code, out, err = run("verify", *argv, "--json")
    assert err == "", err
    return code, json.loads(out)


def checks_of(report: dict[str, object]) -> dict[str, bool]:
    checks = report["checks"]
    assert isinstance(checks, list)
    return {c["name"]: c["passed"] for c in checks}


# ofdrw's artefacts: a real OFD, seal and signature made by another implementation -----------
def test_the_ofdrw_ofd_reports_each_signature(run: Run) -> None:
    code, report = verify_json(run, OFD, "--ca", ROOT)
    assert code == 1  # the signer's certificate had expired when it claims to have signed
    assert report["format"] == "OFD"
    assert (report["indication"], report["sub_indication"]) == ("TOTAL_FAILED", "EXPIRED")
    for key in ("signed_at", "signer", "checks", "signatures", "message", "signing_time"):
        assert key in report
    assert checks_of(report)["OFD package"]
    (signature,) = report["signatures"]  # type: ignore[misc]
    assert signature["format"] == "GB/T 38540 SES_Signature v4"
    assert signature["signer"]["subject"].startswith("CN=Test Certificate")
    assert signature["signer"]["region"] == ""  # an outside document: no region of ours
    assert signature["signed_at"] == "2026-08-04T02:08:09Z"
    assert signature["algorithm"] == "SM2"
    checks = checks_of(signature)
    assert checks["signature"]  # the SM2 signature over TBS_Sign verifies
    assert checks["data hash"]  # and dataHash is SM3 of Signature.xml
    assert checks["Reference /Doc_0/Document.xml"]
    assert not checks["validity at signing time"]
    assert not checks["signer chain"]  # ofdrw's root lacks keyCertSign


def test_the_ofd_in_tables_has_one_per_signature(run: Run) -> None:
    code, out, err = run("verify", OFD, "--ca", ROOT)
    assert (code, err) == (1, "")
    assert out.startswith("TOTAL_FAILED / EXPIRED — 1 of 1 signatures failed")
    assert "\nSignature 1: TOTAL_FAILED / EXPIRED" in out
    assert "Checks of signature 1" in out
    assert "GB/T 38540 SES_Signature v4" in out
    assert "none (--ca anchors only)" in out


def test_the_ofdrw_seal_by_itself(run: Run) -> None:
    code, report = verify_json(run, ESL, "--ca", ROOT)
    assert code == 1
    assert report["format"] == "GB/T 38540 SESeal v4"
    assert report["signatures"] == []
    checks = checks_of(report)
    assert checks["seal signature"]  # the maker's SM2 signature over the seal
    assert not checks["seal maker chain"]


def test_the_ses_signature_with_its_payload(run: Run, ofd_parts: tuple[Path, Path]) -> None:
    signed_value, signature_xml = ofd_parts
    code, report = verify_json(run, signed_value, "--payload", signature_xml, "--ca", ROOT)
    assert code == 1
    assert report["format"] == "GB/T 38540 SES_Signature v4"
    assert checks_of(report)["data hash"]
    changed = signature_xml.with_name("changed.xml")
    changed.write_bytes(signature_xml.read_bytes().replace(b"<", b"[", 1))
    code, report = verify_json(run, signed_value, "--payload", changed, "--ca", ROOT)
    assert (report["indication"], report["sub_indication"]) == ("TOTAL_FAILED", "HASH_FAILURE")


def test_without_the_anchor_there_is_no_chain(
    run: Run, fed: Federation, ofd_parts: tuple[Path, Path]
) -> None:
    """Against a registry alone, an outside seal chains to nothing, and the other checks are
    still reported."""
    signed_value, signature_xml = ofd_parts
    code, report = verify_json(
        run, signed_value, "--payload", signature_xml, "--snapshot", fed.current, "--pki", fed.pki
    )
    assert code == 1
    checks = report["checks"]
    assert isinstance(checks, list)
    chain = next(c for c in checks if c["name"] == "signer chain")
    assert not chain["passed"]
    assert "NO_CERTIFICATE_CHAIN_FOUND" in chain["detail"]
    assert checks_of(report)["signature"]


# An SM2 seal made here passes --------------------------------------------------------------
@pytest.fixture(scope="module")
def sm2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An SM2 root, an issuing CA, a seal maker and a signer under it; a seal, an
    SES_Signature over DATA; PEM files for --ca."""
    now = datetime.now(UTC)
    window = {"not_before": now - timedelta(days=30), "not_after": now + timedelta(days=365)}
    leaf = {"ca": False, "usage": SIGNING_USAGE, **window}
    root = issue("Test province root CA", **window)  # type: ignore[arg-type]
    issuing = issue("Test province seal CA", root, path_length=0, **window)  # type: ignore[arg-type]
    maker: Issued = issue("Test seal maker", issuing, **leaf)  # type: ignore[arg-type]
    signer: Issued = issue("Test agency seal key", issuing, **leaf)  # type: ignore[arg-type]
    seal = make_seal(
        maker=Sm2FileSigner(maker.key, maker.certificate),
        es_id="33000000000000000042",
        name="测试专用章",
        seal_type=1,
        signer_certificates=[signer.certificate],
        picture=PICTURE,
        width_mm=40,
        height_mm=40,
        valid_from=now - timedelta(days=7),
        valid_until=now + timedelta(days=90),
        created=now - timedelta(days=7),
    )
    ses = sign_with_seal(
        DATA,
        seal=seal,
        signer=Sm2FileSigner(signer.key, signer.certificate),
        at=now - timedelta(minutes=1),
        property_info="licence.xml",
    )
    folder = tmp_path_factory.mktemp("sm2")
    files = {
        "ses": ses,
        "esl": seal,
        "data": DATA,
        "chain.pem": issuing.pem + root.pem,
        "root.pem": root.pem,
        "issuing.pem": issuing.pem,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def test_an_sm2_seal_made_here_passes_through_an_intermediate(
    run: Run, sm2: dict[str, Path]
) -> None:
    code, report = verify_json(run, sm2["ses"], "--payload", sm2["data"], "--ca", sm2["chain.pem"])
    assert code == 0, report["message"]
    assert report["indication"] == "TOTAL_PASSED"
    assert report["format"] == "GB/T 38540 SES_Signature v4"
    assert report["signer"]["subject"].startswith("CN=Test agency seal key")  # type: ignore[index]
    assert report["kind"] == "seal"
    assert report["payload"] is not None
    code, _ = verify_json(run, sm2["ses"], "--payload", sm2["data"], "--ca", sm2["root.pem"])
    assert code == 1  # without the issuing CA there is no path


def test_expectations_hold_for_an_sm2_seal(run: Run, sm2: dict[str, Path]) -> None:
    argv = (sm2["ses"], "--payload", sm2["data"], "--ca", sm2["chain.pem"])
    code, report = verify_json(run, *argv, "--expect", "signature")
    assert (code, report["sub_indication"]) == (1, "CHAIN_CONSTRAINTS_FAILURE")
    code, report = verify_json(run, *argv, "--region", "330000")
    assert (code, report["sub_indication"]) == (1, "CHAIN_CONSTRAINTS_FAILURE")
    code, _ = verify_json(run, *argv, "--expect", "seal")
    assert code == 0


def test_a_seal_refuses_a_payload(run: Run, sm2: dict[str, Path]) -> None:
    code, report = verify_json(run, sm2["esl"], "--payload", sm2["data"], "--ca", sm2["chain.pem"])
    assert (code, report["sub_indication"]) == (1, "FORMAT_FAILURE")
    assert "no separate payload" in str(report["message"])


# The JWS keeps its keys and gains the new ones ---------------------------------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    federation = make_federation(tmp_path_factory.mktemp("fed"))
    federation.publish()
    return federation


def test_unknown_content_is_a_format_failure_report(
    run: Run, fed: Federation, tmp_path: Path
) -> None:
    path = tmp_path / "licence.pdf"
    path.write_bytes(b"%PDF-1.7\n")
    code, report = verify_json(run, path, "--snapshot", fed.current, "--pki", fed.pki)
    assert (code, report["sub_indication"]) == (1, "FORMAT_FAILURE")
    assert report["format"] is None


# No report can be made: exit 2 -------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("folder", "is a folder"),
        ("empty", "is empty"),
        ("too-big", f"larger than {MAX_DOCUMENT_BYTES} bytes"),
        ("ca-not-pem", "--ca takes PEM certificates"),
        ("ca-empty", "is empty"),
        ("ca-no-root", "none of the certificates is a root"),
        ("payload-folder", "is a folder"),
    ],
)
def test_unusable_inputs_exit_2_with_one_line(
    run: Run, sm2: dict[str, Path], tmp_path: Path, case: str, fragment: str
) -> None:
    document, ca, payload = sm2["ses"], sm2["chain.pem"], sm2["data"]
    if case == "folder":
        document = tmp_path
    elif case == "empty":
        document = tmp_path / "empty"
        document.write_bytes(b"")
    elif case == "too-big":
        document = tmp_path / "big"
        with document.open("wb") as file:
            file.truncate(MAX_DOCUMENT_BYTES + 1)
    elif case.startswith("ca-"):
        ca = tmp_path / "ca.pem"
        ca.write_bytes({"ca-not-pem": b"not a certificate\n", "ca-empty": b""}.get(case, b""))
        if case == "ca-no-root":
            ca.write_bytes(sm2["issuing.pem"].read_bytes())
    else:
        payload = tmp_path
    code, out, err = run("verify", document, "--payload", payload, "--ca", ca)
    assert (code, out) == (2, "")
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("tongban verify: error: ")
    assert fragment in line
