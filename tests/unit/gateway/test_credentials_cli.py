"""`tongban seal` and `tongban verify`, driven through `main(argv)`: a seal made with a key file
verifies against the published registry; a changed document, a wrong or missing detached payload,
a wrong kind or region, a stale registry and unreadable files give the report (or the one line)
and the exit code the contract promises."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import Run
from support import Federation, make_federation

from registry import TRUSTED_ROOT, KeyState, KeyUsage

DOCUMENT = '{"licence":"91330000MA27XL0T4K","holder":"浙江通办科技有限公司"}\n'.encode()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """One published federation; the tests only read it."""
    federation = make_federation(tmp_path_factory.mktemp("fed"))
    federation.publish()
    return federation


def key_files(fed: Federation, owner: str, usage: KeyUsage = KeyUsage.SEAL) -> tuple[Path, Path]:
    """(private key, certificate chain) of the owner's active key for `usage`."""
    (record,) = fed.inventory().find(owner, usage, KeyState.ACTIVE)
    return fed.pki / record.private_key, fed.pki / record.certificate


def trust(fed: Federation) -> list[str | Path]:
    return ["--snapshot", fed.current, "--pki", fed.pki]


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "licence.json"
    path.write_bytes(DOCUMENT)
    return path


def sealed(
    run: Run, fed: Federation, document: Path, *extra: str | Path, owner: str = "330000"
) -> Path:
    """Seal `document` with the owner's seal key; return the JWS file."""
    key, cert = key_files(fed, owner)
    out = document.with_name(document.name + ".jws")
    code, stdout, err = run("seal", document, "--key", key, "--cert", cert, "--out", out, *extra)
    assert (code, err) == (0, ""), err
    assert "Sealed" in stdout
    return out


def flip_payload_char(jws: str) -> str:
    header, payload, signature = jws.strip().split(".")
    first = "B" if payload[0] == "A" else "A"  # still base64url, one changed byte
    return f"{header}.{first}{payload[1:]}.{signature}\n"


# seal ------------------------------------------------------------------------------------------
def test_seal_writes_a_compact_jws_to_stdout(run: Run, fed: Federation, document: Path) -> None:
    key, cert = key_files(fed, "330000")
    code, out, err = run("seal", document, "--key", key, "--cert", cert)
    assert (code, err) == (0, "")
    (line,) = out.splitlines()
    header, payload, signature = line.split(".")
    assert base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)) == DOCUMENT
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    assert decoded["cty"] == "application/json"  # guessed from the file name
    assert decoded["alg"] == "ES256"
    assert signature


def test_seal_detached_leaves_the_payload_out_and_takes_a_content_type(
    run: Run, fed: Federation, document: Path
) -> None:
    jws = sealed(run, fed, document, "--detached", "--content-type", "application/pdf")
    header, payload, _ = jws.read_text().strip().split(".")
    assert payload == ""
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    assert decoded["cty"] == "application/pdf"
    assert decoded["crit"] == ["sigD"]


# verify: the outcomes --------------------------------------------------------------------------
def test_seal_then_verify_passes(run: Run, fed: Federation, document: Path) -> None:
    jws = sealed(run, fed, document)
    code, out, err = run("verify", jws, *trust(fed))
    assert (code, err) == (0, "")
    headline = out.splitlines()[0]
    assert headline.startswith("TOTAL_PASSED — e-seal by 浙江省 (330000) made at ")
    for label in ("signer", "kid", "owner", "region", "kind", "signing time", "registry version"):
        assert label in out
    assert fed.active("330000", KeyUsage.SEAL) in out
    assert "e-seal" in out
    assert "✓" in out
    assert "✗" not in out


def test_agency_seal_names_the_agency(run: Run, fed: Federation, document: Path) -> None:
    jws = sealed(run, fed, document, owner="sc.hrss")
    code, out, _ = run("verify", jws, *trust(fed), "--region", "510000", "--expect", "seal")
    assert code == 0
    assert out.startswith("TOTAL_PASSED — e-seal by 四川省人力资源和社会保障厅 (510000)")
    assert "(sc.hrss)" in out


def test_tampered_document_fails_the_signature(run: Run, fed: Federation, document: Path) -> None:
    jws = sealed(run, fed, document)
    jws.write_text(flip_payload_char(jws.read_text()))
    code, out, err = run("verify", jws, *trust(fed))
    assert code == 1
    assert err == ""
    headline = out.splitlines()[0]
    assert headline.startswith("TOTAL_FAILED / SIG_CRYPTO_FAILURE — the signature does not verify")
    assert "✗" in out


