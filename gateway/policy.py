"""Purpose-based authorisation of cross-region queries (ARCHITECTURE.md §3 "Authorisation").

`check_request` checks the shape of a request (sizes, formats, duplicates); `PurposePolicy`
decides, from one registry snapshot and the time, whether a requester may see the fields it
asks for. Both are pure: no I/O, no clock, no randomness. Quota (`gateway.quota`) comes after an
allow decision, because it is counted per agreement and only the decision knows which one.

Messages are written for a person and name ids of the registry (regions, datasets, purposes,
agreements, field names) but never a value of the request that may be personal data: not the
subject id, not the case id, not the request id.

Reason → gRPC status code (`GRPC_CODES`: the policy's reasons, read from the one table,
`gateway.errors.REASONS`):

    INVALID_ARGUMENT_FORMAT, REQUEST_TOO_LARGE, SUBJECT_ID_INVALID,
    UNKNOWN_REGION, UNKNOWN_DATASET, UNKNOWN_PURPOSE               → INVALID_ARGUMENT
    NOT_AUTHORISED_ROLE, DATASET_NOT_SHARED, PURPOSE_NOT_APPROVED,
    NO_AGREEMENT, AGREEMENT_EXPIRED, CASE_ID_REQUIRED,
    FIELD_NOT_ALLOWED                                              → PERMISSION_DENIED
    QUOTA_EXCEEDED                                                 → RESOURCE_EXHAUSTED

Unknown ids are INVALID_ARGUMENT rather than NOT_FOUND: they name nothing the caller could be
allowed to see, and a retry with the same argument can never succeed. CASE_ID_REQUIRED is
PERMISSION_DENIED rather than FAILED_PRECONDITION: the case id is the justification that
有条件共享 demands before a region shares, so without it the caller has no permission; nothing in
the system's state has to change, and the request is well formed (an empty case id is fine for
无条件共享 data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from gateway.audit import MAX_RECORD_TEXT_CHARS, is_case_id, is_request_id
from gateway.errors import REASONS, GatewayError
from registry import (
    MAX_REGISTRY_ID_CHARS,
    Agency,
    AgencyRole,
    Agreement,
    Dataset,
    Purpose,
    Registry,
    ShareClass,
    is_region_code,
    is_registry_id,
    is_valid_citizen_id,
    is_valid_uscc,
)

__all__ = [
    "GRPC_CODES",
    "MAX_CASE_ID_CHARS",
    "MAX_FIELDS",
    "MAX_FIELD_NAME_CHARS",
    "MAX_ID_CHARS",
    "MAX_NAMED_FIELDS",
    "MAX_REQUEST_ID_CHARS",
    "MAX_SUBJECT_ID_CHARS",
    "DataRequest",
    "Decision",
    "PolicyInputError",
    "PurposePolicy",
    "SubjectKind",
    "check_request",
    "grpc_code_for",
    "subject_kind",
]

# Size limits of one request, in characters (Python str length) or items.
MAX_FIELDS = 64  # field names per request
MAX_FIELD_NAME_CHARS = MAX_REGISTRY_ID_CHARS  # characters per field name
MAX_ID_CHARS = MAX_REGISTRY_ID_CHARS  # characters of a dataset or purpose id
MAX_SUBJECT_ID_CHARS = 64  # characters of a subject id (citizen id and USCC are 18)
MAX_CASE_ID_CHARS = MAX_RECORD_TEXT_CHARS  # characters of a case number (办件编号): 128
MAX_REQUEST_ID_CHARS = MAX_RECORD_TEXT_CHARS  # characters of a request id: 128
MAX_NAMED_FIELDS = 5  # refused field names a FIELD_NOT_ALLOWED message lists before "and N more"

_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces (fullmatch)

# The reasons the policy (check_request, decide) and the quota refuse with.
_POLICY_REASONS = (
    "INVALID_ARGUMENT_FORMAT",
    "REQUEST_TOO_LARGE",
    "SUBJECT_ID_INVALID",
    "UNKNOWN_REGION",
    "UNKNOWN_DATASET",
    "UNKNOWN_PURPOSE",
    "NOT_AUTHORISED_ROLE",
    "DATASET_NOT_SHARED",
    "PURPOSE_NOT_APPROVED",
    "NO_AGREEMENT",
    "AGREEMENT_EXPIRED",
    "CASE_ID_REQUIRED",
    "FIELD_NOT_ALLOWED",
    "QUOTA_EXCEEDED",
)
GRPC_CODES: Mapping[str, str] = MappingProxyType(
    {reason: REASONS[reason].code.name for reason in _POLICY_REASONS}
)


def grpc_code_for(reason: str) -> str:
    """The `grpc.StatusCode` name a refusal with this reason is sent with ("OK" for "")."""
    if not reason:
        return "OK"
    return REASONS[reason].code.name


class PolicyInputError(GatewayError):
    """A request whose shape is wrong: too large, malformed, or with repeated fields."""

    def __init__(self, reason: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field  # the request argument at fault ("fields" for any field name)

    @property
    def grpc_code(self) -> str:
        return grpc_code_for(self.reason)


@dataclass(frozen=True, slots=True)
class DataRequest:
    """One query as the caller sent it (`tongban.v1.QueryRequest`), not yet checked."""

    provider_region: str
    dataset: str
    purpose: str
    subject_id: str
    fields: tuple[str, ...]
    case_id: str
    request_id: str
    # The citizen's consent artefact (gateway.consent), for datasets that need one; "" if none.
    consent: str = ""


MAX_CONSENT_CHARS = 8 * 1024  # a consent artefact (gateway.consent.MAX_CONSENT_BYTES)


def _require(value: str, name: str, limit: int, argument: str = "") -> None:
    argument = argument or name
    if not value:
        raise PolicyInputError("INVALID_ARGUMENT_FORMAT", f"{name} is required.", argument)
    if len(value) > limit:
        raise PolicyInputError(
            "REQUEST_TOO_LARGE", f"{name} is longer than {limit} characters.", argument
        )


def check_request(req: DataRequest) -> None:
    """Raise `PolicyInputError` unless every argument of `req` has an acceptable shape.

    Required and non-empty: provider_region (six digits), dataset and purpose (registry ids:
    letters, digits, '.', '_' or '-', starting with a letter), subject_id, request_id (printable
    ASCII, no spaces). case_id may be empty (whether it is needed depends on the dataset, which
    `PurposePolicy` decides) but holds no control characters. fields may be empty (meaning
    "everything the purpose allows"); each is a registry id, and none is repeated. No argument
    but the subject may hold a citizen id: the registry's ids cannot (they start with a
    letter), and a case id or request id that does is refused. Sizes over the limits above are
    REQUEST_TOO_LARGE; the subject id's own format is checked against the dataset by
    `PurposePolicy`. The error names the argument (`field`), never its value.
    """
    _require(req.provider_region, "provider_region", 6)
    if not is_region_code(req.provider_region):
        raise PolicyInputError(
            "INVALID_ARGUMENT_FORMAT",
            "provider_region must be a six-digit GB/T 2260 code.",
            "provider_region",
        )
    for name, value in (("dataset", req.dataset), ("purpose", req.purpose)):
        _require(value, name, MAX_ID_CHARS)
        if not is_registry_id(value):
            raise PolicyInputError(
                "INVALID_ARGUMENT_FORMAT",
                f"{name} must be letters, digits, '.', '_' or '-', starting with a letter.",
                name,
            )
    _require(req.subject_id, "subject_id", MAX_SUBJECT_ID_CHARS)
    _require(req.request_id, "request_id", MAX_REQUEST_ID_CHARS)
    if not is_request_id(req.request_id):
        raise PolicyInputError(
            "INVALID_ARGUMENT_FORMAT",
            "request_id must be printable ASCII without spaces, and hold no citizen id.",
            "request_id",
        )
    if len(req.case_id) > MAX_CASE_ID_CHARS:
        raise PolicyInputError(
            "REQUEST_TOO_LARGE",
            f"case_id is longer than {MAX_CASE_ID_CHARS} characters.",
            "case_id",
        )
    if req.case_id and not is_case_id(req.case_id):
        raise PolicyInputError(
            "INVALID_ARGUMENT_FORMAT",
            "case_id must not contain control characters or a citizen id.",
            "case_id",
        )
    if len(req.consent) > MAX_CONSENT_CHARS:
        raise PolicyInputError(
            "REQUEST_TOO_LARGE",
            f"consent is longer than {MAX_CONSENT_CHARS} characters.",
            "consent",
        )
    if len(req.fields) > MAX_FIELDS:
        raise PolicyInputError(
            "REQUEST_TOO_LARGE", f"more than {MAX_FIELDS} fields requested.", "fields"
        )
    seen: set[str] = set()
    for position, field_name in enumerate(req.fields):
        _require(field_name, f"fields[{position}]", MAX_FIELD_NAME_CHARS, "fields")
        if not is_registry_id(field_name):
            raise PolicyInputError(
                "INVALID_ARGUMENT_FORMAT",
                f"fields[{position}] must be letters, digits, '.', '_' or '-', starting with a "
                "letter.",
                "fields",
            )
        if field_name in seen:
            raise PolicyInputError(
                "INVALID_ARGUMENT_FORMAT",
                f"field {field_name} is requested more than once.",
                "fields",
            )
        seen.add(field_name)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `PurposePolicy.decide`.

    allowed          True only when every rule passed.
    reason           "" when allowed, else the `ErrorInfo.reason` name of the first rule failed.
    message          one sentence for a person; never contains the subject id or case id.
    agreement_id     the agreement the decision rests on: set when allowed, and for the refusals
                     found after an agreement was chosen (CASE_ID_REQUIRED, FIELD_NOT_ALLOWED,
                     QUOTA_EXCEEDED); "" otherwise.
    fields           the fields to return when allowed (the request's, or the purpose's allowed
                     set for the dataset when the request named none); empty when refused.
    registry_version the version of the registry the decision was made from.
    grpc_code        the `grpc.StatusCode` name to answer with ("OK" when allowed).
    quota_per_minute the chosen agreement's quota, for `gateway.quota` (0 with no agreement).
    """

    allowed: bool
    reason: str
    message: str
    agreement_id: str
    fields: frozenset[str]
    registry_version: int
    grpc_code: str
    quota_per_minute: int = 0

    @classmethod
    def allow(
        cls, registry: Registry, agreement: Agreement, fields: frozenset[str], message: str
    ) -> Decision:
        return cls(
            allowed=True,
            reason="",
            message=message,
            agreement_id=agreement.id,
            fields=fields,
            registry_version=registry.version,
            grpc_code="OK",
            quota_per_minute=agreement.quota_per_minute,
        )

    @classmethod
    def deny(
        cls,
        registry_version: int,
        reason: str,
        message: str,
        agreement: Agreement | None = None,
    ) -> Decision:
        return cls(
            allowed=False,
            reason=reason,
            message=message,
            agreement_id=agreement.id if agreement else "",
            fields=frozenset(),
            registry_version=registry_version,
            grpc_code=grpc_code_for(reason),
            quota_per_minute=agreement.quota_per_minute if agreement else 0,
        )


