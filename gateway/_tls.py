"""The gateway's TLS material and the trust it starts from, before and after a registry is held."""

from __future__ import annotations

import secrets
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from registry import Registry, RegistryStore
from signer import SignerError, TrustedKey, load_private_key, x5t_s256_of_certificate

__all__ = ["GatewayTls", "NoTrust", "TlsMaterial", "trust_bundle"]


class TlsMaterial:
    """The gateway's own certificate chain and key, held unencrypted in memory only."""

    def __init__(self, config: GatewayConfig) -> None:
        try:
            self.chain_pem = config.tls_certificate.read_bytes()
            chain = x509.load_pem_x509_certificates(self.chain_pem)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{config.tls_certificate}: not a readable PEM certificate chain"
            ) from exc
        try:
            key = load_private_key(config.tls_private_key, config.tls_passphrase)
        except SignerError as exc:
            raise ConfigError(str(exc)) from exc
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Trusted before any registry is held: a bootstrap bundle, or our own chain's issuer.
        if config.bootstrap_ca_file is not None:
            try:
                self.bootstrap_pem = config.bootstrap_ca_file.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"{config.bootstrap_ca_file}: cannot be read ({exc.strerror})"
                ) from exc
        else:
            self.bootstrap_pem = (
                b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:])
                or self.chain_pem
            )


class NoTrust:
    """The verifier's trust source until a registry is held: it trusts nothing."""

    version = -1

    def key(self, kid: str) -> TrustedKey | None:
        return None

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return (), ()

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return ()

    def regions(self) -> tuple[str, ...]:
        return ()


def trust_bundle(registry: Registry, region_code: str | None = None) -> bytes:
    """PEM of every region's root CA: who may complete a TLS handshake with this gateway; with
    `region_code`, that region's root only: who may answer as that region's gateway."""
    out = []
    for region in registry.regions:
        if region_code is not None and region.code != region_code:
            continue
        if region.ca_certificates:
            out.append(
                x509.load_der_x509_certificate(region.ca_certificates[0]).public_bytes(
                    serialization.Encoding.PEM
                )
            )
    return b"".join(out)


class GatewayTls:
    """The gateway's certificate and key, and the roots it trusts for mutual TLS: every
    region's root CA in the registry held, or the bootstrap bundle before one is held."""

    def __init__(self, config: GatewayConfig, store: RegistryStore) -> None:
        self._material = TlsMaterial(config)
        self._store = store
        self._served_version = -1

    def reload(self, config: GatewayConfig) -> str:
        """Use the certificate and key `config` names for new handshakes, once both are read
        and the key is the certificate's (else a ConfigError, and the old pair stays). Returns
        the kid (x5t#S256) of the certificate now used."""
        material = TlsMaterial(config)
        leaf = x509.load_pem_x509_certificates(material.chain_pem)[0]
        key = serialization.load_pem_private_key(material.key_pem, None)
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ConfigError(f"{config.tls_private_key}: not the key of {config.tls_certificate}")
        self._material = material
        self._served_version = -2  # the next handshake fetches a new server configuration
        return x5t_s256_of_certificate(leaf)

    def _certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        snapshot = self._store.snapshot
        roots = trust_bundle(snapshot.registry) if snapshot else self._material.bootstrap_pem
        self._served_version = snapshot.registry.version if snapshot else -1
        return grpc.ssl_server_certificate_configuration(
            [(self._material.key_pem, self._material.chain_pem)], root_certificates=roots
        )

    def _fetch_certificate_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before each new handshake: rebuild only when the registry changed.
        snapshot = self._store.snapshot
        version = snapshot.registry.version if snapshot else -1
        if version == self._served_version:
            return None
        return self._certificate_configuration()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Mutual TLS, with the roots of the registry held at each new handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self._certificate_configuration(),
            # The stubs say the fetcher never returns None; gRPC documents None as "no change".
            cast(
                Callable[[], grpc.ServerCertificateConfiguration],
                self._fetch_certificate_configuration,
            ),
            require_client_authentication=True,
        )

    def client_credentials(self, region: str | None = None) -> grpc.ChannelCredentials:
        """Credentials for calling peers: our own certificate; as roots, the root CA of the
        `region` called (a server certificate from any other region's CA fails the handshake,
        before the query is sent), or every region's when the peer's region is not known."""
        snapshot = self._store.snapshot
        roots = (
            trust_bundle(snapshot.registry, region) if snapshot else self._material.bootstrap_pem
        )
        return grpc.ssl_channel_credentials(roots, self._material.key_pem, self._material.chain_pem)

    def probe_context(self, region: str) -> ssl.SSLContext:
        """An `ssl` client context like `client_credentials(region)`'s: the called region's
        root CA, the host name checked, our own certificate and key (the key passes through a
        temporary file encrypted under a random one-time password: never unencrypted on disk),
        for the probe handshake of gateway.peer_certificates."""
        snapshot = self._store.snapshot
        roots = (
            trust_bundle(snapshot.registry, region) if snapshot else self._material.bootstrap_pem
        )
        if not roots:  # (an empty cadata would make `ssl` trust the system's roots)
            raise ValueError(f"no root CA of region {region} is held")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the certificate and name checked
        context.load_verify_locations(cadata=roots.decode("ascii"))
        password = secrets.token_urlsafe(32).encode()
        key = serialization.load_pem_private_key(self._material.key_pem, None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        with tempfile.TemporaryDirectory(prefix="tongban-probe-") as folder:
            chain, key_file = Path(folder) / "chain.pem", Path(folder) / "key.pem"
            chain.write_bytes(self._material.chain_pem)
            key_file.write_bytes(encrypted)  # the folder is the user's own (mode 0700)
            context.load_cert_chain(chain, key_file, password=password)
        return context
