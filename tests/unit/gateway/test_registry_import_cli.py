"""`tongban registry import-ca|import-cert|import-crl` through `main(argv)`, with the command
lines of docs/operators.md as written (run in a folder holding their files): an OpenSSL-made
region CA, seal certificate and CRL go in and `registry publish` publishes them; a refusal is one
line on stderr and exit code 1."""

from __future__ import annotations

import shlex
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import Run
from openssl_ca import make_openssl_ca
from support import make_federation

from registry import Inventory, KeyState, KeyUsage
from registry._pki import ca_dir

REGION = "500000"
DOCS = [  # docs/operators.md, "A region's own CA"
    "tongban registry import-ca --pki pki --region 500000 root.pem --intermediate intermediate.pem",
    "tongban registry import-cert --pki pki --owner 500000 --usage seal seal.pem --key seal.key",
    "tongban registry import-crl --pki pki --region 500000 crl.pem",
    "tongban registry publish --pki pki --out published",
]


def test_import_then_publish(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = make_federation(tmp_path / "fed", now=datetime.now(UTC) - timedelta(hours=1))
    shutil.rmtree(ca_dir(fed.pki, REGION))  # the region brings its own CA
    ca = make_openssl_ca(tmp_path / "ca", "Chongqing")
    seal, key = ca.issue("seal", "seal")
    walk = tmp_path / "walk"
    shutil.copytree(fed.pki, walk / "pki")
    for source, name in [(ca.root, "root.pem"), (ca.intermediate, "intermediate.pem"),
                         (seal, "seal.pem"), (key, "seal.key"), (ca.crl(), "crl.pem")]:  # fmt: skip
        shutil.copyfile(source, walk / name)
    monkeypatch.chdir(walk)
    import_ca, import_cert, import_crl, publish = (shlex.split(c)[1:] for c in DOCS)

    code, out, err = run(*import_ca)
    assert code == 0, err
    assert "Imported region 500000's CA (2 certificates" in out
    code, _, err = run(*import_ca)
    assert (code, err.count("\n")) == (1, 1)
    assert "already has a CA" in err

    code, out, err = run(*import_cert)
    assert code == 0, err
    (record,) = Inventory.load(walk / "pki").find(REGION, KeyUsage.SEAL, KeyState.PENDING)
    assert record.kid in out

    code, _, err = run(*publish)
    assert (code, err.count("\n")) == (1, 1)
    assert "import-crl" in err
    code, out, err = run(*import_crl)
    assert code == 0, err
    assert "0 revoked" in out
    code, out, err = run(*publish)
    assert code == 0, err
    assert "Published registry version 1" in out