def test_detached_with_the_wrong_payload_is_a_hash_failure(
    run: Run, fed: Federation, document: Path, tmp_path: Path
) -> None:
    jws = sealed(run, fed, document, "--detached")
    other = tmp_path / "other.json"
    other.write_bytes(DOCUMENT.replace(b"MA27", b"MA28"))
    code, out, _ = run("verify", jws, "--payload", other, *trust(fed))
    assert code == 1
    assert out.startswith("TOTAL_FAILED / HASH_FAILURE")
    code, out, _ = run("verify", jws, "--payload", document, *trust(fed))
    assert code == 0
    assert out.startswith("TOTAL_PASSED")


def test_detached_without_payload_is_indeterminate(
    run: Run, fed: Federation, document: Path
) -> None:
    jws = sealed(run, fed, document, "--detached")
    code, out, _ = run("verify", jws, *trust(fed))
    assert code == 1  # INDETERMINATE is not a pass
    assert out.startswith("INDETERMINATE / SIGNED_DATA_NOT_FOUND")


def test_expecting_a_signature_of_a_seal_is_a_chain_constraints_failure(
    run: Run, fed: Federation, document: Path
) -> None:
    jws = sealed(run, fed, document)
    code, out, _ = run("verify", jws, *trust(fed), "--expect", "signature")
    assert code == 1
    assert out.startswith("INDETERMINATE / CHAIN_CONSTRAINTS_FAILURE")
    assert "an e-signature was required, but this is an e-seal" in out


def test_expecting_another_region_is_a_chain_constraints_failure(
    run: Run, fed: Federation, document: Path
) -> None:
    jws = sealed(run, fed, document)
    code, out, _ = run("verify", jws, *trust(fed), "--region", "510000")
    assert code == 1
    assert out.startswith("INDETERMINATE / CHAIN_CONSTRAINTS_FAILURE")
    assert "not of region 510000" in out


def test_a_signature_key_makes_an_e_signature(run: Run, fed: Federation, document: Path) -> None:
    key, cert = key_files(fed, "330000", KeyUsage.SIGNATURE)
    out_file = document.with_name("signed.jws")
    assert run("seal", document, "--key", key, "--cert", cert, "--out", out_file)[0] == 0
    code, out, _ = run("verify", out_file, *trust(fed), "--expect", "signature", "--json")
    assert code == 0
    assert json.loads(out)["kind"] == "signature"


