"""Who is calling: the party a verified client certificate names, checked against the registry.

TLS has already proved that the client holds a key whose certificate chains to one of the
registry's region CAs. Here each call additionally checks, against the *current* registry, that
the certificate names a party the registry knows (a region gateway, `urn:tongban:gateway:<code>`,
or an agency, `urn:tongban:agency:<id>`) and chains to the CA of *that party's* region, so a
certificate from one region cannot speak for another and a connection opened before a registry
change cannot outlive the trust it was opened with. Results are cached per certificate and
registry version.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, TypeAlias, cast

import grpc
from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from google.protobuf.message import DecodeError

from gateway.errors import CallerRejected, abort
from registry import KeyState, Registry, RegistryError, RegistryStore, certificate_thumbprint

__all__ = [
    "MALFORMED_REASON",
    "Caller",
    "CallerInterceptor",
    "CallerKind",
    "CallerResolver",
    "MalformedRequestHook",
    "current_caller",
    "rpc_name",
]

GATEWAY_URI_PREFIX = "urn:tongban:gateway:"
AGENCY_URI_PREFIX = "urn:tongban:agency:"
MAX_CACHED_CALLERS = 4096  # certificates remembered per registry version
# The ErrorInfo reason of a request that does not parse.
MALFORMED_REASON: Final = "INVALID_ARGUMENT_FORMAT"


class CallerKind(StrEnum):
    GATEWAY = "gateway"
    AGENCY = "agency"


@dataclass(frozen=True, slots=True)
class Caller:
    kind: CallerKind
    region: str
    agency_id: str  # empty for a region gateway
    thumbprint: str  # x5t#S256 of the client certificate (RFC 8705 binding)
    subject: str  # RFC 4514 subject, for logs and audit

    @property
    def name(self) -> str:
        return self.agency_id or f"gateway:{self.region}"


current_caller: ContextVar[Caller | None] = ContextVar("tongban_caller", default=None)


def _chain_policy() -> ExtensionPolicy:
    # TLS client certificates of the federation carry clientAuth and a SAN URI; we check the
    # identity ourselves, so the end-entity policy only insists on what a TLS client needs.
    return ExtensionPolicy.permit_all().require_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
    )


class CallerResolver:
    """Maps a client certificate to a `Caller`, or raises `CallerRejected`."""

    def __init__(
        self, store: RegistryStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache: dict[bytes, Caller] = {}
        self._cache_version = -1

    def resolve(self, pem: bytes) -> Caller:
        try:
            registry = self._store.current()
        except RegistryError as exc:
            raise CallerRejected("REGISTRY_STALE", f"no usable registry: {exc}") from exc
        if registry.version != self._cache_version:
            self._cache = {}
            self._cache_version = registry.version
        key = hashlib.sha256(pem).digest()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        caller = self._resolve(pem, registry)
        if len(self._cache) >= MAX_CACHED_CALLERS:
            self._cache.clear()
        self._cache[key] = caller
        return caller

    def _resolve(self, pem: bytes, registry: Registry) -> Caller:
        try:
            certificate = x509.load_pem_x509_certificate(pem)
            uris = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise CallerRejected(
                "CERTIFICATE_NOT_TRUSTED", "client certificate names no Tongban party (no SAN URI)"
            ) from exc
        caller: Caller | None = None
        thumbprint = certificate_thumbprint(certificate.public_bytes(_DER))
        subject = certificate.subject.rfc4514_string()
        for uri in uris:
            if uri.startswith(GATEWAY_URI_PREFIX):
                code = uri.removeprefix(GATEWAY_URI_PREFIX)
                if registry.region(code) is None:
                    raise CallerRejected(
                        "UNKNOWN_REGION",
                        f"client certificate names region {code!r}, unknown to the registry",
                    )
                caller = Caller(CallerKind.GATEWAY, code, "", thumbprint, subject)
                break
            if uri.startswith(AGENCY_URI_PREFIX):
                agency_id = uri.removeprefix(AGENCY_URI_PREFIX)
                agency = registry.agency(agency_id)
                if agency is None:
                    raise CallerRejected(
                        "CERTIFICATE_NOT_TRUSTED",
                        f"client certificate names agency {agency_id!r}, unknown to the registry",
                    )
                caller = Caller(CallerKind.AGENCY, agency.region, agency.id, thumbprint, subject)
                break
        if caller is None:
            raise CallerRejected(
                "CERTIFICATE_NOT_TRUSTED", "client certificate names no Tongban party"
            )
        region = registry.region(caller.region)
        if region is None or not region.ca_certificates:
            raise CallerRejected(
                "UNKNOWN_REGION",
                f"region {caller.region} has no certificate authority in the registry",
            )
        anchors = [x509.load_der_x509_certificate(region.ca_certificates[0])]
        intermediates = [x509.load_der_x509_certificate(der) for der in region.ca_certificates[1:]]
        verifier = (
            PolicyBuilder()
            .store(Store(anchors))
            .time(self._clock())
            .max_chain_depth(4)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_chain_policy()
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(certificate, intermediates)
        except VerificationError as exc:
            raise CallerRejected(
                "CERTIFICATE_NOT_TRUSTED",
                f"client certificate of {caller.name} does not chain to its region's CA",
            ) from exc
        self._check_not_revoked(certificate, thumbprint, caller, registry)
        return caller

    def _check_not_revoked(
        self, certificate: x509.Certificate, thumbprint: str, caller: Caller, registry: Registry
    ) -> None:
        """A TLS key the registry lists as revoked (from its `revoked_at`), or a certificate on
        its region CA's revocation list, authenticates no one: its holder may be anybody."""
        entry = registry.key(thumbprint)
        if entry is not None and entry.state is KeyState.REVOKED:
            now = self._clock()
            if entry.revoked_at is None or now >= entry.revoked_at:
                raise CallerRejected(
                    "CERTIFICATE_NOT_TRUSTED",
                    f"client certificate of {caller.name} is revoked "
                    f"({entry.revocation_reason or 'no reason given'})",
                )
        region = registry.region(caller.region)
        for der in region.crls if region is not None else ():
            try:
                crl = x509.load_der_x509_crl(der)
            except ValueError:
                continue  # the registry's publisher checked it; a bad one revokes nothing
            if crl.issuer != certificate.issuer:
                continue
            revoked = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if revoked is not None and revoked.revocation_date_utc <= self._clock():
                raise CallerRejected(
                    "CERTIFICATE_NOT_TRUSTED",
                    f"client certificate of {caller.name} is on region {caller.region}'s "
                    "revocation list",
                )


