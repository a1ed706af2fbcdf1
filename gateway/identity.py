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

import asyncio
import contextlib
import hashlib
import inspect
import logging
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

from gateway.admission import CallAdmission, Pool
from gateway.errors import PLAIN_MESSAGES, CallerRejected, Refusal, refuse
from gateway.revocation import CallerRevocation, registry_revocation
from registry import Registry, RegistryError, RegistryStore
from signer import x5t_s256_of_der

__all__ = [
    "MALFORMED_REASON",
    "REQUEST_RECEIVE_SECONDS",
    "Caller",
    "CallerInterceptor",
    "CallerKind",
    "CallerResolver",
    "MalformedRequestHook",
    "current_caller",
]

GATEWAY_URI_PREFIX = "urn:tongban:gateway:"
AGENCY_URI_PREFIX = "urn:tongban:agency:"
MAX_CACHED_CALLERS = 4096  # certificates remembered per registry version
# The ErrorInfo reason of a request that does not parse.
MALFORMED_REASON: Final = "INVALID_ARGUMENT_FORMAT"
# From a call's HEADERS to the last byte of its (unary) request message: a client that promises a
# message and does not send it is refused after this long (docs/threats.md T15).
REQUEST_RECEIVE_SECONDS = 5.0


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
        self,
        store: RegistryStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        revocation: CallerRevocation | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._revocation = revocation  # online: the certificates' own OCSP responders and CRLs
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
        thumbprint = x5t_s256_of_der(certificate.public_bytes(_DER))
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
            chain = verifier.verify(certificate, intermediates)
        except VerificationError as exc:
            raise CallerRejected(
                "CERTIFICATE_NOT_TRUSTED",
                f"client certificate of {caller.name} does not chain to its region's CA",
            ) from exc
        self._check_not_revoked(certificate, caller, registry)
        if self._revocation is not None:  # `region` is not None: checked above
            self._revocation.remember(hashlib.sha256(pem).digest(), list(chain.chain), region.crls)
        return caller

    async def check_online(self, pem: bytes, caller: Caller) -> None:
        """Every call: the certificate's own OCSP responders and CRLs (`gateway.revocation`),
        answered from their cache until nextUpdate; raises `CallerRejected`."""
        if self._revocation is not None:
            await self._revocation.check(hashlib.sha256(pem).digest(), caller.name)

    def _check_not_revoked(
        self, certificate: x509.Certificate, caller: Caller, registry: Registry
    ) -> None:
        """A TLS key the registry lists as revoked (from its `revoked_at`), or a certificate on
        its region CA's revocation list, authenticates no one: its holder may be anybody."""
        why = registry_revocation(certificate, registry, caller.region, self._clock())
        if why is not None:
            raise CallerRejected(
                "CERTIFICATE_NOT_TRUSTED", f"client certificate of {caller.name} {why}"
            )


from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

_DER = Encoding.DER

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]  # generic in the stubs only
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


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


async def _refuse_malformed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if request is _MALFORMED:
        await refuse(
            context,
            Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "the request is not a well-formed message of this RPC (corrupt protobuf, or a "
                "string field that is not UTF-8)",
            ),
        )


_NO_MESSAGE: Final = object()


async def _receive_one(requests: AsyncIterator[Any], context: Context) -> Any:
    """The one request message of a unary-request RPC, within REQUEST_RECEIVE_SECONDS of its
    HEADERS: a client that promises a message and never sends it all holds its slot no longer."""
    try:
        async with asyncio.timeout(REQUEST_RECEIVE_SECONDS):
            request = await anext(requests, _NO_MESSAGE)
    except TimeoutError:
        await refuse(
            context,
            Refusal(
                "REQUEST_INCOMPLETE",
                f"the request message did not arrive in full within {REQUEST_RECEIVE_SECONDS:g} s",
            ),
        )
    if request is _NO_MESSAGE:
        await refuse(
            context,
            Refusal("INVALID_ARGUMENT_FORMAT", "the call ended without its request message"),
        )
    return request


# Called with the method ("/tongban.v1.DataExchange/Query") and the authenticated caller of a
# request that does not parse, before it is refused: the gateway audits it (caller known, values
# unknown). It must not raise for an audit store that is down: a refusal releases nothing.
MalformedRequestHook: TypeAlias = Callable[[str, Caller], Awaitable[None]]


