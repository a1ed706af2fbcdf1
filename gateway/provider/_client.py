"""The gateway's client of its own province's data system (`tongban.v1.DataProvider.Fetch`).

One channel per data system, opened on first use and shared by every call. Failures become
`ProviderError` with a Tongban reason:

| provider status | reason | retryable |
| --- | --- | --- |
| UNAVAILABLE (after one retry) | PROVIDER_UNAVAILABLE | yes |
| DEADLINE_EXCEEDED | PROVIDER_UNAVAILABLE | no |
| INVALID_ARGUMENT | its ErrorInfo reason (else INVALID_ARGUMENT_FORMAT) | no |
| NOT_FOUND | its ErrorInfo reason (else SUBJECT_NOT_FOUND) | no |
| anything else | PROVIDER_UNAVAILABLE | no |

A fetch only reads, so it is retried once, at once, when the data system answers UNAVAILABLE,
within the same deadline. A circuit breaker stands in front of the data system: after
`BREAKER_FAILURES` calls in a row that timed out or found it unavailable (or at once when it
cannot be reached), calls fail fast with PROVIDER_UNAVAILABLE for `BREAKER_OPEN_SECONDS`, then
one trial call decides; a hung data system then holds no server slot for whole deadlines. An ErrorInfo reason is passed through only when its domain is
"tongban" and it names a `tongban.v1.ErrorReason`.

Without `credentials` the channel is plaintext, allowed only to a loopback target (the demo
provider next to the gateway); a real data system is reached over TLS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc

from gateway.breaker import CircuitBreaker
from gateway.errors import KNOWN_REASONS, PLAIN_MESSAGES, REASONS, GatewayError, error_info_of
from gateway.provider._net import is_loopback
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

__all__ = [
    "BREAKER_FAILURES",
    "BREAKER_OPEN_SECONDS",
    "ProviderAnswer",
    "ProviderClient",
    "ProviderError",
]

BREAKER_FAILURES = 3  # timeouts or UNAVAILABLE answers in a row (within 10 s) that open it
BREAKER_OPEN_SECONDS = 2.0  # then calls fail fast this long, before one trial call

log = logging.getLogger("tongban.provider")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RETRY_PAUSE_SECONDS = 0.05
# What counts against the data system in the breaker: it did not answer (in time).
_BREAKING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# The reason a data system's refusal without one of its own stands for, by its status code
# (the reason table's code of each).
_FALLBACK = {
    REASONS[reason].code: reason for reason in ("INVALID_ARGUMENT_FORMAT", "SUBJECT_NOT_FOUND")
}


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """The data system's answer: `payload` is empty when `found` is false."""

    found: bool
    payload: bytes
    content_type: str