from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

_DER = Encoding.DER

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]  # generic in the stubs only


class _Malformed:
    """Stands in for a request whose bytes are not the RPC's message (corrupt wire format, a
    string field that is not UTF-8, nesting past the parser's limit): gRPC would otherwise end
    the call as UNKNOWN with the parser's exception in the status message."""

    __slots__ = ()


_MALFORMED: Final = _Malformed()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning `_MALFORMED` instead of raising on bytes that do not parse."""
    if deserializer is None:
        return None
    parse = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RecursionError):
            return _MALFORMED

    return deserialize


# Called with the method ("/tongban.v1.DataExchange/Query") and the authenticated caller of a
# request that does not parse, before it is refused: the gateway audits it (caller known, values
# unknown). It must not raise for an audit store that is down: a refusal releases nothing.
MalformedRequestHook: TypeAlias = Callable[[str, Caller], Awaitable[None]]


def rpc_name(method: str) -> str:
    """ "Service.Method" of a gRPC method path ("/tongban.v1.DataExchange/Query")."""
    service, _, name = method.strip("/").partition("/")
    return f"{service.rpartition('.')[2]}.{name}"


async def _refuse_malformed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if request is _MALFORMED:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            MALFORMED_REASON,
            "the request is not a well-formed message of this RPC (corrupt protobuf, or a "
            "string field that is not UTF-8)",
        )


def _parse_safely(handler: Handler) -> Handler:
    """An open service's unary-request handler with a malformed request refused as
    INVALID_ARGUMENT instead of UNKNOWN; no caller check (streaming requests pass unchanged)."""
    if handler.unary_unary is not None:
        inner_uu = cast(Callable[[Any, Any], Awaitable[Any]], handler.unary_unary)

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await _refuse_malformed(request, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
        )
    if handler.unary_stream is not None and inspect.iscoroutinefunction(handler.unary_stream):
        # A streaming handler that sends with context.write (as gRPC's health Watch does).
        inner_writer = cast(Callable[[Any, Any], Awaitable[None]], handler.unary_stream)

        async def unary_stream_writer(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> None:
            await _refuse_malformed(request, context)
            await inner_writer(request, context)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream_writer,
            _tolerant(handler.request_deserializer),
            handler.response_serializer,
        )
    if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        inner_us = cast(Callable[[Any, Any], AsyncIterator[Any]], handler.unary_stream)

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await _refuse_malformed(request, context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, _tolerant(handler.request_deserializer), handler.response_serializer
        )
    return handler


class CallerInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call (except the open services) and sets `current_caller`."""

    def __init__(
        self,
        resolver: CallerResolver,
        open_services: frozenset[str],
        on_malformed: MalformedRequestHook | None = None,
    ) -> None:
        self._resolver = resolver
        self._open = tuple(f"/{name}/" for name in open_services)
        self._on_malformed = on_malformed
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}  # method -> (handler, wrapped)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]  # wrapped once per method: the per-call state is in the closures' calls
        wrapped = (
            _parse_safely(handler) if method.startswith(self._open) else self._wrap(handler, method)
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        certificates = list(context.auth_context().get("x509_pem_cert") or [])
        if not certificates:
            await abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "CERTIFICATE_NOT_TRUSTED",
                "a client certificate is required",
            )
        try:
            return self._resolver.resolve(certificates[0])
        except CallerRejected as exc:
            code = (
                grpc.StatusCode.UNAVAILABLE
                if exc.reason == "REGISTRY_STALE"
                else grpc.StatusCode.UNAUTHENTICATED
            )
            await abort(context, code, exc.reason, str(exc))

    def _wrap(self, handler: Handler, method: str) -> Handler:
        authenticate = self._authenticate
        hook = self._on_malformed

        if handler.unary_unary is not None:
            inner_uu = cast(Callable[[Any, Any], Awaitable[Any]], handler.unary_unary)

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                caller = await authenticate(context)
                token = current_caller.set(caller)
                try:
                    if request is _MALFORMED and hook is not None:
                        await hook(method, caller)  # audited before it is refused
                    await _refuse_malformed(request, context)
                    return await inner_uu(request, context)
                finally:
                    current_caller.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = cast(Callable[[Any, Any], AsyncIterator[Any]], handler.unary_stream)

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                # No reset token here: a stream the client cancels is closed by the event
                # loop's async-generator finaliser, in another Context, where `reset(token)`
                # raises. grpc.aio runs each call in a task of its own, whose Context copy
                # (and the caller set in it) ends with the call.
                caller = await authenticate(context)
                current_caller.set(caller)
                if request is _MALFORMED and hook is not None:
                    await hook(method, caller)  # audited before it is refused
                await _refuse_malformed(request, context)
                async for item in inner_us(request, context):
                    # A long-lived stream must not outlive the trust it was opened with:
                    # the caller is checked again (a cache hit) before every message.
                    await authenticate(context)
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        # Tongban has no client-streaming RPCs; refuse rather than pass one through unchecked.
        raise CallerRejected(
            "INVALID_ARGUMENT_FORMAT", f"streaming requests are not supported: {handler}"
        )
