"""`tongban registry import-ca|import-cert|import-crl` through `main(argv)`: an OpenSSL-made
region CA, seal certificate and CRL go in, `registry publish` then publishes them; a refusal is
one line on stderr and exit code 1."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cli_support import Run
from openssl_ca import make_openssl_ca
from support import make_federation

from registry import Inventory, KeyState, KeyUsage
from registry._pki import ca_dir

REGION = "500000"


def test_import_then_publish(run: Run, tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "fed", now=datetime.now(UTC) - timedelta(hours=1))
    shutil.rmtree(ca_dir(fed.pki, REGION))
    ca = make_openssl_ca(tmp_path / "ca", "Chongqing")
    pki = ["--pki", fed.pki]

    code, out, _ = run("registry", "import-ca", *pki, "--region", REGION, ca.root,
                       "--intermediate", ca.intermediate)  # fmt: skip
    assert code == 0, out
    assert "Imported region 500000's CA (2 certificates" in out
    code, _, err = run("registry", "import-ca", *pki, "--region", REGION, ca.root)
    assert (code, err.count("\n")) == (1, 1)
    assert "already has a CA" in err

    cert, key = ca.issue("seal", "seal")
    code, out, err = run("registry", "import-cert", *pki, "--owner", REGION, "--usage", "seal",
                         cert, "--key", key)  # fmt: skip
    assert code == 0, err
    (record,) = Inventory.load(fed.pki).find(REGION, KeyUsage.SEAL, KeyState.PENDING)
    assert record.kid in out

    publish = ["registry", "publish", "--source", fed.source, *pki, "--out", fed.published]
    code, _, err = run(*publish)
    assert code == 1
    assert "import-crl" in err
    code, out, err = run("registry", "import-crl", *pki, "--region", REGION, ca.crl())
    assert code == 0, err
    assert "0 revoked" in out
    code, out, err = run(*publish)
    assert code == 0, err
    assert "Published registry version 1" in out