class SubjectKind:
    """How a dataset's records are keyed, decided from its fields (see `subject_kind`)."""

    USCC = "unified social credit code (GB 32100)"
    CITIZEN_ID = "citizen identity number (GB 11643)"
    OTHER = "identifier"


def subject_kind(dataset: Dataset) -> str:
    """A dataset with a `uscc` field is keyed by unified social credit code (legal persons,
    e.g. market.business_licence); otherwise one with a `citizen_id` field is keyed by citizen
    identity number (natural persons); any other dataset by an opaque printable identifier."""
    names = dataset.field_names
    if "uscc" in names:
        return SubjectKind.USCC
    if "citizen_id" in names:
        return SubjectKind.CITIZEN_ID
    return SubjectKind.OTHER


def _subject_valid(kind: str, subject_id: str) -> bool:
    if kind == SubjectKind.USCC:
        return is_valid_uscc(subject_id)
    if kind == SubjectKind.CITIZEN_ID:
        return is_valid_citizen_id(subject_id)
    return _TOKEN_RE.fullmatch(subject_id) is not None


def _choose(candidates: Iterable[Agreement], requester: Agency) -> Agreement:
    """The agreement a decision rests on: one naming the agency itself first, then the one
    valid longest, then the smallest id."""
    return min(
        candidates,
        key=lambda a: (
            requester.id not in a.requester_agencies,
            -a.valid_until.timestamp(),
            a.id,
        ),
    )


