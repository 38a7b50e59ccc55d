"""The Kubernetes manifests (deploy/kubernetes): every overlay renders with kustomize, every object validates
against the Kubernetes schema (strict), every container has probes, limits and a non-root user, no Secret
holds a key, and the gateway config, ports, probes and env agree with the gateway's own config loader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["cpu", "gpu"]
KUBERNETES_VERSION = "1.33.0"  # the schema version the manifests are checked against
WORKLOADS = ("Deployment", "StatefulSet")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (scripts/setup.sh --dev installs Debian's kubectl package)"
    output = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / request.param)],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    return request.param, [doc for doc in yaml.safe_load_all(output) if doc]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _gateway_config(objects: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(
        "llm-gateway-config"))
    path = tmp_path / "gateway.yaml"
    path.write_text(config_map["data"]["gateway.yaml"])
    monkeypatch.setenv("GATEWAY_KEY_SHA256", "ab" * 32)
    return config_map, load_config(path)


def test_every_object_validates_strictly(rendered):
    _, objects = rendered
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_container_has_probes_limits_and_a_non_root_user(rendered):
    _, objects = rendered
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert container.get("livenessProbe") and container.get("readinessProbe"), f"{where}: probes"
            limits = container.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(limits), f"{where}: limits {limits}"
            security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True and security.get("runAsUser", 0) != 0, f"{where}: root"
            assert security.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation"


def test_no_secret_holds_a_plain_key(rendered, tmp_path, monkeypatch):
    _, objects = rendered
    assert not [o for o in objects if o["kind"] == "Secret"]  # secrets are created by the operator, by reference
    _, config = _gateway_config(objects, tmp_path, monkeypatch)
    assert config.auth.api_keys and all(key.key is None and key.key_sha256 for key in config.auth.api_keys)
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                assert "value" not in env or not str(env["value"]).startswith(("sk-", "hf_")), env
                if "KEY" in env["name"] or "TOKEN" in env["name"]:
                    assert "secretKeyRef" in env.get("valueFrom", {}), env


def test_gateway_config_ports_probes_and_env_agree(rendered, tmp_path, monkeypatch):
    overlay, objects = rendered
    config_map, config = _gateway_config(objects, tmp_path, monkeypatch)
    deployment = _one(objects, "Deployment", "llm-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(name for name, v in volumes.items() if v.get("configMap", {}).get("name") ==
                         config_map["metadata"]["name"])
    assert env["LLM_GATEWAY_CONFIG"]["value"] == f"{mounts[config_volume]}/gateway.yaml"
    # The port the gateway listens on is the one the probes and the Service use.
    args = container["args"]
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"  # unready while draining
    service = _one(objects, "Service", "llm-gateway")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert config.server.metrics_allow_remote  # Prometheus scrapes the pod address
    # SIGTERM: the stop grace period covers the preStop pause, the drain and the in-flight grace.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= (pre_stop + config.server.drain_delay_s
                                                    + config.server.shutdown_grace_s + 1)
    # Every upstream and Redis is a Service of the rendering, on the port the config names.
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    urls = [config.limits.redis_url] + [m.base_url for m in config.models if m.backend == "openai"]
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname in services, f"{url}: no Service {parts.hostname}"
        assert parts.port in [p["port"] for p in services[parts.hostname]["spec"]["ports"]], url
    if config.router is not None:
        assert any(str(config.router.checkpoint).startswith(path) for path in mounts.values())
    if overlay == "gpu":
        compose = load_config(ROOT / "examples" / "compose.yaml")
        assert config.models == compose.models and config.router == compose.router
        assert config.auth == compose.auth and config.limits == compose.limits