def test_json_report_has_every_field(run: Run, fed: Federation, document: Path) -> None:
    jws = sealed(run, fed, document)
    code, out, err = run("verify", jws, *trust(fed), "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["indication"] == "TOTAL_PASSED"
    assert report["sub_indication"] is None
    assert report["kind"] == "seal"
    assert report["owner"] == report["owner_region"] == "330000"
    assert report["signer_kid"] == fed.active("330000", KeyUsage.SEAL)
    assert report["signer_subject"].startswith("CN=")
    assert report["algorithm"] == "ES256"
    assert report["content_type"] == "application/json"
    assert report["registry_version"] == 1
    assert report["registry_stale"] is False
    assert datetime.fromisoformat(report["signing_time"]) <= datetime.now(UTC)
    assert base64.b64decode(report["payload"]) == DOCUMENT
    assert [c["name"] for c in report["checks"]][:3] == ["format", "header", "algorithm"]
    assert all(c["passed"] for c in report["checks"])
    assert report["message"]
    # the keys every format shares
    assert report["format"] == "JAdES"
    assert report["signed_at"] == report["signing_time"]
    assert report["signer"] == {
        "subject": report["signer_subject"],
        "kid": report["signer_kid"],
        "owner": "330000",
        "region": "330000",
    }
    assert report["signatures"] == []


def test_json_report_of_a_failure(run: Run, fed: Federation, document: Path) -> None:
    jws = sealed(run, fed, document)
    jws.write_text(flip_payload_char(jws.read_text()))
    code, out, _ = run("verify", jws, *trust(fed), "--json")
    assert code == 1
    report = json.loads(out)
    assert report["indication"] == "TOTAL_FAILED"
    assert report["sub_indication"] == "SIG_CRYPTO_FAILURE"
    assert report["payload"] is None
    assert report["checks"][-1] == {
        "name": "signature",
        "passed": False,
        "detail": report["message"],
    }


def test_detached_json_report_carries_the_payload(
    run: Run, fed: Federation, document: Path
) -> None:
    jws = sealed(run, fed, document, "--detached")
    code, out, _ = run("verify", jws, "--payload", document, *trust(fed), "--json")
    assert code == 0
    assert base64.b64decode(json.loads(out)["payload"]) == DOCUMENT


def test_validation_time_before_the_signing_time_is_refused(
    run: Run, fed: Federation, document: Path
) -> None:
    jws = sealed(run, fed, document)
    earlier = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    code, out, _ = run("verify", jws, *trust(fed), "--at", earlier)
    assert code == 1
    assert out.startswith("TOTAL_FAILED / FORMAT_FAILURE")
    assert "in the future" in out


def test_authority_key_may_be_given_instead_of_the_pki(
    run: Run, fed: Federation, document: Path
) -> None:
    jws = sealed(run, fed, document)
    authority = fed.pki / TRUSTED_ROOT
    code, out, _ = run("verify", jws, "--snapshot", fed.current, "--authority", authority)
    assert code == 0
    assert out.startswith("TOTAL_PASSED")


def test_markup_in_a_jws_is_printed_as_text(run: Run, fed: Federation, tmp_path: Path) -> None:
    # The verifier quotes the unknown crit name: rich must print it, not interpret it.
    header_json = b'{"crit":["[red]x[/red]"],"[red]x[/red]":1}'
    header = base64.urlsafe_b64encode(header_json).rstrip(b"=").decode()
    jws = tmp_path / "markup.jws"
    jws.write_text(f"{header}.e30.c2ln\n")
    code, out, _ = run("verify", jws, *trust(fed))
    assert code == 1
    assert out.startswith("TOTAL_FAILED / FORMAT_FAILURE")
    assert "crit lists '[red]x[/red]'" in out
    garbage = tmp_path / "garbage.jws"
    garbage.write_bytes(b"\xff\xfe not a JWS")
    code, out, _ = run("verify", garbage, *trust(fed))
    assert code == 1
    assert out.startswith("TOTAL_FAILED / FORMAT_FAILURE")


def test_stale_registry_verifies_with_a_warning(
    run: Run, document: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = make_federation(tmp_path / "stale")
    fed.publish(lifetime_seconds=60)
    jws = sealed(run, fed, document)
    later = datetime.now(UTC) + timedelta(minutes=5)
    monkeypatch.setattr("gateway.cli.credentials.utc_now", lambda: later)
    code, out, err = run("verify", jws, *trust(fed))
    assert code == 0
    assert out.startswith("TOTAL_PASSED")
    (warning,) = err.splitlines()
    assert warning.startswith("warning: registry version 1 expired at ")
    assert "stale" in warning
    code, out, _ = run("verify", jws, *trust(fed), "--json")
    assert code == 0
    assert json.loads(out)["registry_stale"] is True


# help, bad command lines, unreadable files -----------------------------------------------------
@pytest.mark.parametrize(
    ("verb", "description"),
    [
        ("seal", "Seal (or sign) a file"),
        ("verify", "Verify an e-seal or e-signature, recognised by its content"),
    ],
)
def test_help(run: Run, verb: str, description: str) -> None:
    code, out, err = run(verb, "--help")
    assert (code, err) == (0, "")
    assert out.startswith(f"usage: tongban {verb}")
    assert description in " ".join(out.split())
    _, top, _ = run("--help")
    assert f"\n    {verb} " in top  # listed as a command


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["seal"], "file", id="seal-no-file"),
        pytest.param(["seal", "d", "--cert", "c"], "--key", id="seal-no-key"),
        pytest.param(["seal", "d", "--key", "k"], "--cert", id="seal-no-cert"),
        pytest.param(
            [
                "seal",
                "d",
                "--key",
                "k",
                "--cert",
                "c",
                "--passphrase-env",
                "A",
                "--passphrase-file",
                "f",
            ],
            "not allowed with",
            id="seal-two-passphrases",
        ),
        pytest.param(["verify"], "file", id="verify-no-file"),
        pytest.param(["verify", "s.jws", "--pki", "p"], "--snapshot", id="verify-no-snapshot"),
        pytest.param(
            ["verify", "s.jws", "--snapshot", "c"], "--authority", id="verify-no-authority"
        ),
        pytest.param(["verify", "s.jws"], "--ca PEM", id="verify-no-trust"),
        pytest.param(
            ["verify", "s.jws", "--snapshot", "c", "--pki", "p", "--authority", "a"],
            "not allowed with",
            id="verify-two-trusts",
        ),
        pytest.param(
            ["verify", "s.jws", "--snapshot", "c", "--pki", "p", "--expect", "stamp"],
            "invalid choice: 'stamp'",
            id="verify-bad-expect",
        ),
        pytest.param(
            ["verify", "s.jws", "--snapshot", "c", "--pki", "p", "--region", "999999"],
            "999999",
            id="verify-bad-region",
        ),
        pytest.param(
            ["verify", "s.jws", "--snapshot", "c", "--pki", "p", "--at", "2026-01-01T00:00:00"],
            "with an offset",
            id="verify-at-no-offset",
        ),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(run: Run, argv: list[str], fragment: str) -> None:
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tongban")
    assert "error:" in lines[0]
    assert fragment in lines[0]


def test_unreadable_files_are_one_line_and_exit_1_or_2(
    run: Run, fed: Federation, document: Path, tmp_path: Path
) -> None:
    key, cert = key_files(fed, "330000")
    jws = sealed(run, fed, document)
    missing = tmp_path / "missing"
    cases: list[tuple[list[str | Path], str]] = [
        (["seal", missing, "--key", key, "--cert", cert], "the document cannot be read"),
        (["seal", document, "--key", missing, "--cert", cert], str(missing)),
        (["seal", document, "--key", key, "--cert", missing], str(missing)),
        (["seal", document, "--key", cert, "--cert", key], ""),  # swapped: neither parses
        (
            ["seal", document, "--key", key, "--cert", cert, "--out", tmp_path / "no" / "x.jws"],
            "x.jws",
        ),
        (["verify", missing, *trust(fed)], "the document cannot be read"),
        (["verify", jws, "--payload", missing, *trust(fed)], "the payload cannot be read"),
        (["verify", jws, "--snapshot", missing, "--pki", fed.pki], "snapshot cannot be read"),
        (["verify", jws, "--snapshot", fed.current, "--pki", missing], str(missing)),
        (["verify", jws, "--snapshot", jws, "--pki", fed.pki], ""),  # not a snapshot
    ]
    for argv, fragment in cases:
        code, out, err = run(*argv)
        # verify: 1 is a report that did not pass; no report at all is 2
        assert code == (2 if argv[0] == "verify" else 1), (argv, out, err)
        assert out == "", argv
        assert "Traceback" not in err
        (line,) = err.splitlines()
        assert line.startswith("tongban verify: error: " if argv[0] == "verify" else "tongban: ")
        assert fragment in line, (argv, line)


def test_a_snapshot_of_another_authority_is_refused(
    run: Run, fed: Federation, document: Path, tmp_path: Path
) -> None:
    other = make_federation(tmp_path / "other")
    other.publish()
    jws = sealed(run, fed, document)
    code, out, err = run("verify", jws, "--snapshot", other.current, "--pki", fed.pki)
    assert code == 2
    assert out == ""
    assert "which the trusted root does not name" in err


def test_a_seal_of_another_federation_has_no_chain(
    run: Run, fed: Federation, document: Path, tmp_path: Path
) -> None:
    other = make_federation(tmp_path / "other")
    jws = sealed(run, other, document)
    code, out, _ = run("verify", jws, *trust(fed))
    assert code == 1
    assert out.startswith("INDETERMINATE / NO_CERTIFICATE_CHAIN_FOUND")


def test_the_report_at_80_columns_carries_the_json_facts_whole(
    run: Run, fed: Federation, document: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jws = sealed(run, fed, document)
    code, text, _ = run("verify", jws, *trust(fed), "--json")
    assert code == 0
    report = json.loads(text)
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run("verify", jws, *trust(fed))
    assert (code, err) == (0, "")
    assert "…" not in out
    assert report["signer_kid"] in out
    assert report["signing_time"].replace("T", " ") in out
    for check in report["checks"]:
        assert f" {check['name']} " in out, check["name"]


def test_an_empty_document_sealed_detached_verifies(
    run: Run, fed: Federation, tmp_path: Path
) -> None:
    """An empty --payload is signed data like any other (only the document to verify must not
    be empty)."""
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    jws = sealed(run, fed, empty, "--detached")
    code, out, err = run("verify", jws, "--payload", empty, *trust(fed))
    assert (code, err) == (0, ""), out
    code, _, err = run("verify", empty, *trust(fed))
    assert code == 2
    assert "the document is empty" in err
