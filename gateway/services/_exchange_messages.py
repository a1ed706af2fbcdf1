"""The query path's wire messages and its domain values, converted both ways (the flows see no
protobuf), and the codecs a gateway keeps answers in its cache with."""

from __future__ import annotations

from typing import Final

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.flows import Answer, Forwarded, SealedAnswer
from gateway.policy import DataRequest
from gateway.sealing import SealFormat
from tongban.v1 import credentials_pb2, exchange_pb2

__all__ = [
    "ForwardedCodec",
    "SealedRecordCodec",
    "data_request",
    "forward_response",
    "forwarded",
    "query_request",
    "query_response",
    "seal_format",
    "sealed_answer",
    "sealed_record",
    "wire_seal_format",
]


def data_request(query: exchange_pb2.QueryRequest) -> DataRequest:
    """What the policy decides on, from the wire message (the same on both gateways)."""
    return DataRequest(
        provider_region=query.provider_region,
        dataset=query.dataset,
        purpose=query.purpose,
        subject_id=query.subject_id,
        fields=tuple(query.fields),
        case_id=query.case_id,
        request_id=query.request_id,
        consent=query.consent,
    )


def query_request(data: DataRequest) -> exchange_pb2.QueryRequest:
    return exchange_pb2.QueryRequest(
        provider_region=data.provider_region,
        dataset=data.dataset,
        purpose=data.purpose,
        subject_id=data.subject_id,
        fields=data.fields,
        case_id=data.case_id,
        request_id=data.request_id,
        consent=data.consent,
    )


_WIRE_FORMATS: Final = {
    SealFormat.JADES: credentials_pb2.SEAL_FORMAT_JADES,
    SealFormat.GBT38540: credentials_pb2.SEAL_FORMAT_GBT38540,
    SealFormat.OFD: credentials_pb2.SEAL_FORMAT_OFD,
}
_FORMATS_OF_WIRE: Final = {wire: format for format, wire in _WIRE_FORMATS.items()}


def seal_format(wire: int) -> SealFormat:
    """The format a SealedRecord says; unspecified (an older sender) is JAdES. A value this
    gateway does not know is read as JAdES too: its empty or foreign jws then fails to verify."""
    return _FORMATS_OF_WIRE.get(credentials_pb2.SealFormat.ValueType(wire), SealFormat.JADES)


def wire_seal_format(format: SealFormat) -> credentials_pb2.SealFormat.ValueType:
    return _WIRE_FORMATS[format]


def sealed_answer(record: credentials_pb2.SealedRecord) -> SealedAnswer:
    return SealedAnswer(
        format=seal_format(record.format),
        ses_signature=record.ses_signature,
        jws=record.jws,
        payload=record.payload,
        content_type=record.content_type,
        sealer_kid=record.sealer_kid,
        sealer_region=record.sealer_region,
        sealed_at=(record.sealed_at.seconds, record.sealed_at.nanos)
        if record.HasField("sealed_at")
        else None,
    )


def sealed_record(answer: SealedAnswer) -> credentials_pb2.SealedRecord:
    """The wire's SealedRecord of a sealed answer."""
    record = credentials_pb2.SealedRecord(
        jws=answer.jws,
        format=wire_seal_format(answer.format),
        ses_signature=answer.ses_signature,
        payload=answer.payload,
        content_type=answer.content_type,
        sealer_kid=answer.sealer_kid,
        sealer_region=answer.sealer_region,
    )
    if answer.sealed_at is not None:
        seconds, nanos = answer.sealed_at
        record.sealed_at.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
    return record


def forwarded(response: exchange_pb2.ForwardResponse) -> Forwarded:
    return Forwarded(
        record=sealed_answer(response.record),
        audit_id=response.audit_id,
        fields=tuple(response.fields),
        registry_version=response.registry_version,
        cache_hit=response.cache_hit,
        agreement_id=response.agreement_id,
        subject_pseudonym=response.subject_pseudonym,
    )


def forward_response(answer: Forwarded) -> exchange_pb2.ForwardResponse:
    return exchange_pb2.ForwardResponse(
        record=sealed_record(answer.record),
        audit_id=answer.audit_id,
        fields=answer.fields,
        registry_version=answer.registry_version,
        cache_hit=answer.cache_hit,
        agreement_id=answer.agreement_id,
        subject_pseudonym=answer.subject_pseudonym,
    )


def query_response(answer: Answer) -> exchange_pb2.QueryResponse:
    return exchange_pb2.QueryResponse(
        record=sealed_record(answer.record),
        cache_hit=answer.cache_hit,
        audit_id=answer.audit_id,
        fields=answer.fields,
        registry_version=answer.registry_version,
        agreement_id=answer.agreement_id,
    )


class ForwardedCodec:
    """A requesting gateway keeps an owner's answer as its ForwardResponse message."""

    def encode(self, answer: Forwarded) -> bytes:
        return forward_response(answer).SerializeToString()

    def decode(self, raw: bytes) -> Forwarded | None:
        try:
            return forwarded(exchange_pb2.ForwardResponse.FromString(raw))
        except DecodeError:
            return None


class SealedRecordCodec:
    """An owner gateway keeps its sealed answer as its SealedRecord message."""

    def encode(self, record: SealedAnswer) -> bytes:
        return sealed_record(record).SerializeToString()

    def decode(self, raw: bytes) -> SealedAnswer:
        return sealed_answer(credentials_pb2.SealedRecord.FromString(raw))
