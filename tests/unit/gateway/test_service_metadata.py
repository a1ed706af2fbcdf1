"""The request token every servicer reads from a call's metadata (gateway.services._metadata)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.services._metadata import request_token


class _Context:
    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Any:
        return self._metadata


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc.def"),), "abc.def"),
        ((("x-other", "1"), ("authorization", "Bearer  tok  ")), "tok"),
        ((("authorization", "bearer abc.def"),), "abc.def"),  # the scheme's case is free
        ((("authorization", "Basic abc"),), ""),
        ((("authorization", "abc.def"),), ""),  # no scheme: not a bearer token
        ((("authorization", "Bearer a b"),), ""),
        ((("authorization", b"Bearer abc"),), ""),  # a binary value is not a token
        ((), ""),
        (None, ""),
    ],
)
def test_request_token(metadata: Any, token: str) -> None:
    assert request_token(_Context(metadata)) == token  # type: ignore[arg-type]
