"""The one HTTP client of signer/: OCSP responders, CRL distribution points and time-stamping
authorities are asked through it (the standard library's `urllib`, as docs/security.md says why).
No proxy from the environment, no redirect (a redirect is answered as the error it then is), a
bound on the time and on the size of the answer."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Final

__all__: list[str] = []  # internals of `_revocation_fetch` and `_timestamps`


class HttpUnavailable(Exception):
    """The server could not be asked or did not answer usefully: `kind` is "status" (an HTTP
    error; `detail` its code), "unreachable" (`detail` the reason) or "too_large" (`detail` the
    cap); the message says it as the OCSP and CRL fetcher reports it."""

    def __init__(self, kind: str, detail: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is answered as the error it then is


_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


@dataclass(frozen=True, slots=True)
class Answer:
    content_type: str
    body: bytes


def fetch(
    url: str, body: bytes | None, content_type: str, *, timeout: float, max_bytes: int
) -> Answer:
    """GET `url` (or POST `body` as `content_type`): the answer, at most `max_bytes`. The caller
    has checked the URL's scheme."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")  # noqa: S310 -- the callers allow http(s) only
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            kind = answer.headers.get_content_type()
            data: bytes = answer.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise HttpUnavailable("status", str(exc.code), f"HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:  # URLError, timeouts, resets are OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise HttpUnavailable("unreachable", str(reason), f"not reachable ({reason})") from None
    if len(data) > max_bytes:
        raise HttpUnavailable("too_large", str(max_bytes), f"the answer exceeds {max_bytes} bytes")
    return Answer(kind, data)
