"""The generated tongban.v1 API matches the public contract of ARCHITECTURE.md §3."""

from __future__ import annotations

import base64
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor import FileDescriptor

from tongban.v1 import (
    common_pb2,
    credentials_pb2,
    exchange_pb2,
    oversight_pb2,
    registry_pb2,
)

REPO = Path(__file__).resolve().parents[2]

# service -> (module defining it, its contract RPCs)
CONTRACT_SERVICES: dict[str, tuple[FileDescriptor, set[str]]] = {
    "DataExchange": (exchange_pb2.DESCRIPTOR, {"Query", "BatchQuery"}),
    "Credentials": (credentials_pb2.DESCRIPTOR, {"Fetch", "Verify", "Seal"}),
    "Peer": (exchange_pb2.DESCRIPTOR, {"Forward", "ReportAccess"}),
    "Oversight": (
        oversight_pb2.DESCRIPTOR,
        {"QueryAudit", "VerifyAudit", "GetProof", "SubjectAccess"},
    ),
    "Registry": (registry_pb2.DESCRIPTOR, {"GetSnapshot", "Watch"}),
    "DataProvider": (exchange_pb2.DESCRIPTOR, {"Fetch"}),
}

SERVER_STREAMING = {("Registry", "Watch"), ("Oversight", "QueryAudit")}

CONTRACT_REASONS = {
    "PURPOSE_NOT_APPROVED",
    "FIELD_NOT_ALLOWED",
    "AGREEMENT_EXPIRED",
    "TOKEN_EXPIRED",
    "TOKEN_INVALID",
    "REQUEST_REPLAYED",
    "UNKNOWN_REGION",
    "SEAL_INVALID",
    "AUDIT_UNAVAILABLE",
    "QUOTA_EXCEEDED",
    "SUBJECT_ID_INVALID",
    "REGISTRY_STALE",
}

CONTRACT_SUB_INDICATIONS = {
    "HASH_FAILURE",
    "SIG_CRYPTO_FAILURE",
    "FORMAT_FAILURE",
    "NO_CERTIFICATE_CHAIN_FOUND",
    "REVOKED",
    "REVOKED_NO_POE",
    "EXPIRED",
    "NOT_YET_VALID",
    "CHAIN_CONSTRAINTS_FAILURE",
    "CRYPTO_CONSTRAINTS_FAILURE",
}


@pytest.mark.parametrize("service", sorted(CONTRACT_SERVICES))
def test_contract_services_and_rpcs_exist(service: str) -> None:
    file_descriptor, rpcs = CONTRACT_SERVICES[service]
    assert file_descriptor.package == "tongban.v1"
    found = file_descriptor.services_by_name[service]
    assert found.full_name == f"tongban.v1.{service}"
    assert rpcs <= set(found.methods_by_name)
    for method in found.methods:
        streaming = (service, method.name) in SERVER_STREAMING
        assert method.server_streaming is streaming, method.full_name
        assert not method.client_streaming, method.full_name


def test_error_reasons_are_contract_names() -> None:
    names = set(common_pb2.ErrorReason.keys())
    assert names >= CONTRACT_REASONS
    assert common_pb2.ErrorReason.Value("ERROR_REASON_UNSPECIFIED") == 0
    # The wire form is the bare value name, so no value may carry an enum-name prefix.
    assert not {name for name in names if name.startswith("ERROR_REASON_")} - {
        "ERROR_REASON_UNSPECIFIED"
    }


def test_validation_report_uses_etsi_names() -> None:
    assert set(credentials_pb2.Indication.keys()) >= {
        "TOTAL_PASSED",
        "TOTAL_FAILED",
        "INDETERMINATE",
    }
    assert set(credentials_pb2.SubIndication.keys()) >= CONTRACT_SUB_INDICATIONS


