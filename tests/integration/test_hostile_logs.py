"""Issue 13's acceptance for logs: the whole demo at DEBUG, its stderr a file (JSON lines), hostile
inputs sent over real mutual TLS with the demo PKI's certificates — control characters in ids,
invalid UTF-8 in metadata and in the authorization header (raw HTTP/2, bytes grpc will not
send), oversize values, citizen ids in fields that are not the subject, bad, expired and garbage
tokens, a valid token with a byte appended — and then every log line is one JSON object with no
token, no ``Bearer``, no raw citizen id and no private key in it (threats T17, T18)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from leak_support import BEARER, demo_subjects, leaks, pki_secrets
from support import REPO

from gateway.demo.stories import SCENARIOS
from gateway.tokens import issue_agency_token
from registry import KeyState, KeyUsage
from registry._inventory import Inventory
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

DEMO_TIMEOUT = 120.0  # seconds
AGENCY = "sc.hrss"  # 四川人社, a client of the 510000 gateway
QUERY = "/tongban.v1.DataExchange/Query"
FORGED = "\r\n2026-12-06T21:00:00Z INFO tongban.access: allowed"


@dataclass
class Demo:
    folder: Path
    port: int  # the 510000 gateway
    sent_tokens: list[str] = field(default_factory=list)
    sent_subjects: list[str] = field(default_factory=list)

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    def tls(self, agency: str = AGENCY) -> tuple[Path, Path, Path]:
        (record,) = Inventory.load(self.pki).find(agency, KeyUsage.TLS, KeyState.ACTIVE)
        root = self.pki / "regions" / "510000" / "ca" / "root.pem"
        return self.pki / record.certificate, self.pki / record.private_key, root

    def token(self, *, agency: str = AGENCY, now: datetime | None = None) -> str:
        token = issue_agency_token(
            self.pki, agency, "张三", lifetime_seconds=300, now=now or datetime.now(UTC)
        )
        self.sent_tokens.append(token)
        return token


def _request(subject: str, **changes: object) -> exchange_pb2.QueryRequest:
    fields: dict[str, object] = {
        "provider_region": "500000",
        "dataset": "market.business_licence",  # the demo's client command: needs no case
        "purpose": "LICENCE-VERIFY",
        "subject_id": subject,
        "case_id": "CASE-HOSTILE-1",
        "request_id": secrets.token_hex(8),
    }
    fields.update(changes)
    return exchange_pb2.QueryRequest(**fields)  # type: ignore[arg-type]


async def _grpc_attacks(demo: Demo, subject: str, other: str) -> list[str]:
    """What grpc itself will send: hostile proto fields and well-formed but bad tokens."""
    cert, key, root = demo.tls()
    credentials = grpc.ssl_channel_credentials(
        root.read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    good = demo.token()
    expired = demo.token(now=datetime.now(UTC) - timedelta(hours=1))
    foreign = demo.token(agency="cq.hrss")  # bound to another agency's certificate
    garbage = ["garbage-" + secrets.token_urlsafe(12), "eyJ" + secrets.token_urlsafe(40)]
    demo.sent_tokens += garbage
    control = "".join(chr(c) for c in range(32)) + "\x7f\x85\u2028\u2029\u202e\x1b[2J"
    requests = [
        (good, _request(subject, dataset="si.participation" + FORGED)),
        (good, _request(subject, purpose="SI-TRANSFER" + FORGED, case_id=control)),
        (good, _request(subject, dataset=control, fields=["name" + FORGED, control])),
        (good, _request(subject, case_id=other, request_id=other)),  # a citizen id, not subject
        (good, _request(subject, dataset=other, purpose=other, fields=[other])),
        (good, _request(other + FORGED)),
        (good, _request(subject, dataset="d" * 70_000, case_id="c" * 200_000)),  # oversize
        (good, _request(subject, provider_region="500000" + FORGED)),
        (good, _request(subject)),  # an ordinary allowed query: the access log has something
        (expired, _request(subject)),
        (foreign, _request(subject)),
        *((bad, _request(subject)) for bad in garbage),
        (good + "." + good, _request(subject)),
    ]
    codes = []
    async with grpc.aio.secure_channel(f"localhost:{demo.port}", credentials) as channel:
        stub = exchange_pb2_grpc.DataExchangeStub(channel)
        for token, request in requests:
            try:
                await stub.Query(request, metadata=(("authorization", f"Bearer {token}"),))
                codes.append("OK")
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)
    return codes


def _frame(request: exchange_pb2.QueryRequest) -> bytes:
    body = request.SerializeToString()
    return struct.pack(">?I", False, len(body)) + body


def _h2_call(demo: Demo, headers: list[tuple[bytes, bytes]], body: bytes) -> str:
    """One raw HTTP/2 gRPC call over mutual TLS: the grpc-status, or how the call ended."""
    cert, key, root = demo.tls()
    context = ssl.create_default_context(cafile=str(root))
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2"])
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config=config)
    with (
        socket.create_connection(("127.0.0.1", demo.port), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":path", QUERY.encode()),
                (b":authority", b"localhost"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                *headers,
            ],
        )
        conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status = "no answer"
        while True:
            data = sock.recv(65536)
            if not data:
                return f"closed ({status})"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    found = dict(event.headers).get(b"grpc-status")
                    status = found.decode() if found is not None else status
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded):
                    return status
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    return f"reset ({status})"
            sock.sendall(conn.data_to_send())


def _h2_attacks(demo: Demo, subject: str, other: str) -> list[str]:
    """Bytes grpc will not send: invalid UTF-8 and control bytes in metadata values."""
    good = demo.token().encode()
    other_bytes = other.encode()
    cases: list[list[tuple[bytes, bytes]]] = [
        [(b"authorization", b"Bearer " + good + b"\xff")],  # a real token, one byte appended
        [(b"authorization", b"Bearer \xfe" + good)],
        [(b"authorization", good + b"\xc3\x28")],  # no scheme, invalid UTF-8
        [(b"authorization", b"Bearer " + good), (b"x-case", other_bytes + b"\xff\r\nINFO x")],
        [(b"authorization", b"Bearer " + good + b"\r\nx-forged: 1")],
        [(b"authorization", b"Bearer " + good), (b"x-subject", b"\x00\x1b[2J" + other_bytes)],
        [(b"authorization", b"Bearer " + good + b"\xff" * 3000)],  # oversize and undecodable
    ]
    return [_h2_call(demo, headers, _frame(_request(subject))) for headers in cases]


def _start(folder: Path, log_file: Path) -> tuple[subprocess.Popen[str], str]:
    stderr = log_file.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--log-level", "DEBUG", "demo", "--serve",
         "--dir", str(folder)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_TRACE": "http,hpack_parser"},
    )  # fmt: skip
    stderr.close()
    assert process.stdout is not None
    transcript: list[str] = []
    deadline = time.monotonic() + DEMO_TIMEOUT
    while not transcript or "Ctrl-C stops them." not in transcript[-1]:
        line = process.stdout.readline()
        assert line, "the demo ended early:\n" + "".join(transcript)
        transcript.append(line)
        assert time.monotonic() < deadline
    return process, "".join(transcript)


def test_hostile_inputs_leave_every_log_line_one_json_object_without_credentials(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "demo"
    log_file = tmp_path / "stderr.log"  # a file, not a tty: JSON lines
    process, transcript = _start(folder, log_file)
    try:
        assert f"{len(SCENARIOS)} of {len(SCENARIOS)} scenarios behaved as expected." in transcript
        port = re.search(r"510000 \S+\s+│\s+localhost:(\d+)", transcript)
        assert port is not None, transcript
        demo = Demo(folder, int(port.group(1)))
        subject, other = demo_citizens(transcript)
        demo.sent_subjects += [subject, other]
        grpc_codes = asyncio.run(_grpc_attacks(demo, subject, other))
        h2_outcomes = _h2_attacks(demo, subject, other)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
        assert process.stdout is not None
        process.stdout.close()
    assert code == 0
    assert "OK" in grpc_codes  # the ordinary query went through: the gateway was listening
    assert not {"UNKNOWN", "INTERNAL"} & set(grpc_codes), grpc_codes
    assert len(h2_outcomes) == 7, h2_outcomes
    assert h2_outcomes[:3] == ["16"] * 3, h2_outcomes  # UNAUTHENTICATED: a token spoilt by a byte
    assert not {"2", "13"} & set(h2_outcomes), h2_outcomes  # never UNKNOWN or INTERNAL

    text = log_file.read_text(encoding="utf-8")
    lines = text.splitlines()  # also at U+2028, U+0085...: a raw one would break a line here
    assert len(lines) > 50, "DEBUG logging produced almost nothing: nothing was scanned"
    assert lines == text.split("\n")[:-1]
    events = []
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line[:200]!r}")
        assert isinstance(event, dict), f"line {number}: {line[:200]!r}"
        assert {"ts", "level", "logger", "event"} <= set(event), f"line {number}: {line[:200]!r}"
        events.append(event)
    assert any(e["event"] == "access" for e in events), "no access event: the scan is hollow"
    # The undecodable authorization values reached gRPC, which logged them: by length and
    # digest only (gateway/server.py WithholdUndecodableMetadata; else by length, gateway/logs/).
    assert any(
        re.fullmatch(
            r"a metadata value is not UTF-8 \(read as Latin-1; value withheld: "
            r"sha256:[0-9a-f]{64};len=\d+\)|Invalid encoding on <\d+ bytes>",
            e["event"],
        )
        for e in events
    )
    assert any(e["logger"] == "tongban.logs" and "GRPC_TRACE" in e["event"] for e in events)
    assert not BEARER.search(text)
    assert not re.search(r"(?i)bearer\b", text)
    for token in demo.sent_tokens:
        for part in (token, *token.split(".")):
            assert part not in text, f"a token sent (or part of one) is in the log: {part[:12]}…"
    assert not [s for s in demo.sent_subjects if s in text]
    assert leaks("log", text, demo_subjects(), pki_secrets(folder)) == []


def demo_citizens(transcript: str) -> tuple[str, str]:
    """The subject of the client command the demo prints (a business's USCC), and a valid
    citizen id."""
    found = re.search(r"--subject ([0-9A-Z]{18})\b", transcript)
    assert found is not None, transcript
    others = [s for s in sorted(demo_subjects()) if s[:2] == "51" and s != found.group(1)]
    return found.group(1), others[0]
