"""gRPC interceptors that record the grpc-ecosystem server and client metrics.

The server interceptor goes first in the server's interceptor list, so that what it measures
includes every interceptor after it (a caller refused by `CallerInterceptor` is counted as the
UNAUTHENTICATED call it is). The code a call ended with is OK, the code given to
`context.abort`/`abort_with_status` (or `set_code`), CANCELLED when the client went away, and
UNKNOWN for any other exception, which is re-raised unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
from google.protobuf import descriptor_pool

from gateway.metrics._metrics import GatewayMetrics, grpc_code_name, split_method

__all__ = [
    "MetricsInterceptor",
    "MetricsStreamClientInterceptor",
    "MetricsUnaryClientInterceptor",
    "client_interceptors",
]

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]  # generic in the stubs only
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


def _proto_type(service: str, method: str, handler: Handler) -> str:
    """The RPC's type as its .proto declares it: the caller check serves unary-request methods
    through stream-request handlers (docs/threats.md T15), which must not change the label."""
    try:
        described = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:  # a service without a descriptor in the default pool: as it is served
        return _TYPES[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return _TYPES[(described.client_streaming, described.server_streaming)]


def _ended_with(context: Context) -> str:
    """The code a handler that returned (or aborted) left on its context: OK unless set."""
    code: object = context.code()
    return "OK" if code is None else grpc_code_name(code)


class _CountingContext:
    """The servicer context, counting `write()`s and `read()`s of handlers that stream that way
    (the health service's Watch does). Everything else is the real context's."""

    def __init__(
        self, context: Context, on_write: Callable[[], None], on_read: Callable[[], None]
    ) -> None:
        self._context = context
        self._on_write = on_write
        self._on_read = on_read

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._on_write()

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self._on_read()
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _Call:
    """The bookkeeping of one server call."""

    __slots__ = ("code", "labels", "metrics", "started")

    def __init__(self, metrics: GatewayMetrics, labels: tuple[str, str, str]) -> None:
        self.metrics = metrics
        self.labels = labels
        self.code = "UNKNOWN"
        self.started = time.perf_counter()
        metrics.child(metrics.grpc_server_started, *labels).inc()

    def received(self) -> None:
        self.metrics.child(self.metrics.grpc_server_msg_received, *self.labels).inc()

    def sent(self) -> None:
        self.metrics.child(self.metrics.grpc_server_msg_sent, *self.labels).inc()

    def failed(self, exc: BaseException, context: Context) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            code = _ended_with(context)
            self.code = "UNKNOWN" if code == "OK" else code
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code = "CANCELLED"
        else:
            self.code = "UNKNOWN"

    def finish(self) -> None:
        m = self.metrics
        m.child(m.grpc_server_handled, *self.labels, grpc_code_name(self.code)).inc()
        m.child(m.grpc_server_handling_seconds, *self.labels).observe(
            time.perf_counter() - self.started
        )


async def _counted(items: AsyncIterable[Any], tick: Callable[[], None]) -> AsyncIterator[Any]:
    async for item in items:
        tick()
        yield item


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records `grpc_server_*` for every RPC the server has a handler for."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        # method -> (its handler, the wrapped handler): the wrapping is the same for every call
        # of a method, so it is made once (the per-call state lives in `_Call`).
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # unimplemented: no series for names a client made up
            return None
        name: str = handler_call_details.method
        known = self._wrapped.get(name)
        if known is not None and known[0] is handler:
            return known[1]
        service, method = split_method(name)
        kind = _proto_type(service, method, handler)
        wrapped = self._wrap(handler, (kind, service, method))
        self._wrapped[name] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler, labels: tuple[str, str, str]) -> Handler:
        metrics = self._metrics
        streaming_in = bool(handler.request_streaming)
        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner_unary = cast(
                Callable[[Any, Any], Awaitable[Any]], handler.unary_unary or handler.stream_unary
            )

            async def unary_response(request: Any, context: Context) -> Any:
                call = _Call(metrics, labels)
                try:
                    request = _requests(call, request, streaming_in)
                    response = await inner_unary(request, context)
                except BaseException as exc:
                    call.failed(exc, context)
                    raise
                else:
                    call.code = _ended_with(context)
                    if call.code == "OK":
                        call.sent()
                    return response
                finally:
                    call.finish()

            if streaming_in:
                return grpc.stream_unary_rpc_method_handler(
                    unary_response, handler.request_deserializer, handler.response_serializer
                )
            return grpc.unary_unary_rpc_method_handler(
                unary_response, handler.request_deserializer, handler.response_serializer
            )

        inner_stream = cast(
            Callable[[Any, Any], Any], handler.unary_stream or handler.stream_stream
        )
        make = (
            grpc.stream_stream_rpc_method_handler
            if streaming_in
            else grpc.unary_stream_rpc_method_handler
        )
        if inspect.iscoroutinefunction(inner_stream):
            # A handler that streams with `await context.write(...)` and returns None.
            async def written_stream(request: Any, context: Context) -> None:
                call = _Call(metrics, labels)
                counting = _CountingContext(context, call.sent, call.received)
                try:
                    request = _requests(call, request, streaming_in)
                    await inner_stream(request, counting)
                    call.code = _ended_with(context)
                except BaseException as exc:
                    call.failed(exc, context)
                    raise
                finally:
                    call.finish()

            return make(written_stream, handler.request_deserializer, handler.response_serializer)

        async def yielded_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(metrics, labels)
            responses: Any = None
            try:
                request = _requests(call, request, streaming_in)
                responses = inner_stream(request, context)
                async for item in responses:
                    yield item
                    call.sent()  # counted once gRPC has taken it and asked for the next
                call.code = _ended_with(context)
            except BaseException as exc:
                call.failed(exc, context)
                raise
            finally:
                call.finish()
                aclose = getattr(responses, "aclose", None)
                if aclose is not None:
                    await aclose()

        return make(yielded_stream, handler.request_deserializer, handler.response_serializer)


def _requests(call: _Call, request: Any, streaming: bool) -> Any:
    """Count the request messages: the one of a unary call now, a stream's as it is read."""
    if not streaming:
        call.received()
        return request
    return _counted(request, call.received)


# client ------------------------------------------------------------------------------------------
class _ClientCall:
    __slots__ = ("labels", "metrics", "started")

    def __init__(
        self, metrics: GatewayMetrics, details: grpc.aio.ClientCallDetails, kind: str, peer: str
    ) -> None:
        service, method = split_method(details.method)
        self.metrics = metrics
        self.labels = (kind, service, method, peer)
        self.started = time.perf_counter()
        metrics.child(metrics.grpc_client_started, *self.labels).inc()

    def finish(self, code: str, ended: float | None = None) -> None:
        m = self.metrics
        m.child(m.grpc_client_handled, *self.labels, grpc_code_name(code)).inc()
        m.child(m.grpc_client_handling_seconds, *self.labels).observe(
            (time.perf_counter() if ended is None else ended) - self.started
        )


class MetricsUnaryClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Records `grpc_client_*` for the unary calls of a channel to one peer region."""

    def __init__(self, metrics: GatewayMetrics, peer_region: str) -> None:
        self._metrics = metrics
        self._region = peer_region  # labelled at each call: a channel outlives registry versions

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        record = _ClientCall(
            self._metrics, client_call_details, "unary", self._metrics.peer_region(self._region)
        )
        call: Any = None
        code = "UNKNOWN"
        try:
            call = await continuation(client_call_details, request)
            await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if call is None:
                raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            if call is not None:
                call.cancel()
            raise
        else:
            code = "OK"
        finally:
            record.finish(code)
        return call  # the caller awaits the same call: the same answer, or the same error


class MetricsStreamClientInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Records `grpc_client_*` for the server-streaming calls of a channel to one peer region,
    once the stream is done: ended, failed or cancelled. The call is handed back untouched."""

    def __init__(self, metrics: GatewayMetrics, peer_region: str) -> None:
        self._metrics = metrics
        self._region = peer_region  # labelled at each call: a channel outlives registry versions
        self._recording: set[asyncio.Task[None]] = set()

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        record = _ClientCall(
            self._metrics,
            client_call_details,
            "server_stream",
            self._metrics.peer_region(self._region),
        )
        try:
            call = await continuation(client_call_details, request)
        except grpc.aio.AioRpcError as exc:
            record.finish(exc.code().name)
            raise
        except BaseException:
            record.finish("UNKNOWN")
            raise

        def done(finished: Any) -> None:
            ended = time.perf_counter()
            if finished.cancelled():
                record.finish("CANCELLED", ended)
                return
            # The status of a finished call is at hand, but only through a coroutine.
            task = asyncio.get_running_loop().create_task(
                _finish_with_code(finished, record, ended)
            )
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)

        call.add_done_callback(done)
        return call


async def _finish_with_code(call: Any, record: _ClientCall, ended: float) -> None:
    record.finish(grpc_code_name(await call.code()), ended)


def client_interceptors(
    metrics: GatewayMetrics, peer_region: str
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a channel to `peer_region` (a region code, or `PEER_LOCAL` for the
    region's own data system): `grpc.aio.secure_channel(..., interceptors=...)`."""
    return [
        MetricsUnaryClientInterceptor(metrics, peer_region),
        MetricsStreamClientInterceptor(metrics, peer_region),
    ]
