"""The monitoring configuration: Prometheus alert rules, their promtool unit tests, the Grafana
dashboard and docs/monitoring.md stay valid and on the metric contract.

promtool comes from Debian's `prometheus` package, which `make promtool` (and so `make test`)
installs; without it these tests fail, they do not skip.

The rule files are YAML and PyYAML is not a dependency: `_MiniYaml` reads the small subset the two
files are written in and refuses anything else, and `test_parsed_rules_match_promtool` proves the
reading faithful by giving promtool the parsed files back as JSON and running the unit tests on
them (every alert's labels and annotations are compared there).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.metrics import grpc_code_name

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "conf" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "conf" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "conf" / "grafana" / "tongban.json"
DOCS = ROOT / "docs" / "monitoring.md"

# The metric contract (docs/monitoring.md, "Metrics"); `up` is Prometheus' own.
CONTRACT_METRICS = frozenset(
    {
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "grpc_client_started_total",
        "grpc_client_handled_total",
        "grpc_client_handling_seconds_bucket",
        "tongban_cache_lookups_total",
        "tongban_cache_circuit_open",
        "tongban_authorisation_decisions_total",
        "tongban_seal_verifications_total",
        "tongban_audit_appends_total",
        "tongban_audit_append_failures_total",
        "tongban_audit_checkpoint_size",
        "tongban_audit_checkpoint_timestamp_seconds",
        "tongban_registry_version",
        "tongban_registry_root_version",  # extends the contract (issue 17: k-of-n trusted root)
        "tongban_registry_issued_timestamp_seconds",
        "tongban_registry_expiry_timestamp_seconds",
        "tongban_registry_refused_total",
        "tongban_quota_rejections_total",
        "tongban_peer_calls_total",
        "tongban_certificate_expiry_timestamp_seconds",
        "tongban_certificate_not_before_timestamp_seconds",
        "tongban_access_reports_waiting",  # extends the contract (issue 14: the outbox)
        "tongban_revocation_checks_total",  # extends the contract (issue 17: OCSP and CRL DP)
        "tongban_revocation_fetch_seconds_bucket",
        "tongban_witness_forks_total",  # extends the contract (issue 18: witnessed logs)
        "tongban_timestamp_requests_total",  # extends the contract (issue 18: time-stamps)
        "tongban_cases_overdue",  # extends the contract (issue 19: cases)
        "tongban_case_delivery_backlog",
        "tongban_case_deliveries_total",
        "tongban_case_events_total",
    }
)
PROMETHEUS_METRICS = frozenset({"up"})
CONTRACT_LABELS = frozenset(
    {
        "job",
        "instance",
        "region",
        "grpc_type",
        "grpc_service",
        "grpc_method",
        "grpc_code",
        "peer_region",
        "le",
        "result",
        "source",
        "outcome",
        "reason",
        "indication",
        "sub_indication",
        "agreement",
        "code",
        "kid",
        "usage",
        "owner",
        "log",
        "matter",  # the case metrics (issue 19)
        "kind",
        "made",
    }
)
# gRPC code names as the Go exporter writes them (codes.Code.String()): the grpc_code contract.
GRPC_CODES = frozenset(
    {
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    }
)
PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


# --- a YAML subset reader ------------------------------------------------------------------------


class _MiniYaml:
    """Block mappings and sequences, plain and quoted scalars (all read as strings), `|` and `>`
    block scalars (with `-` chomping), empty `[]` and `{}`, and comments. Anything else raises."""

    KEY = re.compile(r"([A-Za-z_][\w.\-]*):(?:\s+(.*))?$")
    SINGLE = re.compile(r"'((?:[^']|'')*)'\s*(?:#.*)?")
    DOUBLE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*(?:#.*)?')

    def __init__(self, text: str, name: str) -> None:
        self.lines = text.splitlines()
        self.name = name
        self.i = 0

    def error(self, why: str) -> ValueError:
        return ValueError(f"{self.name}:{self.i + 1}: {why} (not in the YAML subset read here)")

    def peek(self) -> tuple[int, str] | None:
        """(indentation, content) of the next line that is not blank or a comment."""
        while self.i < len(self.lines):
            line = self.lines[self.i]
            content = line.strip()
            if content and not content.startswith("#"):
                if "\t" in line[: len(line) - len(line.lstrip())]:
                    raise self.error("a tab in the indentation")
                return len(line) - len(line.lstrip(" ")), content
            self.i += 1
        return None

    @staticmethod
    def is_item(content: str) -> bool:
        return content == "-" or content.startswith("- ")

    def parse(self) -> Any:
        first = self.peek()
        if first is None:
            return None
        value = self.node(first[0])
        if self.peek() is not None:
            raise self.error("unexpected indentation")
        return value

    def node(self, indent: int) -> Any:
        line = self.peek()
        assert line is not None
        return self.sequence(indent) if self.is_item(line[1]) else self.mapping(indent)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (line := self.peek()) and line[0] == indent and self.is_item(line[1]):
            rest = line[1][1:].lstrip()
            if not rest:
                self.i += 1
                child = self.peek()
                if child is None or child[0] <= indent:
                    raise self.error("an empty sequence item")
                items.append(self.node(child[0]))
            elif self.KEY.match(rest):  # "- key: value": a mapping starting on the item's line
                column = indent + len(line[1]) - len(rest)
                self.lines[self.i] = " " * column + rest
                items.append(self.mapping(column))
            else:
                self.i += 1
                items.append(self.scalar(rest))
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while (line := self.peek()) and line[0] == indent and not self.is_item(line[1]):
            match = self.KEY.match(line[1])
            if match is None:
                raise self.error("not a `key: value` line")
            key, rest = match.group(1), match.group(2) or ""
            if key in result:
                raise self.error(f"duplicate key {key}")
            self.i += 1
            if rest in ("|", "|-", ">", ">-"):
                result[key] = self.block(indent, rest)
            elif not rest or rest.startswith("#"):
                child = self.peek()
                nested = child is not None and (
                    child[0] > indent or (child[0] == indent and self.is_item(child[1]))
                )
                result[key] = self.node(child[0]) if nested and child else None
            else:
                result[key] = self.scalar(rest)
        return result

    def block(self, parent: int, style: str) -> str:
        raw: list[str] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() and len(line) - len(line.lstrip(" ")) <= parent:
                break
            raw.append(line)
            self.i += 1
        while raw and not raw[-1].strip():
            raw.pop()
        if not raw:
            return ""
        first = next(line for line in raw if line.strip())
        indent = len(first) - len(first.lstrip(" "))
        body: list[str] = []
        for line in raw:
            if line.strip() and len(line) - len(line.lstrip(" ")) < indent:
                raise self.error("a block scalar line indented less than its first line")
            body.append(line[indent:] if line.strip() else "")
        if style.startswith("|"):
            text = "\n".join(body)
        else:
            if any(line.startswith(" ") for line in body):
                raise self.error("a more-indented line in a folded scalar")
            paragraphs: list[str] = []
            current: list[str] = []
            for line in body:
                if line:
                    current.append(line)
                else:
                    paragraphs.append(" ".join(current))
                    current = []
            paragraphs.append(" ".join(current))
            text = "\n".join(paragraphs)
        return text if style.endswith("-") else text + "\n"

    def scalar(self, text: str) -> Any:
        if text == "[]":
            return []
        if text == "{}":
            return {}
        if text.startswith("'"):
            match = self.SINGLE.fullmatch(text)
            if match is None:
                raise self.error("an unterminated single-quoted scalar")
            return match.group(1).replace("''", "'")
        if text.startswith('"'):
            match = self.DOUBLE.fullmatch(text)
            if match is None:
                raise self.error("an unterminated double-quoted scalar")
            return json.loads(f'"{match.group(1)}"')
        if text[0] in "[{&*!|>%@`":
            raise self.error(f"a scalar starting with {text[0]!r}")
        return re.split(r"\s+#", text, maxsplit=1)[0].rstrip()


def read_yaml(path: Path) -> Any:
    return _MiniYaml(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))).parse()


def test_mini_yaml_reads_the_subset() -> None:
    text = """