_POOLS: Final = {CallerKind.GATEWAY: Pool.PEERS, CallerKind.AGENCY: Pool.AGENCIES}


_unexpected_log = logging.getLogger("tongban.errors")


@contextlib.asynccontextmanager
async def _errors_as_status(context: Context, method: str) -> AsyncIterator[None]:
    """The service edge: a `Refusal` a handler raises ends the call with its status
    (`gateway.errors.refuse`: the code from the reason table). What escapes a handler unmapped
    (a bug, a driver's exception no code wrapped) ends it as INTERNAL / INTERNAL_ERROR with its
    fixed sentence, the traceback in this log: never gRPC's own UNKNOWN "Unexpected <class>:
    <text>", which sends the exception's text (a host, a port, a path) to the caller."""
    try:
        yield
    except grpc.aio.AbortError:
        raise  # a status already chosen
    except Refusal as refusal:
        await refuse(context, refusal)
    except Exception:
        _unexpected_log.exception("a call failed unexpectedly: %s", method)
        await refuse(context, Refusal("INTERNAL_ERROR", PLAIN_MESSAGES["INTERNAL_ERROR"]))


class CallerInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call (except the open services'), admits it against its caller's
    budget of calls in flight, bounds the time to receive its request, and sets `current_caller`.

    gRPC counts a call against the server's concurrency cap from its HEADERS, but would run a
    unary-request handler only once the whole request message is in, and wait for it for ever.
    So every unary-request method is served here through a stream-request handler (the wire
    format is the same): it runs right after the HEADERS, knows the caller from the TLS
    certificate, takes a slot in `CallAdmission` or refuses at once (RESOURCE_EXHAUSTED,
    TOO_MANY_CALLS), reads the one message within REQUEST_RECEIVE_SECONDS (DEADLINE_EXCEEDED,
    REQUEST_INCOMPLETE), then calls the method's own behaviour. Open services (health,
    reflection) need no identity, but their calls are admitted too: by the party the certificate
    names when the registry knows it, else in the `OTHERS` pool."""

    def __init__(
        self,
        resolver: CallerResolver,
        open_services: frozenset[str],
        admission: CallAdmission | None = None,
        on_malformed: MalformedRequestHook | None = None,
    ) -> None:
        self._resolver = resolver
        self._open = tuple(f"/{name}/" for name in open_services)
        self.admission = admission or CallAdmission()
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
        wrapped = self._wrap(handler, method, open_service=method.startswith(self._open))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def _authenticate(self, context: Context) -> Caller:
        certificates = list(context.auth_context().get("x509_pem_cert") or [])
        if not certificates:
            await refuse(
                context, Refusal("CERTIFICATE_NOT_TRUSTED", "a client certificate is required")
            )
        try:
            caller = self._resolver.resolve(certificates[0])
            await self._resolver.check_online(certificates[0], caller)
        except CallerRejected as exc:
            await refuse(context, exc)
        return caller

    async def _admit(self, context: Context, open_service: bool) -> tuple[Caller | None, Pool, str]:
        """(the caller, None for an open service; the pool and certificate its slot is held
        under) once a slot is taken; refuses the call when its budget is full."""
        pool, certificate = Pool.OTHERS, ""
        caller: Caller | None = None
        if open_service:
            pems = list(context.auth_context().get("x509_pem_cert") or [])
            if pems:
                certificate = hashlib.sha256(pems[0]).hexdigest()
                try:
                    named = self._resolver.resolve(pems[0])
                except CallerRejected:
                    pass  # no party the registry knows: an open service answers it all the same
                else:
                    pool, certificate = _POOLS[named.kind], named.thumbprint
        else:
            caller = await self._authenticate(context)
            pool, certificate = _POOLS[caller.kind], caller.thumbprint
        refusal = self.admission.admit(pool, certificate)
        if refusal is not None:
            await refuse(context, Refusal("TOO_MANY_CALLS", refusal.explain()))
        return caller, pool, certificate

    async def _receive(
        self, requests: AsyncIterator[Any], context: Context, method: str, caller: Caller | None
    ) -> Any:
        """The call's one request message; one that does not parse is audited (when the caller
        is known and a hook is set) and then refused."""
        request = await _receive_one(requests, context)
        if request is _MALFORMED and caller is not None and self._on_malformed is not None:
            await self._on_malformed(method, caller)  # audited before it is refused
        await _refuse_malformed(request, context)
        return request

    def _wrap(self, handler: Handler, method: str, *, open_service: bool) -> Handler:
        admit = self._admit
        release = self.admission.release
        receive = self._receive
        # Streamed responses of an identified caller: the caller is checked again (a cache
        # hit) before every message, so a long-lived stream cannot outlive the trust it was
        # opened with. Open services have no caller to check.
        recheck = None if open_service else self._authenticate
        deserialize = _tolerant(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            inner_uu = cast(Callable[[Any, Any], Awaitable[Any]], handler.unary_unary)

            async def unary_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                caller, pool, certificate = await admit(context, open_service)
                try:
                    request = await receive(requests, context, method, caller)
                    token = current_caller.set(caller)
                    try:
                        async with _errors_as_status(context, method):
                            return await inner_uu(request, context)
                    finally:
                        current_caller.reset(token)
                finally:
                    release(pool, certificate)

            return grpc.stream_unary_rpc_method_handler(unary_unary, deserialize, serialize)
        if handler.unary_stream is not None and inspect.iscoroutinefunction(handler.unary_stream):
            # A streaming handler that sends with context.write (as gRPC's health Watch does).
            inner_writer = cast(Callable[[Any, Any], Awaitable[None]], handler.unary_stream)

            async def unary_stream_writer(requests: AsyncIterator[Any], context: Context) -> None:
                caller, pool, certificate = await admit(context, open_service)
                try:
                    request = await receive(requests, context, method, caller)
                    token = current_caller.set(caller)
                    try:
                        async with _errors_as_status(context, method):
                            await inner_writer(request, context)
                    finally:
                        current_caller.reset(token)
                finally:
                    release(pool, certificate)

            return grpc.stream_stream_rpc_method_handler(
                unary_stream_writer, deserialize, serialize
            )
        if handler.unary_stream is not None:
            inner_us = cast(Callable[[Any, Any], AsyncIterator[Any]], handler.unary_stream)

            async def unary_stream(
                requests: AsyncIterator[Any], context: Context
            ) -> AsyncIterator[Any]:
                caller, pool, certificate = await admit(context, open_service)
                try:
                    request = await receive(requests, context, method, caller)
                    # No reset token here: a stream the client cancels is closed by the event
                    # loop's async-generator finaliser, in another Context, where
                    # `reset(token)` raises. grpc.aio runs each call in a task of its own, whose
                    # Context copy (and the caller set in it) ends with the call.
                    current_caller.set(caller)
                    async with _errors_as_status(context, method):
                        async for item in inner_us(request, context):
                            if recheck is not None:
                                await recheck(context)
                            yield item
                finally:
                    release(pool, certificate)

            return grpc.stream_stream_rpc_method_handler(unary_stream, deserialize, serialize)
        if not open_service:
            # Tongban has no client-streaming RPCs; refuse rather than pass one through unchecked.
            raise CallerRejected(
                "INVALID_ARGUMENT_FORMAT", f"streaming requests are not supported: {handler}"
            )
        return self._admitted_stream(handler)

    def _admitted_stream(self, handler: Handler) -> Handler:
        """An open service's stream-request handler (reflection's), holding a slot while open."""
        admit = self._admit
        release = self.admission.release
        if handler.stream_unary is not None:
            inner_su = cast(Callable[[Any, Any], Awaitable[Any]], handler.stream_unary)

            async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                _, pool, certificate = await admit(context, True)
                try:
                    return await inner_su(requests, context)
                finally:
                    release(pool, certificate)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        inner_ss = cast(Callable[[Any, Any], Any], handler.stream_stream)
        if inspect.iscoroutinefunction(inner_ss):

            async def stream_writer(requests: AsyncIterator[Any], context: Context) -> None:
                _, pool, certificate = await admit(context, True)
                try:
                    await inner_ss(requests, context)
                finally:
                    release(pool, certificate)

            return grpc.stream_stream_rpc_method_handler(
                stream_writer, handler.request_deserializer, handler.response_serializer
            )

        async def stream_stream(
            requests: AsyncIterator[Any], context: Context
        ) -> AsyncIterator[Any]:
            _, pool, certificate = await admit(context, True)
            try:
                async for item in inner_ss(requests, context):
                    yield item
            finally:
                release(pool, certificate)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
