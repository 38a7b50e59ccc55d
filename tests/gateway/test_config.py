"""Config files: contract keys, defaults and clear errors naming the bad field."""

from __future__ import annotations

import subprocess

import pytest

from gateway.core.config import EMBEDDED_MODEL_NAME, ConfigError, load_config, parse_config
from tests.support.servers import VENV_BIN, GatewayProcess


def test_no_config_is_the_embedded_model_the_packaged_minilm_and_speech():
    config = load_config(None)
    assert [m.name for m in config.models] == [EMBEDDED_MODEL_NAME, "all-minilm-l6-v2", "whisper-tiny.en", "espeak"]
    assert config.models[0].is_embedded and config.models[0].task == "generate"
    assert config.models[1].task == "embed" and config.models[1].encoder == "minilm"
    assert [m.task for m in config.models[2:]] == ["transcribe", "speech"]
    assert "whisper-1" in config.models[2].aliases and "tts-1" in config.models[3].aliases


def test_the_engine_of_a_local_model():
    from gateway.backends.transformers.backend import local_engine

    config = parse_config({"models": [
        {"name": "embedded", "backend": "local"},
        {"name": "tuned", "backend": "local", "path": "/models/tuned"},
        {"name": "with-lora", "backend": "local", "adapters": {"lora": "/a"}},
        {"name": "vision", "backend": "local", "vision": True},
        {"name": "forced", "backend": "local", "engine": "transformers"},
        {"name": "opted-in", "backend": "local", "path": "/models/tuned", "engine": "onnx"},
    ]})
    engines = {model.name: local_engine(model) for model in config.models}
    assert engines == {"embedded": "onnx", "tuned": "transformers", "with-lora": "transformers",
                       "vision": "transformers", "forced": "transformers", "opted-in": "onnx"}


def test_contract_keys():
    config = parse_config({"models": [
        {"name": "a", "backend": "openai", "base_url": "http://h:8000/v1", "upstream_model": "org/a", "timeout_s": 9},
        {"name": "b", "backend": "openai", "base_url": "http://h:8001/v1"},
        {"name": "local-default", "backend": "local"},
    ]})
    a, b, local = config.models
    assert a.served_model == "org/a" and a.timeout_s == 9
    assert b.served_model == "b"
    assert local.is_embedded


@pytest.mark.parametrize(("data", "fragments"), [
    ({"models": [{"name": "a", "backend": "openai"}]}, ["models.0", "needs 'base_url'"]),
    ({"models": [{"name": "a", "backend": "vllm", "base_url": "http://x"}]},
     ["models.0.backend", "'local' or 'openai'"]),
    ({"models": [{"name": "a", "backend": "local", "timout_s": 3}]}, ["models.0.timout_s", "Extra inputs"]),
    ({"models": [{"name": "a", "backend": "local"}, {"name": "a", "backend": "local"}]}, ["'a' is used twice"]),
    ({"models": [{"name": "a", "backend": "openai", "base_url": "http://x", "timeout_s": -1}]},
     ["models.0.timeout_s", "greater than 0"]),
    ({"modles": []}, ["modles", "Extra inputs"]),
    ({"models": []}, ["models", "at least 1"]),
    ({"models": [{"name": "e", "backend": "local", "task": "embed", "stages": ["ecso"]}]},
     ["an embedding model takes no stages"]),
    ({"models": [{"name": "e", "backend": "local", "encoder": "minilm"}]}, ["'encoder' is only for", "'embed'"]),
    ({"models": [{"name": "m", "backend": "local", "responses_api": "native"}]},
     ["responses_api 'native' is for backend 'openai'"]),
    ({"models": [{"name": "m", "backend": "openai", "base_url": "http://x", "responses_api": "stored"}]},
     ["models.0.responses_api"]),
    ({"models": [{"name": "m", "backend": "local", "engine": "onnx", "adapters": {"m-lora": "/a"}}]},
     ["engine 'onnx' is for a local text model on the CPU", "engine 'transformers'"]),
    ({"models": [{"name": "m", "backend": "local", "engine": "onnx", "device": "cuda"}]},
     ["engine 'onnx' is for a local text model on the CPU"]),
    ({"models": [{"name": "m", "backend": "local", "engine": "vllm"}]}, ["models.0.engine"]),
])
def test_errors_name_the_field(data, fragments):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "gw.yaml")
    message = str(info.value)
    assert message.startswith("invalid configuration in gw.yaml")
    for fragment in fragments:
        assert fragment in message


def test_yaml_syntax_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_cli_refuses_a_bad_config_with_a_message_and_exit_code_2(tmp_path):
    bad = tmp_path / "gw.yaml"
    bad.write_text("models:\n  - name: a\n    backend: openai\n")
    result = subprocess.run([str(VENV_BIN / "llm-gateway"), "serve", "--config", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "needs 'base_url'" in result.stderr and "Traceback" not in result.stderr


def test_config_from_environment_variable(upstream, tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(f"models:\n  - name: env-model\n    backend: openai\n    base_url: {upstream.base_url}\n")
    with GatewayProcess(env={"LLM_GATEWAY_CONFIG": str(path)}) as gateway:
        client = __import__("openai").OpenAI(base_url=f"{gateway.url}/v1", api_key="x")
        assert [m.id for m in client.models.list()] == ["env-model"]


def test_environment_references_are_expanded(tmp_path, monkeypatch):
    path = tmp_path / "gw.yaml"
    path.write_text("models:\n  - name: a\n    backend: openai\n    base_url: ${UPSTREAM_URL}\n"
                    "    timeout_s: ${TIMEOUT:-7}\n")
    monkeypatch.setenv("UPSTREAM_URL", "http://vllm:8000/v1")
    config = load_config(path)
    assert config.models[0].base_url == "http://vllm:8000/v1" and config.models[0].timeout_s == 7
    monkeypatch.delenv("UPSTREAM_URL")
    with pytest.raises(ConfigError, match="environment variable UPSTREAM_URL is not set"):
        load_config(path)