def test_outcome_values() -> None:
    assert common_pb2.Outcome.keys() == [
        "OUTCOME_UNSPECIFIED",
        "OUTCOME_ALLOWED",
        "OUTCOME_DENIED",
        "OUTCOME_FAILED",
    ]


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tongban_proto_build", REPO / "proto/build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def source_descriptors(
    tmp_path_factory: pytest.TempPathFactory,
) -> descriptor_pb2.FileDescriptorSet:
    """The tongban.v1 files compiled by protoc with their source comments."""
    out = tmp_path_factory.mktemp("descriptors") / "tongban.pb"
    build = _load_build_script()
    build.run_protoc([f"--descriptor_set_out={out}", "--include_source_info"])
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    descriptor_set.ParseFromString(out.read_bytes())
    return descriptor_set


def _element_paths(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source path, name) of every message, field, enum, enum value, service and method."""
    f = descriptor_pb2.FileDescriptorProto
    m = descriptor_pb2.DescriptorProto
    e = descriptor_pb2.EnumDescriptorProto
    s = descriptor_pb2.ServiceDescriptorProto

    def enums(
        prefix: tuple[int, ...], items: Any, parent: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        for i, enum in enumerate(items):
            path = (*prefix, i)
            yield path, f"{parent}.{enum.name}"
            for j, value in enumerate(enum.value):
                yield (*path, e.VALUE_FIELD_NUMBER, j), f"{parent}.{enum.name}.{value.name}"

    def messages(
        prefix: tuple[int, ...], items: Any, parent: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        for i, message in enumerate(items):
            path = (*prefix, i)
            name = f"{parent}.{message.name}"
            yield path, name
            for j, field in enumerate(message.field):
                yield (*path, m.FIELD_FIELD_NUMBER, j), f"{name}.{field.name}"
            yield from messages((*path, m.NESTED_TYPE_FIELD_NUMBER), message.nested_type, name)
            yield from enums((*path, m.ENUM_TYPE_FIELD_NUMBER), message.enum_type, name)

    package = file.package
    yield from messages((f.MESSAGE_TYPE_FIELD_NUMBER,), file.message_type, package)
    yield from enums((f.ENUM_TYPE_FIELD_NUMBER,), file.enum_type, package)
    for i, service in enumerate(file.service):
        path = (f.SERVICE_FIELD_NUMBER, i)
        yield path, f"{package}.{service.name}"
        for j, method in enumerate(service.method):
            yield (*path, s.METHOD_FIELD_NUMBER, j), f"{package}.{service.name}.{method.name}"


def test_every_element_is_documented(source_descriptors: descriptor_pb2.FileDescriptorSet) -> None:
    files = [f for f in source_descriptors.file if f.package == "tongban.v1"]
    assert len(files) == 7
    undocumented: list[str] = []
    checked_fields = 0
    for file in files:
        comments = {
            tuple(location.path): location.leading_comments.strip()
            for location in file.source_code_info.location
        }
        for path, name in _element_paths(file):
            if not comments.get(path):
                undocumented.append(f"{file.name}: {name}")
            checked_fields += path[-2] == descriptor_pb2.DescriptorProto.FIELD_FIELD_NUMBER
    assert checked_fields > 100
    assert undocumented == []


def test_field_numbers_are_dense_from_one(
    source_descriptors: descriptor_pb2.FileDescriptorSet,
) -> None:
    for file in source_descriptors.file:
        for message in file.message_type:
            numbers = [field.number for field in message.field]
            assert numbers == list(range(1, len(numbers) + 1)), f"{file.name}: {message.name}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


MINIMAL_SNAPSHOT: dict[str, Any] = {
    "format": "tongban.registry/v1",
    "version": 7,
    "issued_at": "2026-11-21T23:00:00Z",
    "expires_at": "2026-11-28T23:00:00Z",
    "name": "长三角通办联盟",
    "refresh_seconds": 300,
    "witness_threshold": 1,
    "regions": [
        {
            "code": "310000",
            "name": "上海市",
            "endpoint": "gw.sh.example:8443",
            "ca_certificates": [_b64(b"\x30\x82root"), _b64(b"\x30\x82intermediate")],
        }
    ],
    "agencies": [
        {
            "id": "sh-hrss",
            "name": "上海市人力资源和社会保障局",
            "region": "310000",
            "uscc": "11310000002417583X",
            "roles": ["requester", "provider"],
        }
    ],
    "datasets": [
        {
            "id": "si-contribution",
            "name": "社会保险缴费记录",
            "owner": "sh-hrss",
            "share_class": "有条件共享",
            "cache_ttl_seconds": 600,
            "cache_scope": "provider",
            "fields": [
                {"name": "name", "classification": "personal", "description": "姓名"},
                {"name": "months", "classification": "personal", "description": "缴费月数"},
            ],
            "description": "",
        }
    ],
    "purposes": [
        {
            "id": "SI-TRANSFER",
            "unified_code": "000000000000",
            "name": "养老保险关系转移接续",
            "legal_basis": "《社会保险法》第十九条",
            "datasets": [{"dataset": "si-contribution", "fields": ["name", "months"]}],
        }
    ],
    "agreements": [
        {
            "id": "agr-sh-js-si",
            "provider_region": "310000",
            "requester_agencies": [],
            "requester_regions": ["320000"],
            "purposes": ["SI-TRANSFER"],
            "valid_from": "2026-01-01T00:00:00Z",
            "valid_until": "2027-01-01T00:00:00Z",
            "quota_per_minute": 600,
            "description": "",
        }
    ],
    "keys": [
        {
            "kid": "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg",
            "usage": "seal",
            "owner": "310000",
            "region": "310000",
            "algorithm": "ES256",
            "state": "active",
            "certificate": _b64(b"\x30\x82leaf"),
            "not_before": "2026-01-01T00:00:00Z",
            "not_after": "2028-01-01T00:00:00Z",
            "published_at": "2026-01-01T00:00:00Z",
            "activated_at": "2026-01-02T00:00:00Z",
            "retiring_at": "",
            "revoked_at": "",
            "revocation_reason": "",
        }
    ],
    "matters": [
        {
            "code": "000112003100",
            "name": "养老保险关系转移接续",
            "category": "",
            "time_limit_days": 45,
            "parts": [
                {"region": "320000", "role": "receive", "description": ""},
                {"region": "310000", "role": "handle", "description": "转入地接续"},
            ],
            "materials": [
                {
                    "id": "id-card",
                    "kind": "credential",
                    "credential_type": "id_card",
                    "description": "",
                    "required": True,
                }
            ],
            "queries": [{"dataset": "si.x", "purpose": "SI", "fields": ["months", "name"]}],
        }
    ],
}


def test_registry_snapshot_schema_parses_a_payload() -> None:
    snapshot = json_format.ParseDict(MINIMAL_SNAPSHOT, registry_pb2.RegistrySnapshot())
    assert snapshot.version == 7
    assert snapshot.issued_at == "2026-11-21T23:00:00Z"
    assert snapshot.regions[0].ca_certificates[1] == b"\x30\x82intermediate"
    assert snapshot.datasets[0].share_class == "有条件共享"
    assert snapshot.purposes[0].datasets[0].fields == ["name", "months"]
    assert snapshot.agreements[0].requester_regions == ["320000"]
    assert snapshot.keys[0].certificate == b"\x30\x82leaf"
    assert [p.role for p in snapshot.matters[0].parts] == ["receive", "handle"]
    assert snapshot.matters[0].materials[0].required is True
    round_trip = json_format.MessageToDict(
        snapshot, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert set(round_trip) == set(MINIMAL_SNAPSHOT)


def test_registry_snapshot_schema_rejects_unknown_keys() -> None:
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict({**MINIMAL_SNAPSHOT, "surprise": 1}, registry_pb2.RegistrySnapshot())
