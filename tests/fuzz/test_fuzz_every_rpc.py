"""Every RPC the gateways serve, found in the protobuf descriptors (a service added later is
fuzzed without a line here), gets messages built from its request type's descriptor — every
field left unset or set to a random value of its type: odd and huge strings, any integer, any
enum number, nested messages, lists, out-of-range timestamps — and malformed wire bytes, from
agencies' and gateways' certificates, with good and broken tokens. The same properties as
test_fuzz_rpcs.py, which fuzzes the main RPCs with knowledge of what each one means:

- never UNKNOWN or INTERNAL, every error a rich status whose ErrorInfo has one of the contract's
  reasons, no unary call reaching its 5 s deadline;
- a stream (a `Watch`) either ends with such a status or is still open at its short deadline
  (it is meant to stay open);
- afterwards every gateway answers SERVING and a valid query is answered.

`tongban.v1.DataProvider` is not among them: it is served by a region's data system, not by a
gateway.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import grpc
import pytest
from fuzz.fuzz_support import DEFAULT_EXAMPLES, EXAMPLES, Harness, check, fuzz_settings
from fuzz.strategies import (
    AGENCIES,
    INT32,
    REGIONS,
    Metadata,
    metadata,
    mostly,
    raw_messages,
    texts,
    timestamps,
)
from google.protobuf import descriptor, message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st

import tongban.v1

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fuzz,
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

SERVED_BY_DATA_SYSTEMS = {"tongban.v1.DataProvider"}
STREAM_SECONDS = 0.25  # how long a stream that stays open (a Watch) is read
# A tenth of the examples the RPC-by-RPC tests make (breadth here, depth there), a hundredth for
# a stream (each example may stay open STREAM_SECONDS): `make fuzz` stays within its time.
BREADTH = max(DEFAULT_EXAMPLES, EXAMPLES // 10)
STREAMED = max(DEFAULT_EXAMPLES // 2, EXAMPLES // 100)
DEPTH = 3  # nested messages built at most this deep
# Every generated module of tongban.v1: a .proto file added later is fuzzed too.
MODULES = tuple(
    importlib.import_module(f"tongban.v1.{found.name}")
    for found in pkgutil.iter_modules(tongban.v1.__path__)
    if found.name.endswith("_pb2")
)
# (owner of the client certificate, region of the gateway called)
CALLERS = st.sampled_from(
    [
        *(
            ("sc.hrss", "510000"),
            ("sc.data", "510000"),
            ("cq.hrss", "500000"),
            ("zj.amr", "330000"),
        ),
        *(("510000", "330000"), ("500000", "510000"), ("330000", "500000")),
    ]
)


def served_methods() -> list[descriptor.MethodDescriptor]:
    found = []
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name not in SERVED_BY_DATA_SYSTEMS:
                found.extend(service.methods)
    return sorted(found, key=lambda m: m.full_name)


METHODS = served_methods()


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return texts(*AGENCIES, *REGIONS, huge=False)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=300)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return INT32  # any number: proto3 enums are open
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.integers(-(2**63), 2**63 - 1)
    return INT32


def messages(kind: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """A message of `kind` with each field unset or random (nested ones to DEPTH)."""
    made = message_factory.GetMessageClass(kind)
    if kind.full_name == "google.protobuf.Timestamp":
        return timestamps().map(lambda t: t if t is not None else made())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in kind.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= DEPTH or field.message_type.GetOptions().map_entry:
                continue
            value = st.deferred(lambda f=field: messages(f.message_type, depth + 1))
        else:
            value = _scalar(field)
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        fields[field.name] = st.one_of(st.none(), value)

    def build(values: dict[str, Any]) -> Any:
        message = made()
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, list):
                getattr(message, name).extend(value)
            elif hasattr(value, "SerializeToString"):
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries(fields).map(build)


def _example(kind: descriptor.Descriptor) -> bytes:
    """A plausible request's bytes for the wire mutations: its string fields set."""
    message = message_factory.GetMessageClass(kind)()
    for field in kind.fields:
        if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
            setattr(message, field.name, "510000")
    return bytes(message.SerializeToString())


def _metadata_for(caller: str) -> st.SearchStrategy[Metadata]:
    return metadata(caller if not caller.isdigit() else "sc.hrss")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name.removeprefix("tongban.v1."))
def test_every_rpc_holds_the_contract(
    harness: Harness, method: descriptor.MethodDescriptor
) -> None:
    h = harness
    path = f"/{method.containing_service.full_name}/{method.name}"
    response = message_factory.GetMessageClass(method.output_type)
    streaming = method.server_streaming
    requests = mostly(messages(method.input_type), raw_messages(_example(method.input_type)))

    @fuzz_settings(STREAMED if streaming else BREADTH)
    @given(message=requests, caller=CALLERS, data=st.data())
    def one(message: Any, caller: tuple[str, str], data: st.DataObject) -> None:
        pairs = h.render(data.draw(_metadata_for(caller[0])))
        what = f"{path} {message!r} as {caller}"
        if not streaming:
            check(h.unary(*caller, path, response, message, pairs), pairs, what)
            return
        result = h.stream(*caller, path, response, message, pairs, timeout=STREAM_SECONDS)
        if result.code is grpc.StatusCode.DEADLINE_EXCEEDED and not result.has_error_info:
            return  # open until the client's deadline: what a Watch is for
        check(result, pairs, what)

    one()
    h.assert_healthy()
