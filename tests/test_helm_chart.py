"""The Helm chart in helm/lockgate, checked against the code it deploys.

No helm binary is needed: the chart's files are read as YAML and text and held against the
settings struct, the app's health routes, the server's default ports and its shutdown
budget, so a change on either side that leaves them apart fails here. Where a renderer is
at hand (`helm` on PATH, or the helm-python-sdk package), the chart is also rendered and the
rendered environment and TOML go through the server's own settings loader and app factory.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import math
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from lockgate_server import limits
from lockgate_server.api.app import create_app
from lockgate_server.settings import ENV_PREFIX, ApiKey, Settings, load_settings
from lockgate_server.storage.embedded import EmbeddedValkey

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "lockgate"
TEMPLATES = CHART / "templates"
STATEFULSET = TEMPLATES / "statefulset.yaml"
HELPERS = TEMPLATES / "_helpers.tpl"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"
POD_IP = "10.1.2.3"  # what the downward API would give the pod
"""Not a field: load_settings reads the TOML file it names (checked below)."""

VARIABLE = re.compile(r"\bLOCKGATE_[A-Z0-9_]+\b")
KEY = ApiKey(sha256="0" * 64, namespaces=["*"], rights=["admin"], name="chart-test")


def setting_variables() -> dict[str, str]:
    """LOCKGATE_* variable -> Settings field, the way load_settings looks them up."""
    return {f"{ENV_PREFIX}{field.name.upper()}": field.name for field in msgspec.structs.fields(Settings)}


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def managed_settings() -> list[str]:
    """The settings the chart sets through the environment (lockgate.managedSettings)."""
    block = re.search(r'define "lockgate\.managedSettings".*?list ((?:"\w+" ?)+)', HELPERS.read_text(), re.S)
    assert block, "lockgate.managedSettings not found in _helpers.tpl"
    return re.findall(r'"(\w+)"', block.group(1))


def probes(template: str) -> dict[str, tuple[str, str]]:
    """probe kind -> (httpGet path, port) as written in the StatefulSet template."""
    found = re.findall(r"(\w+Probe):\s*\n\s*httpGet:\s*\n\s*path: (\S+)\s*\n\s*port: (\S+)", template)
    return {kind: (path, port) for kind, path, port in found}


def get(app: Any, path: str) -> httpx.Response:
    """One request to the ASGI app without its lifespan: the engine is not running."""

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pod") as client:
            return await client.get(path)

    return asyncio.run(call())


# --- the chart's files -----------------------------------------------------------------------


def test_chart_metadata_matches_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "lockgate"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == project["version"], "the image tag defaults to appVersion: keep it the server's"


def test_values_config_is_settings_the_chart_does_not_set_itself() -> None:
    config = values()["config"]
    msgspec.convert(config, Settings)  # the server would refuse an unknown key or a bad value at start
    assert not set(config) & set(managed_settings())


def test_setting_variables_are_what_load_settings_reads(tmp_path: Path) -> None:
    assert load_settings(environ={f"{ENV_PREFIX}PORT": "9999"}).port == 9999
    settings_file = tmp_path / "lockgate.toml"
    settings_file.write_text('log_level = "debug"\nmax_wait_ms = 1234\n')
    from_file = load_settings(environ={CONFIG_VARIABLE: str(settings_file)})
    assert (from_file.log_level, from_file.max_wait_ms) == ("debug", 1234)


def test_every_lockgate_variable_in_the_chart_is_a_setting() -> None:
    known = set(setting_variables()) | {CONFIG_VARIABLE}
    used: dict[str, set[str]] = {}
    for path in [*sorted(p for p in CHART.rglob("*") if p.is_file()), DOCKERFILE]:
        for name in VARIABLE.findall(path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    unknown = {name: sorted(paths) for name, paths in used.items() if name not in known}
    assert not unknown, f"not fields of Settings: {unknown}"
    assert {f"{ENV_PREFIX}{name}" for name in ("HOST", "PORT", "API_KEYS", "REDIS_URL", "GRPC_PORT")} <= set(used)


def test_the_chart_sets_exactly_the_settings_it_keeps_out_of_config() -> None:
    fields = set(setting_variables().values())
    managed = managed_settings()
    assert set(managed) <= fields, f"lockgate.managedSettings names no setting: {set(managed) - fields}"
    set_by_template = set(re.findall(r"- name: (LOCKGATE_\w+)", STATEFULSET.read_text()))
    assert set_by_template - {CONFIG_VARIABLE} == {f"{ENV_PREFIX}{name.upper()}" for name in managed}


def test_probes_hit_the_apps_health_routes() -> None:
    found = probes(STATEFULSET.read_text())
    assert set(found) == {"startupProbe", "livenessProbe", "readinessProbe"}
    assert {port for _, port in found.values()} == {"http"}
    # The chart's own configuration: off loopback, with a key. The health routes need none.
    app = create_app(Settings(host=values()["listenHost"], api_keys=[KEY]))
    # Liveness must not hang on the store (a Redis blip would restart the pod): 200 with no engine.
    for kind in ("startupProbe", "livenessProbe"):
        assert get(app, found[kind][0]).status_code == 200, kind
    # Readiness must: with no engine running it says not ready.
    readiness = get(app, found["readinessProbe"][0])
    assert readiness.status_code == 503
    assert readiness.json()["ready"] is False
    for path in set(re.findall(r"path: (/\S+)", (TEMPLATES / "servicemonitor.yaml").read_text())) | set(
        re.findall(r"prometheus\.io/path: (\S+)", STATEFULSET.read_text())
    ):
        scraped = get(app, path)
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain"), path


def test_ports_match_the_servers_defaults() -> None:
    chart_values = values()
    defaults = Settings()
    assert chart_values["ports"] == {"http": defaults.port, "grpc": defaults.grpc_port}
    assert chart_values["service"]["httpPort"] == defaults.port
    assert chart_values["service"]["grpcPort"] == defaults.grpc_port
    template = STATEFULSET.read_text()
    assert re.search(r"- name: http\s*\n\s*containerPort: \{\{ int \.Values\.ports\.http \}\}", template)
    assert re.search(r"name: LOCKGATE_PORT\s*\n\s*value: \{\{ int \.Values\.ports\.http \| quote \}\}", template)
    assert re.search(r"name: LOCKGATE_GRPC_PORT\s*\n\s*value: \{\{ int \.Values\.ports\.grpc \| quote \}\}", template)
    exposed = re.search(r"^EXPOSE (.+)$", DOCKERFILE.read_text(), re.M)
    assert exposed and set(exposed.group(1).split()) == {str(defaults.port), str(defaults.grpc_port)}


def test_the_chart_runs_an_active_node_and_a_standby_that_knows_where_to_relay() -> None:
    assert values()["replicaCount"] == 2
    template = STATEFULSET.read_text()
    assert "kind: StatefulSet" in template
    assert re.search(r"^  replicas: \{\{ int \.Values\.replicaCount \}\}$", template, re.M)
    assert template.startswith('{{- include "lockgate.validate" . }}')
    one_store_each = r"if and \.Values\.store\.embedded\.enabled \(gt \$replicas 1\) \}\}\s*\n\{\{- fail"
    assert re.search(one_store_each, HELPERS.read_text())
    assert re.search(
        r"name: POD_IP\s*\n\s*valueFrom:\s*\n\s*fieldRef:\s*\n\s*fieldPath: status\.podIP\s*\n"
        r"\s*- name: LOCKGATE_ADVERTISE_URL\s*\n\s*value: .*http://\$\(POD_IP\):%d.*\.Values\.ports\.http",
        template,
    )


def test_api_keys_are_required_because_the_server_refuses_to_run_open() -> None:
    with pytest.raises(SystemExit, match="LOCKGATE_API_KEYS"):
        create_app(Settings(host=values()["listenHost"]))
    helpers = HELPERS.read_text()
    assert re.search(r"empty \.Values\.auth\.apiKeys\) \}\}\s*\n\{\{- fail .*LOCKGATE_API_KEYS", helpers)
    sha256 = next(f for f in msgspec.inspect.type_info(ApiKey).fields if f.name == "sha256")
    assert f'regexMatch "{sha256.type.pattern}"' in helpers, "the chart must check hashes as the server does"


def test_grace_period_covers_a_clean_stop() -> None:
    helpers = HELPERS.read_text()
    commit_default = re.search(r'"commit_timeout_ms" \| default (\d+)', helpers)
    grpc_grace = re.search(r"\$needed := add \(div \(add \(mul 2 \$commitTimeoutMs\) 999\) 1000\) (\d+)", helpers)
    embedded_wait = re.search(r"\$needed = add \$needed (\d+)", helpers)
    assert commit_default and grpc_grace and embedded_wait, "the grace period check in _helpers.tpl changed shape"
    stop_wait = re.search(r"wait\(timeout=(\d+)\)", inspect.getsource(EmbeddedValkey.stop))
    assert stop_wait, "EmbeddedValkey.stop changed shape"
    assert int(commit_default.group(1)) == Settings().commit_timeout_ms
    assert int(grpc_grace.group(1)) >= limits.GRPC_STOP_GRACE_S
    assert int(embedded_wait.group(1)) == int(stop_wait.group(1))
    # Requests waiting for a commit, then the final flush; gRPC's grace; the embedded Valkey.
    needed = math.ceil(2 * Settings().commit_timeout_ms / 1000 + limits.GRPC_STOP_GRACE_S) + int(stop_wait.group(1))
    assert values()["terminationGracePeriodSeconds"] >= needed


def test_dockerfile_builds_what_the_chart_runs() -> None:
    dockerfile = DOCKERFILE.read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    assert entrypoint and json.loads(entrypoint.group(1)) == ["lockgate-server"]
    assert "lockgate-server" in project["project"]["scripts"]
    sources = [line.split()[:-1] for line in re.findall(r"^COPY (.+)$", dockerfile, re.M)]
    copied = {Path(source).name for line in sources for source in line}
    package_folders = project["tool"]["setuptools"]["packages"]["find"]["where"]
    needed = {project["project"]["readme"], "pyproject.toml", *package_folders}
    assert needed <= copied
    kept = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert needed <= kept, ".dockerignore must let the build see what it copies"
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    pod = values()["podSecurityContext"]
    assert user and (int(user.group(1)), int(user.group(2))) == (pod["runAsUser"], pod["runAsGroup"])
    assert values()["image"]["repository"] == "lockgate-server"


# --- rendered, where a renderer is at hand --------------------------------------------------


class RenderError(Exception):
    pass


Render = Callable[[dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    helm = shutil.which("helm")
    if helm is not None:

        def with_binary(overrides: dict[str, Any]) -> list[dict[str, Any]]:
            values_file = tmp_path_factory.mktemp("values") / "values.json"
            values_file.write_text(json.dumps(overrides))
            command = [helm, "template", "lockgate", str(CHART), "--namespace", "test", "-f", str(values_file)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise RenderError(done.stderr)
            return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

        return with_binary
    try:
        helm_python = importlib.import_module("helm_python")
    except ImportError:
        pytest.skip("no helm binary on PATH and helm-python-sdk not installed: the chart was checked as text only")

    def with_sdk(overrides: dict[str, Any]) -> list[dict[str, Any]]:
        with helm_python.Chart.load(str(CHART)) as chart:
            try:
                manifests = chart.render(values=overrides, name="lockgate", namespace="test")
            except helm_python.HelmError as error:
                raise RenderError(str(error)) from error
        return [
            doc for name, text in manifests.items() if name.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc
        ]

    return with_sdk


POLICY = """\
domain: api
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
"""
PRODUCTION: dict[str, Any] = {
    "auth": {"apiKeys": [msgspec.to_builtins(KEY)]},
    "store": {"redisUrl": "redis://:secret@valkey.data.svc:6379/0"},
    "config": {"log_level": "debug", "max_body_bytes": 2_097_152, "max_wait_ms": 30_000},
    "policies": {"api.yaml": POLICY},
}


def kind(docs: list[dict[str, Any]], wanted: str, name: str | None = None) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == wanted and name in (None, doc["metadata"]["name"])]
    assert len(matches) == 1, f"{len(matches)} {wanted} named {name}"
    return matches[0]


def server_environment(docs: list[dict[str, Any]], pod_files: Path) -> dict[str, str]:
    """The container's environment with secrets resolved and ConfigMap files written under pod_files."""
    statefulset = kind(docs, "StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    volumes = {volume["name"]: volume for volume in statefulset["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        config_map = volumes.get(mount["name"], {}).get("configMap")
        if config_map:
            folder = pod_files / mount["mountPath"].lstrip("/")
            folder.mkdir(parents=True)
            for file_name, text in kind(docs, "ConfigMap", config_map["name"])["data"].items():
                (folder / file_name).write_text(text)
    environment: dict[str, str] = {}
    for variable in container["env"]:
        if "valueFrom" in variable and "fieldRef" in variable["valueFrom"]:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            environment[variable["name"]] = POD_IP
        elif "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            environment[variable["name"]] = kind(docs, "Secret", ref["name"])["stringData"][ref["key"]]
        else:
            # Kubernetes expands $(NAME) from the variables defined before it.
            environment[variable["name"]] = re.sub(
                r"\$\((\w+)\)", lambda match: environment[match.group(1)], variable["value"]
            )
    # Paths in the pod, as seen from here.
    environment[CONFIG_VARIABLE] = str(pod_files / environment[CONFIG_VARIABLE].lstrip("/"))
    if f"{ENV_PREFIX}POLICY_FILES" in environment:
        paths = json.loads(environment[f"{ENV_PREFIX}POLICY_FILES"])
        environment[f"{ENV_PREFIX}POLICY_FILES"] = json.dumps([str(pod_files / p.lstrip("/")) for p in paths])
    return environment


def test_rendered_chart_configures_a_server_that_starts(render: Render, tmp_path: Path) -> None:
    docs = render(PRODUCTION)
    statefulset = kind(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 2
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False, "a Service named lockgate would set LOCKGATE_PORT=tcp://..."
    container = pod["containers"][0]
    environment = server_environment(docs, tmp_path)
    assert set(environment) <= set(setting_variables()) | {CONFIG_VARIABLE, "POD_IP"}
    settings = load_settings(environ=environment)
    assert settings.host == values()["listenHost"]
    assert settings.advertise_url == f"http://{POD_IP}:{settings.port}"
    assert settings.api_keys == [KEY]
    assert settings.redis_url == PRODUCTION["store"]["redisUrl"]
    assert settings.require_fsync_always is True
    assert (settings.log_level, settings.max_body_bytes, settings.max_wait_ms) == ("debug", 2_097_152, 30_000)
    assert len(settings.policy_files) == 1
    create_app(settings)  # refuses an open off-loopback server, loads the policy files
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}
    service_ports = {port["name"]: port["targetPort"] for port in kind(docs, "Service")["spec"]["ports"]}
    assert service_ports == {"http": "http", "grpc": "grpc"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["terminationGracePeriodSeconds"] == values()["terminationGracePeriodSeconds"]


def test_rendered_embedded_store_is_on_a_volume_claim(render: Render, tmp_path: Path) -> None:
    store = {"embedded": {"enabled": True}}
    docs = render({"auth": PRODUCTION["auth"], "store": store, "ports": {"grpc": 0}, "replicaCount": 1})
    statefulset = kind(docs, "StatefulSet")
    environment = server_environment(docs, tmp_path)
    assert f"{ENV_PREFIX}REDIS_URL" not in environment
    settings = load_settings(environ=environment)
    assert settings.redis_url is None and settings.grpc_port == 0
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": claim["metadata"]["name"], "mountPath": settings.data_dir} in mounts
    assert [port["name"] for port in kind(docs, "Service")["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({**PRODUCTION, "replicaCount": -1}, "replicaCount is -1"),
        ({"auth": PRODUCTION["auth"], "store": {"embedded": {"enabled": True}}}, "a store of its own"),
        ({"store": PRODUCTION["store"]}, "LOCKGATE_API_KEYS"),
        ({"auth": PRODUCTION["auth"]}, "LOCKGATE_REDIS_URL"),
        ({**PRODUCTION, "auth": {"apiKeys": [{**msgspec.to_builtins(KEY), "sha256": "the-key"}]}}, "SHA-256"),
        ({**PRODUCTION, "store": {"redisUrl": "unix:///run/valkey.sock"}}, "redis://"),
        ({**PRODUCTION, "config": {"port": 9000}}, "config.port"),
        ({**PRODUCTION, "config": {"commit_timeout_ms": 20_000}}, "terminationGracePeriodSeconds"),
    ],
)
def test_rendering_refuses_what_the_server_cannot_run(render: Render, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(overrides)
