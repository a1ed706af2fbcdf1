"""The one table from reason to gRPC status (`gateway.errors.REASONS`): one entry per reason of
the contract's ErrorReason enum, the codes docs/integrating.md's error table gives, the few
documented overrides, and every exception class of the gateway in the `GatewayError` tree."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections import defaultdict
from pathlib import Path

import grpc
import pytest

import gateway
from gateway.errors import (
    FAILURE_CODES,
    OVERRIDES,
    PLAIN_MESSAGES,
    REASONS,
    CallerRejected,
    GatewayError,
    Refusal,
    status_code,
    status_of,
)
from gateway.policy import GRPC_CODES, grpc_code_for
from gateway.reports import BatchRefused
from tongban.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[3]
DOCS_TABLE = ROOT / "docs" / "integrating.md"
ERRORS_SOURCE = ROOT / "gateway" / "errors.py"
# The CLI (gateway/cli.py, being split into a package elsewhere) is left out until then.


def contract_reasons() -> set[str]:
    return set(common_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}


def docs_codes() -> dict[str, set[grpc.StatusCode]]:
    """reason -> the status codes docs/integrating.md's table "Errors, and which to retry"
    lists it with."""
    text = DOCS_TABLE.read_text(encoding="utf-8")
    section = text.split("### Errors, and which to retry", 1)[1]
    found: dict[str, set[grpc.StatusCode]] = defaultdict(set)
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        code = grpc.StatusCode[cells[0].strip("`")]
        for reason in re.findall(r"`([A-Z_]+)`", cells[1]):
            found[reason].add(code)
    return dict(found)


def test_every_contract_reason_has_exactly_one_entry() -> None:
    assert set(REASONS) == contract_reasons()
    # A dict literal keeps the last of two equal keys without a word: count them in the source.
    tree = ast.parse(ERRORS_SOURCE.read_text(encoding="utf-8"))
    (table,) = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "REASONS"
    ]
    assert isinstance(table, ast.Call)
    (literal,) = table.args
    assert isinstance(literal, ast.Dict)
    keys = [k.value for k in literal.keys if isinstance(k, ast.Constant)]
    assert len(keys) == len(set(keys)) == len(contract_reasons())


def test_the_table_says_what_the_docs_table_says() -> None:
    documented = docs_codes()
    assert set(documented) == contract_reasons(), set(documented) ^ contract_reasons()
    for reason, codes in documented.items():
        overridden = {code for (r, code) in OVERRIDES if r == reason}
        assert codes == {REASONS[reason].code} | overridden, reason


def test_an_override_is_another_code_than_the_tables() -> None:
    for reason, code in OVERRIDES:
        assert code != REASONS[reason].code, reason
        assert OVERRIDES[(reason, code)], reason  # says where, and why


def test_the_policy_reads_its_codes_from_the_table() -> None:
    for reason, name in GRPC_CODES.items():
        assert name == REASONS[reason].code.name
        assert grpc_code_for(reason) == name
    assert grpc_code_for("") == "OK"


def test_the_plain_sentences_are_the_tables() -> None:
    assert {r: e.plain for r, e in REASONS.items()} == dict(PLAIN_MESSAGES)


@pytest.mark.parametrize("reason", sorted(contract_reasons()))
def test_a_refusal_is_sent_with_its_reasons_code(reason: str) -> None:
    refusal = Refusal(reason, "why")
    assert refusal.code is status_code(reason) is REASONS[reason].code
    assert refusal.failed is (refusal.code in FAILURE_CODES)
    status = status_of(refusal)
    assert status.code == REASONS[reason].code.value[0]


def test_a_refusal_takes_only_a_documented_override() -> None:
    (reason, code), *_ = OVERRIDES
    assert Refusal(reason, "why", code=code).code is code
    assert Refusal("SEAL_INVALID", "why", code=grpc.StatusCode.DATA_LOSS).code is (
        grpc.StatusCode.DATA_LOSS
    )
    with pytest.raises(ValueError, match="OVERRIDES"):
        Refusal("SEAL_INVALID", "why", code=grpc.StatusCode.NOT_FOUND)
    with pytest.raises(ValueError, match="not a reason"):
        Refusal("MADE_UP", "why")
    # A status another party chose is passed on as it came.
    passed = Refusal.passed_on(grpc.StatusCode.NOT_FOUND, "UNKNOWN_DATASET", "region 330000: x")
    assert passed.code is grpc.StatusCode.NOT_FOUND
    assert not passed.failed


def test_the_refusals_of_other_modules_read_the_table() -> None:
    assert CallerRejected("UNKNOWN_REGION", "x").code is grpc.StatusCode.UNAUTHENTICATED
    assert CallerRejected("CERTIFICATE_NOT_TRUSTED", "x").code is grpc.StatusCode.UNAUTHENTICATED
    assert CallerRejected("REGISTRY_STALE", "x").code is grpc.StatusCode.UNAVAILABLE
    refused = BatchRefused("REPORT_SIGNATURE_INVALID", "x", 3)
    assert (refused.code, refused.index) == (grpc.StatusCode.UNAUTHENTICATED, 3)


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if module.name.endswith(".__main__"):
            continue  # running it is running the command line
        loaded = importlib.import_module(module.name)
        for value in vars(loaded).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("gateway.")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_exception_of_the_gateway_is_in_the_tree() -> None:
    classes = _exception_classes()
    assert len(classes) > 20
    outside = {name for name, cls in classes.items() if not issubclass(cls, GatewayError)}
    assert not outside
