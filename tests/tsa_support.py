"""A real RFC 3161 time-stamping authority on loopback: OpenSSL's `openssl ts -reply` behind a
small `http.server` thread, with a TSA certificate (extendedKeyUsage critical timeStamping)
issued by its own OpenSSL CA (`tests/openssl_ca.py`); and `openssl ts -verify`, to check the
tokens Tongban keeps with an implementation independent of it."""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from openssl_ca import OpenSslCa, make_openssl_ca

__all__ = ["Tsa", "running_tsa"]

_TS_CONFIG = """\
[tsa]
default_tsa = tsa_config

[tsa_config]
dir = {dir}
serial = $dir/tsaserial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/intermediate.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.156.99999.1
other_policies = 1.2.156.99999.2
digests = sha256, sha384, sha512
accuracy = secs:1
clock_precision_digits = 0
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


@dataclass
class Tsa:
    ca: OpenSslCa
    url: str
    requests: list[bytes] = field(default_factory=list)  # the queries received, in order

    @property
    def root(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca.root.read_bytes())

    def verify(self, token: bytes, data: bytes) -> str:
        """`openssl ts -verify` of a DER token over `data`, trusting the TSA CA's root: its
        output ("Verification: OK"); CalledProcessError if OpenSSL refuses."""
        with tempfile.TemporaryDirectory() as folder:
            token_file, data_file = Path(folder, "token.der"), Path(folder, "data")
            token_file.write_bytes(token)
            data_file.write_bytes(data)
            done = subprocess.run(
                ["openssl", "ts", "-verify", "-token_in", "-in", token_file, "-data", data_file,
                 "-CAfile", self.ca.root, "-untrusted", self.ca.intermediate],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        return done.stdout.strip()


def _handler(tsa: Tsa, config: Path, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            tsa.requests.append(query)
            with lock, tempfile.TemporaryDirectory() as folder:
                request, reply = Path(folder, "q.tsq"), Path(folder, "r.tsr")
                request.write_bytes(query)
                done = subprocess.run(
                    ["openssl", "ts", "-reply", "-config", config, "-queryfile", request,
                     "-out", reply],
                    capture_output=True, check=False,
                )  # fmt: skip
                body = reply.read_bytes() if done.returncode == 0 else b""
            self.send_response(200 if body else 400)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


@contextmanager
def running_tsa(folder: Path) -> Iterator[Tsa]:
    """A TSA CA (root, intermediate), its TSA certificate and `openssl ts -reply` served on
    127.0.0.1 at an ephemeral port, until the context ends."""
    ca = make_openssl_ca(folder / "tsa-ca", "Time")
    cert, key = ca.issue("tsa", "tsa", days=365)
    cert.rename(ca.dir / "tsa.pem")
    key.rename(ca.dir / "tsa.key")
    (ca.dir / "tsaserial").write_text("01\n")
    config = ca.dir / "ts.cnf"
    config.write_text(_TS_CONFIG.format(dir=ca.dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    tsa = Tsa(ca, f"http://127.0.0.1:{server.server_address[1]}/tsr")
    server.RequestHandlerClass = _handler(tsa, config, threading.Lock())
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield tsa
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