def _list(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:MAX_NAMED_FIELDS])
    more = len(names) - MAX_NAMED_FIELDS
    return f"{shown} and {more} more" if more > 0 else shown


class PurposePolicy:
    """Decides whether a requester may see a dataset's fields for a purpose.

    `decide` applies these rules in order and refuses at the first that fails:

    | #  | rule                                                              | refusal                 |
    |----|-------------------------------------------------------------------|-------------------------|
    | 0  | the request is well formed (`check_request`)                      | INVALID_ARGUMENT_FORMAT |
    |    |                                                                   | REQUEST_TOO_LARGE       |
    | 1  | the provider region is in the registry                            | UNKNOWN_REGION          |
    | 2  | the dataset is in that region's catalogue                         | UNKNOWN_DATASET         |
    | 3  | the purpose is in the registry                                    | UNKNOWN_PURPOSE         |
    | 4  | the requesting agency is in this registry with the `requester` role | NOT_AUTHORISED_ROLE   |
    | 5  | the subject id is valid for the dataset (`subject_kind`)          | SUBJECT_ID_INVALID      |
    | 6  | the dataset is not 不予共享, whatever any purpose or agreement says | DATASET_NOT_SHARED      |
    | 7  | the purpose covers the dataset (and allows at least one field)    | PURPOSE_NOT_APPROVED    |
    | 8a | the request crosses regions, and some agreement links the         | NO_AGREEMENT            |
    |    | provider region with the agency or its region (at any time)       |                         |
    | 8b | one of those names the purpose                                    | PURPOSE_NOT_APPROVED    |
    | 8c | one of those is in force at `at` (valid_from <= at < valid_until) | AGREEMENT_EXPIRED       |
    | 9  | 有条件共享 data: the case id is not empty                          | CASE_ID_REQUIRED        |
    | 10 | every requested field is allowed to the purpose for the dataset   | FIELD_NOT_ALLOWED       |

    8a/8b follow the contract's wording (common.proto): NO_AGREEMENT when nothing at all links
    the requester and the provider region, PURPOSE_NOT_APPROVED when agreements link them but
    none for this purpose. AGREEMENT_EXPIRED covers not-yet-valid agreements too. A query to
    the requester's own region does not cross regions: it is out of this gateway's scope and
    refused with NO_AGREEMENT, whatever agreements say.

    When several agreements are in force, the decision rests on one, chosen deterministically:
    one naming the agency itself before one naming its whole region (the more specific grant),
    then the one valid longest (latest valid_until), then the smallest id. Its id is returned
    and its quota is the one counted.

    An empty field list means the purpose's allowed set for the dataset (restricted to fields
    the dataset has). The registry's own freshness (REGISTRY_STALE) is the store's concern:
    pass the registry `RegistryStore.current()` returned.
    """

    def decide(
        self, registry: Registry, *, requester: Agency, request: DataRequest, at: datetime
    ) -> Decision:
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("decide needs a timezone-aware time")
        try:
            check_request(request)
        except PolicyInputError as exc:
            return Decision.deny(registry.version, exc.reason, exc.message)
        return self.decide_checked(registry, requester=requester, request=request, at=at)

    def decide_checked(
        self, registry: Registry, *, requester: Agency, request: DataRequest, at: datetime
    ) -> Decision:
        """`decide` for a request whose shape `check_request` has passed already (the query
        path checks it once, before the replay window, and refuses it with the argument).

        The rules of the table, in order, in five steps, each refusing at its first failure:
        what the request names (1-3), the requester as this registry has it (4), the subject
        and the dataset for the purpose (5-7), the agreement (8a-8c), and what the request asks
        of it (9-10)."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("decide needs a timezone-aware time")
        named = _find_named(registry, request)  # 1-3
        if isinstance(named, Decision):
            return named
        dataset, purpose = named
        current = _registered_requester(registry, requester)  # 4
        if isinstance(current, Decision):
            return current
        allowed_fields = _fields_for_purpose(registry, request, dataset, purpose)  # 5-7
        if isinstance(allowed_fields, Decision):
            return allowed_fields
        agreement = _agreement_in_force(registry, current, request, purpose, at)  # 8a-8c
        if isinstance(agreement, Decision):
            return agreement
        return _grant(  # 9-10
            registry, request, dataset, purpose, allowed_fields=allowed_fields, agreement=agreement
        )


def _find_named(registry: Registry, request: DataRequest) -> tuple[Dataset, Purpose] | Decision:
    """Rules 1 to 3: the provider region, its dataset and the purpose are in the registry."""
    version = registry.version
    region_code = request.provider_region
    if registry.region(region_code) is None:  # 1
        return Decision.deny(
            version, "UNKNOWN_REGION", f"Region {region_code} is not in the registry."
        )
    dataset = registry.dataset(region_code, request.dataset)
    if dataset is None:  # 2
        return Decision.deny(
            version,
            "UNKNOWN_DATASET",
            f"Region {region_code} publishes no dataset {request.dataset}.",
        )
    purpose = registry.purpose(request.purpose)
    if purpose is None:  # 3
        return Decision.deny(
            version, "UNKNOWN_PURPOSE", f"Purpose {request.purpose} is not in the registry."
        )
    return dataset, purpose


def _registered_requester(registry: Registry, requester: Agency) -> Agency | Decision:
    """Rule 4: the requester as this registry has it, with the requester role (roles as the
    registry has them, not as the caller's Agency object was made)."""
    current = registry.agency(requester.id)
    if current is None or not current.has_role(AgencyRole.REQUESTER):
        return Decision.deny(
            registry.version,
            "NOT_AUTHORISED_ROLE",
            f"Agency {requester.id} does not hold the requester role in registry "
            f"version {registry.version}.",
        )
    return current


def _fields_for_purpose(
    registry: Registry, request: DataRequest, dataset: Dataset, purpose: Purpose
) -> frozenset[str] | Decision:
    """Rules 5 to 7: the subject id fits the dataset, the dataset is shared, and the purpose
    covers it; the fields the purpose allows of the dataset."""
    version = registry.version
    kind = subject_kind(dataset)
    if not _subject_valid(kind, request.subject_id):  # 5
        return Decision.deny(
            version,
            "SUBJECT_ID_INVALID",
            f"The subject id is not a valid {kind} for dataset {dataset.id}.",
        )
    if dataset.share_class is ShareClass.NOT_SHARED:  # 6
        return Decision.deny(
            version,
            "DATASET_NOT_SHARED",
            f"Dataset {dataset.id} of region {request.provider_region} is not shared (不予共享).",
        )
    allowed_fields = (purpose.allowed_fields(dataset.id) or frozenset()) & dataset.field_names
    if not allowed_fields:  # 7
        return Decision.deny(
            version,
            "PURPOSE_NOT_APPROVED",
            f"Purpose {purpose.id} does not cover dataset {dataset.id}.",
        )
    return allowed_fields


def _agreement_in_force(
    registry: Registry, requester: Agency, request: DataRequest, purpose: Purpose, at: datetime
) -> Agreement | Decision:
    """Rules 8a to 8c: the agreement the decision rests on (`_choose`)."""
    version = registry.version
    region_code = request.provider_region
    if requester.region == region_code:  # 8a, same region
        return Decision.deny(
            version,
            "NO_AGREEMENT",
            f"A query from region {requester.region} to its own region does not cross "
            "regions and is out of this gateway's scope.",
        )
    linked = [a for a in registry.agreements_for(region_code) if a.names_requester(requester)]
    if not linked:  # 8a
        return Decision.deny(
            version,
            "NO_AGREEMENT",
            f"No agreement links agency {requester.id} or region {requester.region} "
            f"with provider region {region_code}.",
        )
    for_purpose = [a for a in linked if purpose.id in a.purposes]
    if not for_purpose:  # 8b
        return Decision.deny(
            version,
            "PURPOSE_NOT_APPROVED",
            f"No agreement with provider region {region_code} approves purpose "
            f"{purpose.id} for agency {requester.id}.",
        )
    in_force = [a for a in for_purpose if a.in_force(at)]
    if not in_force:  # 8c
        ids = ", ".join(sorted(a.id for a in for_purpose))
        return Decision.deny(
            version,
            "AGREEMENT_EXPIRED",
            f"No agreement for purpose {purpose.id} with provider region {region_code} "
            f"is in force at {at:%Y-%m-%dT%H:%M:%S%z} (outside its window: {ids}).",
        )
    return _choose(in_force, requester)


def _grant(
    registry: Registry,
    request: DataRequest,
    dataset: Dataset,
    purpose: Purpose,
    *,
    allowed_fields: frozenset[str],
    agreement: Agreement,
) -> Decision:
    """Rules 9 and 10, on the chosen agreement: a case id where the dataset needs one, and
    only allowed fields; the allow decision when both hold."""
    version = registry.version
    if dataset.share_class is ShareClass.CONDITIONAL and not request.case_id:  # 9
        return Decision.deny(
            version,
            "CASE_ID_REQUIRED",
            f"Dataset {dataset.id} is shared on condition (有条件共享): a case id is required.",
            agreement,
        )
    refused = [f for f in request.fields if f not in allowed_fields]
    if refused:  # 10
        return Decision.deny(
            version,
            "FIELD_NOT_ALLOWED",
            f"Purpose {purpose.id} may not see field(s) {_list(refused)} of dataset {dataset.id}.",
            agreement,
        )
    fields = frozenset(request.fields) if request.fields else allowed_fields
    return Decision.allow(
        registry,
        agreement,
        fields,
        f"Allowed under agreement {agreement.id} for purpose {purpose.id}.",
    )
