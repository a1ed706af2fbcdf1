"""What the attack tests share: forged certificates and tokens, and raw `Peer.Forward` calls made
the way a rogue or compromised gateway would make them. Everything goes through a real mTLS
channel to real gateways (`query_support.running_cluster`); see docs/threats.md.

The helpers are methods of `Kit` (the `kit` fixture): tests/ is on the path but this folder is
not a package, so a fixture is how its test modules share code."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from query_support import CALL_TIMEOUT, Cluster
from support import DEMO_SOURCE, Federation, credentials_as, region_root, sign_forward_message

from gateway.audit import AuditQuery
from gateway.tokens import audience_for, issuer_for
from registry import KeyState, KeyUsage
from signer import load_private_key
from tongban.v1 import common_pb2, exchange_pb2, exchange_pb2_grpc


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Kit:
    """Tools of an attacker who holds some key material of the federation, and of the test
    that watches what the gateways did about it."""

    @staticmethod
    def variant_source(folder: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
        """A copy of the demo registry source with each (old, new) replaced once per file."""
        shutil.copytree(DEMO_SOURCE, folder)
        for name, replacements in edits.items():
            text = (folder / name).read_text(encoding="utf-8")
            for old, new in replacements:
                assert old in text, old
                text = text.replace(old, new, 1)
            (folder / name).write_text(text, encoding="utf-8")
        return folder

    @staticmethod
    def certificate(fed: Federation, uri: str, *, issued_by: str | None) -> tuple[bytes, bytes]:
        """(chain PEM, key PEM) of a TLS client certificate whose SAN URI is `uri`, issued by
        region `issued_by`'s issuing CA (an attacker holding that CA's key, or a CA that
        mis-issues), or by a CA of the attacker's own making when `issued_by` is None."""
        now = datetime.now(UTC)
        if issued_by is None:
            issuer_key = ec.generate_private_key(ec.SECP256R1())
            issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue CA")])
            issuer_pem = b""
        else:
            ca = fed.pki / "regions" / issued_by / "ca"
            loaded = load_private_key(ca / "intermediate.key")
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            issuer_key = loaded
            issuer_pem = (ca / "intermediate.pem").read_bytes()
            issuer_name = x509.load_pem_x509_certificate(issuer_pem).subject
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
            .sign(issuer_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return leaf.public_bytes(serialization.Encoding.PEM) + issuer_pem, key_pem

    @staticmethod
    def credentials(
        fed: Federation, material: tuple[bytes, bytes], target_region: str
    ) -> grpc.ChannelCredentials:
        chain, key = material
        return grpc.ssl_channel_credentials(region_root(fed, target_region), key, chain)

    @staticmethod
    def forward_request(
        query: exchange_pb2.QueryRequest,
        *,
        agency: str,
        agency_region: str,
        requesting_region: str,
        fed: Federation | None = None,
        signer: str | None = None,
    ) -> exchange_pb2.ForwardRequest:
        """What a gateway sends a peer: the query and the identity it vouches for, signed by
        `signer`'s audit key (default: the requesting region's) when `fed` is given."""
        message = exchange_pb2.ForwardRequest(
            query=query,
            caller=common_pb2.CallerIdentity(
                agency_id=agency,
                region=agency_region,
                operator="冒名者",
                certificate_thumbprint=b64url(secrets.token_bytes(32)),
            ),
            requesting_region=requesting_region,
        )
        if fed is None:
            return message
        signed: exchange_pb2.ForwardRequest = sign_forward_message(fed, message, signer=signer)
        return signed

    @staticmethod
    async def forward(
        cluster: Cluster,
        provider: str,
        forward: exchange_pb2.ForwardRequest,
        *,
        as_owner: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> exchange_pb2.ForwardResponse:
        """`Peer.Forward` straight to `provider`'s gateway, over mTLS as `as_owner` (a region,
        i.e. that region's real gateway key, or an agency) or with `credentials`."""
        if credentials is None:
            assert as_owner is not None
            credentials = credentials_as(cluster.fed, as_owner, provider)
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports[provider]}", credentials
        ) as channel:
            response: exchange_pb2.ForwardResponse = await exchange_pb2_grpc.PeerStub(
                channel
            ).Forward(forward, timeout=CALL_TIMEOUT)
            return response

    @staticmethod
    def forged_token(
        fed: Federation,
        agency: str,
        region: str,
        *,
        header: dict[str, Any],
        sign: Any,
        thumbprint: str,
    ) -> str:
        """A token with the claims `issue_token` would write for `agency`, but this `header`
        and a signature made by `sign(signing_input) -> bytes`."""
        now = int(time.time())
        claims = {
            "iss": issuer_for(region),
            "sub": "冒名者",
            "agency": agency,
            "aud": audience_for(region),
            "iat": now,
            "exp": now + 120,
            "jti": secrets.token_urlsafe(16),
            "cnf": {"x5t#S256": thumbprint},
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        return f"{signing_input}.{b64url(sign(signing_input.encode()))}"

    @staticmethod
    def token_key(fed: Federation, region: str) -> tuple[str, Path]:
        """(kid, certificate path) of the region's active token key."""
        (record,) = fed.inventory().find(region, KeyUsage.TOKEN, KeyState.ACTIVE)
        return record.kid, fed.pki / record.certificate

    @staticmethod
    async def audited(cluster: Cluster, region: str) -> list[Any]:
        """Every audit record of `region`'s gateway, oldest first."""
        audit = cluster.gateways[region].audit
        assert audit is not None
        return [record for _, record in await audit.store.query(AuditQuery(limit=1000))]


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit()
