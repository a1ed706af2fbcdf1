"""Revocation services on loopback for tests: an `openssl ocsp` responder serving an OpenSSL
CA's index (tests/openssl_ca.py), and an `http.server` thread serving CRLs, counting requests."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from openssl_ca import OpenSslCa
from support import free_port  # re-exported: one port picker for every test

__all__ = ["Responder", "Served", "cert", "free_port"]


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@dataclass
class Served:
    """Files of a folder over HTTP on loopback, counting requests per path (`/slow/...` answers
    after a pause, for the shared-fetch test)."""

    folder: Path
    counts: Counter[str] = field(default_factory=Counter)
    server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.counts[self.path] += 1
                if self.path.startswith("/slow/"):
                    time.sleep(0.3)
                target = served.folder / self.path.rsplit("/", 1)[-1]
                if not target.is_file():
                    self.send_error(404)
                    return
                body = target.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@dataclass
class Responder:
    """`openssl ocsp` answering from the CA's index on a fixed loopback port."""

    ca: OpenSslCa
    port: int
    process: subprocess.Popen[str] | None = None
    minutes: int | None = 5  # nextUpdate after thisUpdate; None: none (answers are not cached)

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["openssl", "ocsp", "-index", str(self.ca.dir / "index.txt"), "-port", str(self.port),
             "-rsigner", str(self.ca.dir / "responder.pem"), "-rkey",
             str(self.ca.dir / "responder.key"), "-CA", str(self.ca.intermediate),
             *(["-nmin", str(self.minutes)] if self.minutes else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert re.search(rf":{self.port} ", self.process.stdout.readline())

    def restart(self) -> None:
        """Stop and start again: `openssl ocsp` reads its index once, at start."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None
