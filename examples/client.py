"""An agency's client of Tongban: one DataExchange.Query, the way an agency system makes it.

An agency system talks only to its own region's gateway. It proves who it is twice:

* mutual TLS with the agency's certificate (issued by its region's CA; the gateway reads the
  agency id from the certificate's URI SAN `urn:tongban:agency:<id>`), and
* a request token (a short-lived JWT from its region's identity service, naming the operator
  and bound to that same certificate by its `cnf.x5t#S256` thumbprint).

The answer is the provider region's record with the provider's e-seal over its exact bytes, and
the id of the audit record the gateway wrote before it released the answer.

Against `tongban demo --serve`, which prints this command with the paths filled in:

    python examples/client.py --gateway localhost:PORT \\
        --cert PKI/agencies/sc.hrss/keys/tls-….pem --key PKI/agencies/sc.hrss/keys/tls-….key \\
        --ca PKI/regions/510000/ca/root.pem \\
        --token "$(tongban token issue --pki PKI --agency sc.hrss --operator 张三)" \\
        --provider-region 500000 --dataset market.business_licence --purpose LICENCE-VERIFY \\
        --subject USCC --case-id CASE-2026-0001

A conditional (有条件共享) dataset, such as a citizen's si.participation, is answered only for an
open case the agency handles for that citizen (docs/cases.md#cases-bind-queries): name it in
--case-id. A dataset marked `requires_consent`, such as 四川's medical.insurance, is answered only
under a consent artefact of the citizen issued by their home region (docs/integrating.md#consent):
give its file in --consent; `tongban demo --serve` writes one for its citizen and prints a call
with it.

Exit codes: 0 answered, 1 the gateway refused or failed (its reason is printed), 2 bad usage.
Only grpcio, grpcio-status and the generated `tongban.v1` modules are needed.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tongban.v1 import credentials_pb2, credentials_pb2_grpc, exchange_pb2, exchange_pb2_grpc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Query another region's data through Tongban.")
    parser.add_argument("--gateway", required=True, help="HOST:PORT of your region's gateway")
    parser.add_argument("--cert", required=True, type=Path, help="agency TLS certificate chain")
    parser.add_argument("--key", required=True, type=Path, help="agency TLS private key")
    parser.add_argument("--ca", required=True, type=Path, help="your region's root CA (PEM)")
    parser.add_argument("--token", required=True, help="request token (JWT) for the operator")
    parser.add_argument("--provider-region", required=True, help="GB/T 2260 code, e.g. 500000")
    parser.add_argument("--dataset", required=True, help="registry id, e.g. si.participation")
    parser.add_argument("--purpose", required=True, help="registry id, e.g. SI-TRANSFER")
    parser.add_argument("--subject", required=True, help="the citizen id (or USCC) asked about")
    parser.add_argument("--case-id", required=True, help="the case being handled (办件编号)")
    parser.add_argument(
        "--field",
        action="append",
        default=[],
        help="a field wanted (repeatable; default: every field the purpose allows)",
    )
    parser.add_argument(
        "--consent",
        type=Path,
        metavar="FILE",
        help="file holding the citizen's consent artefact (a compact JWS from their home "
        "region's identity service), sent in QueryRequest.consent; needed for a dataset "
        "marked requires_consent",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    return parser.parse_args(argv)


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials:
    """Mutual TLS: trust only our region's root CA; present the agency's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=args.ca.read_bytes(),
        private_key=args.key.read_bytes(),
        certificate_chain=args.cert.read_bytes(),
    )


def reason_of(error: grpc.RpcError) -> str:
    """Every Tongban error carries a google.rpc.ErrorInfo whose `reason` is part of the contract
    (e.g. FIELD_NOT_ALLOWED, NO_AGREEMENT, TOKEN_EXPIRED): branch on it, not on the message."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def jws_header(jws: str) -> dict[str, object]:
    """The protected header of the seal (a JAdES compact JWS): algorithm, signer, signing time."""
    encoded = jws.split(".", 1)[0]
    decoded: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    )
    return decoded


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        credentials = channel_credentials(args)
        consent = args.consent.read_text(encoding="utf-8").strip() if args.consent else ""
    except OSError as exc:
        print(f"client: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"client: {args.consent}: not a consent artefact (not UTF-8 text)", file=sys.stderr)
        return 2
    request = exchange_pb2.QueryRequest(
        provider_region=args.provider_region,
        dataset=args.dataset,
        purpose=args.purpose,
        subject_id=args.subject,
        fields=args.field,
        case_id=args.case_id,
        consent=consent,
        # Unique per agency within the gateway's replay window: a retry of the *same* request
        # reuses it; a new question gets a new one.
        request_id=f"client-{secrets.token_hex(8)}",
    )
    metadata = (("authorization", f"Bearer {args.token}"),)
    with grpc.secure_channel(args.gateway, credentials) as channel:
        exchange = exchange_pb2_grpc.DataExchangeStub(channel)
        try:
            answer = exchange.Query(request, metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as error:
            code = error.code().name  # type: ignore[attr-defined]
            print(f"refused: {code} {reason_of(error)}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
        # The gateway has already verified the seal; anyone can ask again (Credentials.Verify
        # is open to every caller) or check it offline with `tongban verify`.
        report = credentials_pb2_grpc.CredentialsStub(channel).Verify(
            credentials_pb2.VerifyRequest(jws=answer.record.jws), timeout=args.timeout
        )
    record = json.loads(answer.record.payload)  # canonical JSON, exactly the sealed bytes
    header = jws_header(answer.record.jws)
    print(f"answer from {answer.record.sealer_region} ({'cache' if answer.cache_hit else 'fresh'})")
    for name, value in record.items():
        print(f"  {name}: {json.dumps(value, ensure_ascii=False)}")
    print(
        f"seal: {header.get('alg')} by key {answer.record.sealer_kid} of {answer.record.sealer_region}"
    )
    print(f"seal verification: {credentials_pb2.Indication.Name(report.indication)}")
    print(f"agreement: {answer.agreement_id}, registry version {answer.registry_version}")
    print(f"audit id: {answer.audit_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