class ProviderError(GatewayError):
    """The data system refused or failed a fetch; `reason` is a Tongban error reason."""

    def __init__(
        self,
        reason: str,
        message: str,
        retryable: bool = False,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.code = code  # the provider's status code


def _error_reason(exc: grpc.aio.AioRpcError) -> str | None:
    info, _ = error_info_of(exc)
    return info.reason if info is not None and info.reason in KNOWN_REASONS else None


class ProviderClient:
    """Calls one data system; use as `async with` or call `close()`."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_seconds: float = 2.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if credentials is None and not is_loopback(target):
            raise ValueError(
                f"the data system at {target!r} must be reached over TLS: pass channel credentials "
                "(plaintext is allowed only to a loopback address)"
            )
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.target = target
        self.timeout_seconds = timeout_seconds
        self._credentials = credentials
        self._interceptors = list(interceptors)  # e.g. the gateway's grpc_client_* metrics
        self._channel: grpc.aio.Channel | None = None
        self._stub: exchange_pb2_grpc.DataProviderAsyncStub | None = None
        self._closed = False
        self.breaker = breaker or CircuitBreaker(
            failure_threshold=BREAKER_FAILURES,
            open_seconds=BREAKER_OPEN_SECONDS,
            name=f"data system {target}",
            open_note="queries needing it fail fast with PROVIDER_UNAVAILABLE",
        )

    def _get_stub(self) -> exchange_pb2_grpc.DataProviderAsyncStub:
        if self._closed:
            raise RuntimeError("the provider client is closed")
        if self._stub is None:
            options = [
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(
                    self.target, options=options, interceptors=self._interceptors
                )
            else:
                channel = grpc.aio.secure_channel(
                    self.target,
                    self._credentials,
                    options=options,
                    interceptors=self._interceptors,
                )
            self._channel = channel
            self._stub = exchange_pb2_grpc.DataProviderStub(channel)
        return self._stub

    async def fetch(
        self,
        *,
        dataset: str,
        subject_id: str,
        fields: Sequence[str],
        purpose: str,
        case_id: str,
        request_id: str,
        requesting_region: str,
        requesting_agency: str,
        deadline_seconds: float | None = None,
    ) -> ProviderAnswer:
        """Fetch the subject's record with exactly `fields`.

        `deadline_seconds` is the time the caller has left; the call (with its retry) never
        takes longer than that nor than `timeout_seconds`.
        """
        stub = self._get_stub()
        request = exchange_pb2.ProviderFetchRequest(
            dataset=dataset,
            subject_id=subject_id,
            fields=list(fields),
            purpose=purpose,
            case_id=case_id,
            request_id=request_id,
            requesting_region=requesting_region,
            requesting_agency=requesting_agency,
        )
        budget = self.timeout_seconds
        if deadline_seconds is not None:
            budget = min(budget, deadline_seconds)
        if budget <= 0:
            raise ProviderError(
                "PROVIDER_UNAVAILABLE",
                "no time left to call the data system",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        if not self.breaker.allow():
            raise ProviderError(
                "PROVIDER_UNAVAILABLE",
                "the data system is failing (its circuit breaker is open): try again shortly",
                retryable=True,
            )
        try:
            answer = await self._fetch(stub, request, budget, dataset, request_id)
        except ProviderError as exc:
            if exc.code in _BREAKING:
                self.breaker.failure(timeout=exc.code == grpc.StatusCode.DEADLINE_EXCEEDED)
            else:
                self.breaker.success()  # it answered, if with a refusal
            raise
        except BaseException:
            self.breaker.abandon()  # cancelled: no verdict on the data system
            raise
        self.breaker.success()
        return answer

    async def _fetch(
        self,
        stub: exchange_pb2_grpc.DataProviderAsyncStub,
        request: exchange_pb2.ProviderFetchRequest,
        budget: float,
        dataset: str,
        request_id: str,
    ) -> ProviderAnswer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        retried = False
        while True:
            try:
                response = await stub.Fetch(request, timeout=max(deadline - loop.time(), 0.001))
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if (
                    code == grpc.StatusCode.UNAVAILABLE
                    and not retried
                    and deadline - loop.time() > 2 * RETRY_PAUSE_SECONDS
                ):
                    retried = True
                    log.info(
                        "data system %s unavailable for %s (request %s); retrying once",
                        self.target,
                        dataset,
                        request_id,
                    )
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
                    continue
                raise self._error(exc, dataset, request_id) from None
            if not response.found:
                return ProviderAnswer(found=False, payload=b"", content_type="")
            return ProviderAnswer(
                found=True, payload=response.payload, content_type=response.content_type
            )

    def _error(self, exc: grpc.aio.AioRpcError, dataset: str, request_id: str) -> ProviderError:
        code = exc.code()
        if code in _FALLBACK:
            reason = _error_reason(exc) or _FALLBACK[code]
            # The refusal goes to another region: the reason's own sentence, never the data
            # system's words (they may quote its internals, or the subject id asked for).
            log.info(
                "data system %s refused %s (request %s): %s %s",
                self.target,
                dataset,
                request_id,
                code.name,
                reason,
            )
            return ProviderError(reason, PLAIN_MESSAGES.get(reason, code.name), code=code)
        log.warning(
            "data system %s failed %s (request %s): %s",
            self.target,
            dataset,
            request_id,
            code.name,
        )
        what = "did not answer in time" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "failed"
        return ProviderError(
            "PROVIDER_UNAVAILABLE",
            f"the data system {what} ({code.name})",
            retryable=code == grpc.StatusCode.UNAVAILABLE,
            code=code,
        )

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def __aenter__(self) -> ProviderClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