# comment
a: plain value  # trailing comment
b: 'it''s # not a comment'
c: "tab\\t and \\"quotes\\""
d: |
  line one
    indented
e: >-
  folded
  together

  new paragraph
f: []
g:
- x
-   y: 1
    z: 2
h:
  - k: v
"""
    assert _MiniYaml(text, "t").parse() == {
        "a": "plain value",
        "b": "it's # not a comment",
        "c": 'tab\t and "quotes"',
        "d": "line one\n  indented\n",
        "e": "folded together\nnew paragraph",
        "f": [],
        "g": ["x", {"y": "1", "z": "2"}],
        "h": [{"k": "v"}],
    }
    for bad in ("a: [1, 2]", "a: b\n  c: d", "a: 1\na: 2", "a: 'open", "- x\ny: 1"):
        with pytest.raises(ValueError, match="YAML subset"):
            _MiniYaml(bad, "t").parse()


# --- promtool ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run `make promtool` (it installs Debian's prometheus "
            "package; `make test` does it too)",
            pytrace=False,
        )
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, check=False, cwd=ROOT
    )


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = read_yaml(RULES)
    groups = document["groups"]
    assert [g["name"] for g in groups] == ["tongban"]
    found: list[dict[str, Any]] = groups[0]["rules"]
    return found


@pytest.fixture(scope="module")
def alerts(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    named = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert len(named) == len(rules), "alert names are unique, and the file holds alerts only"
    return named


@pytest.fixture(scope="module")
def rule_tests() -> dict[str, Any]:
    document: dict[str, Any] = read_yaml(RULE_TESTS)
    return document


def test_promtool_check_rules(promtool: str, rules: list[dict[str, Any]]) -> None:
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_parsed_rules_match_promtool(
    promtool: str, tmp_path: Path, rules: list[dict[str, Any]], rule_tests: dict[str, Any]
) -> None:
    """promtool reads the rules and tests as this module parsed them, and they still pass."""
    rules_json = tmp_path / "alerts.json"
    rules_json.write_text(json.dumps({"groups": [{"name": "tongban", "rules": rules}]}))
    tests_json = tmp_path / "alerts_test.json"
    tests_json.write_text(json.dumps({**rule_tests, "rule_files": [str(rules_json)]}))
    checked = run(promtool, "check", "rules", rules_json)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
    tested = run(promtool, "test", "rules", tests_json)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- the rules ----------------------------------------------------------------------------------------


def test_every_alert_is_labelled_and_explained(alerts: dict[str, dict[str, Any]]) -> None:
    assert alerts
    for name, rule in alerts.items():
        assert name.startswith("Tongban"), name
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key} annotation"
        assert annotations["runbook"] == f"docs/monitoring.md#{name.lower()}", name


def test_every_alert_is_in_the_docs_with_its_own_section(alerts: dict[str, dict[str, Any]]) -> None:
    docs = DOCS.read_text(encoding="utf-8")
    headings = set(re.findall(r"^### (\S+)\s*$", docs, flags=re.MULTILINE))
    for name in alerts:
        assert name in docs, f"{name} is not in docs/monitoring.md"
        assert name in headings, f"docs/monitoring.md has no `### {name}` section (the runbook)"


def test_every_alert_has_a_firing_and_a_quiet_case(
    alerts: dict[str, dict[str, Any]], rule_tests: dict[str, Any]
) -> None:
    assert rule_tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in rule_tests["tests"]:
        assert case.get("interval") == "1m", "samples 1 minute apart (see the file's header)"
        for check in case.get("alert_rule_test") or []:
            assert check["alertname"] in alerts, f"a test of an unknown alert {check['alertname']}"
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts) - fires == set(), "alerts never seen firing"
    assert set(alerts) - quiet == set(), "alerts never seen quiet"


def test_rule_expressions_use_the_contract(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        check_expression(rule["expr"], rule.get("alert", "?"))


def test_every_contract_metric_is_documented() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    for name in CONTRACT_METRICS:
        assert f"`{name}`" in docs, f"{name} is not described in docs/monitoring.md"
    for code in GRPC_CODES:
        assert f"`{code}`" in docs, f"the gRPC code {code} is not in docs/monitoring.md"


# --- PromQL, read closely enough to find names ----------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*(\"(?:[^\"\\]|\\.)*\")")


def promql_parts(expr: str) -> tuple[set[str], set[str], list[tuple[str, str, str]]]:
    """(metric names, label names, label matchers) of a PromQL expression; Grafana variables
    (`$region`, `${x}`, `$__rate_interval`) are taken out first."""
    matchers = [(m[0], m[1], json.loads(m[2])) for m in _MATCHER.findall(expr)]
    labels = {m[0] for m in matchers}
    text = re.sub(r"\$\{?\w+\}?", "", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    for grouping in _GROUPING.findall(text):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    names = {name for name in _IDENTIFIER.findall(text) if name.lower() not in PROMQL_KEYWORDS}
    return names, labels, matchers


def check_expression(expr: str, where: str) -> None:
    names, labels, matchers = promql_parts(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - CONTRACT_METRICS - PROMETHEUS_METRICS
    assert not unknown, f"{where}: metrics not in the contract: {sorted(unknown)}"
    unknown_labels = labels - CONTRACT_LABELS
    assert not unknown_labels, f"{where}: labels not in the contract: {sorted(unknown_labels)}"
    for label, op, value in matchers:
        if label != "grpc_code" and label != "code":
            continue
        spelled = set(value.split("|")) if op in ("=~", "!~") else {value}
        assert spelled <= GRPC_CODES, (
            f"{where}: {label} values {sorted(spelled - GRPC_CODES)} are not gRPC code names "
            "as the contract spells them (CamelCase, like OK, Unavailable)"
        )


def test_promql_parts() -> None:
    names, labels, matchers = promql_parts(
        'histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{job="tongban", region=~"$region"}[$__rate_interval])))'
        " / on (instance) group_left () max(up) > 30 * 86400 and time() - x_total offset 5m"
    )
    assert names == {"grpc_server_handling_seconds_bucket", "up", "x_total"}
    assert labels == {"le", "grpc_method", "job", "region", "instance"}
    assert matchers == [("job", "=", "tongban"), ("region", "=~", "$region")]
    with pytest.raises(AssertionError, match="not in the contract"):
        check_expression("rate(grpc_server_handling_seconds_count[5m])", "t")
    with pytest.raises(AssertionError, match="not gRPC code names"):
        check_expression('grpc_server_handled_total{grpc_code=~"OK|UNAVAILABLE"}', "t")


# --- the dashboard -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    return found


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "tongban-gateway"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36  # Grafana 10 writes 37 to 39
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    region = variables["region"]
    assert region["type"] == "query"
    assert region["query"] == "label_values(tongban_registry_version, region)"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
            metric = re.fullmatch(
                r"label_values\((\w+)(?:\{[^}]*\})?,\s*(\w+)\)", variable["query"]
            )
            assert metric, variable["query"]
            assert metric[1] in CONTRACT_METRICS, variable["query"]
            assert metric[2] in CONTRACT_LABELS, variable["query"]


def test_every_panel_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard):
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource") == DATASOURCE, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']}: no query"


def test_no_hard_coded_datasource(dashboard: dict[str, Any]) -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            source = node.get("datasource")
            if isinstance(source, dict):
                assert source.get("uid") == "${datasource}", path
            elif source is not None:
                assert source == "${datasource}", path
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(dashboard, "$")
    assert "__inputs" not in dashboard


def test_dashboard_expressions_use_the_contract(dashboard: dict[str, Any]) -> None:
    found = expressions(dashboard)
    assert found
    for where, expr in found:
        check_expression(expr, where)
        assert 'region=~"$region"' in expr, f"{where}: not filtered by $region"


def test_dashboard_expressions_are_valid_promql(
    promtool: str, tmp_path: Path, dashboard: dict[str, Any]
) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule promtool checks."""
    fill = {"$__rate_interval": "5m", "$region": ".*", "$instance": ".*"}
    rules = []
    for i, (_, expr) in enumerate(expressions(dashboard)):
        filled = expr
        for variable, value in fill.items():
            filled = filled.replace(variable, value)
        assert "$" not in filled, filled
        rules.append({"record": f"tongban:dashboard:query{i}", "expr": filled})
    path = tmp_path / "dashboard_rules.json"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_has_the_panels_on_call_needs(dashboard: dict[str, Any]) -> None:
    queries = "\n".join(expr for _, expr in expressions(dashboard))
    for needed in (
        "by (grpc_method, grpc_code) (rate(grpc_server_handled_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket",
        "tongban_peer_calls_total",
        'tongban_cache_lookups_total{job="tongban", region=~"$region", instance=~"$instance", result="hit"}',
        'tongban_cache_lookups_total{job="tongban", region=~"$region", instance=~"$instance", result=~"hit|miss"}',
        'outcome="denied"',
        "time() - tongban_audit_checkpoint_timestamp_seconds",
        "tongban_audit_append_failures_total",
        "tongban_registry_version",
        "time() - tongban_registry_issued_timestamp_seconds",
    ):
        assert needed in queries, f"no dashboard query has {needed!r}"
    tables = [panel for panel in all_panels(dashboard) if panel["type"] == "table"]
    certificates = [
        panel
        for panel in tables
        if "tongban_certificate_expiry_timestamp_seconds" in panel["targets"][0]["expr"]
    ]
    assert len(certificates) == 1
    (target,) = certificates[0]["targets"]
    assert target["expr"].startswith("sort(")  # ascending: soonest expiry first
    assert "- time()) / 86400" in target["expr"]
    assert target["instant"] is True
    assert target["format"] == "table"
    sort = [t for t in certificates[0]["transformations"] if t["id"] == "sortBy"]
    assert sort
    assert sort[0]["options"]["sort"] == [{"field": "days to expiry", "desc": False}]


def test_the_gateway_spells_grpc_code_as_the_contract() -> None:
    assert {grpc_code_name(code) for code in grpc.StatusCode} == GRPC_CODES
