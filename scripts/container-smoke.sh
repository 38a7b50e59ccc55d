#!/usr/bin/env bash
# Build the project's Dockerfile and prove the image serves, on a machine without a Docker daemon or Docker Hub:
# podman/buildah with chroot isolation on a Python 3.11 Debian base made by debootstrap.
#
#   scripts/container-smoke.sh            build (cold, then warm after a one-line code change), run, check, clean up
#   KEEP_IMAGES=1 scripts/container-smoke.sh   keep the base and the built image (later runs build warm)
#
# The Dockerfile is not changed for this: its build arguments get the local equivalents of the public defaults
# (BASE_IMAGE: the debootstrapped base; the pip indexes and find-links of this machine's pip configuration, read
# here at run time and mounted read-only into the build; TORCH_INDEX_URL: the public CPU index when it answers,
# else a one-package index over the CPU torch wheel found on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
IMAGE=localhost/llm-gateway:smoke
BASE=localhost/llm-gateway-base:bookworm-py311
CONTAINER=""
SERVER_PID=""
WORK=$(mktemp -d)

say() { printf '[container-smoke] %s\n' "$*"; }
fail() { say "FAILED: $*"; exit 1; }
trap 'say "FAILED at line $LINENO: $BASH_COMMAND"' ERR

cleanup() {
  set +e
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -n "$CONTAINER" ] && buildah rm "$CONTAINER" >/dev/null 2>&1
  if [ -z "${KEEP_IMAGES:-}" ]; then
    podman rmi -f "$IMAGE" >/dev/null 2>&1
    podman image prune -f >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in podman buildah debootstrap curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || fail "$tool is missing (apt-get install podman buildah debootstrap curl)"
    say "installing podman, buildah, debootstrap"
    apt-get install -y -qq podman buildah debootstrap curl >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq podman buildah debootstrap curl >/dev/null; }
    break
  fi
done

# ---- the base: Debian bookworm with Python 3.11 (what python:3.11-slim is), from this machine's Debian mirror
if ! podman image exists "$BASE"; then
  mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
           | grep -v security | head -n1 | awk '{print $2}' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  say "making the base image from $mirror"
  started=$SECONDS
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
    bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  tar -C "$WORK/rootfs" -c . | podman import --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
  say "base made in $((SECONDS - started)) s"
fi

# ---- this machine's pip configuration, as build arguments and read-only mounts
build_args=(--build-arg "BASE_IMAGE=$BASE")
mounts=()
pip_value() {  # a pip setting: the environment wins over the config files, as in pip itself
  local env_name=$1 key=$2
  if [ -n "${!env_name:-}" ]; then echo "${!env_name}"; return; fi
  { pip config list 2>/dev/null || python3 -m pip config list 2>/dev/null; } | sed -n "s/^[a-z:]*\.${key}='\(.*\)'$/\1/p" | head -n1
}
local_paths=()
for setting in "PIP_INDEX_URL index-url" "PIP_EXTRA_INDEX_URL extra-index-url" "PIP_FIND_LINKS find-links"; do
  set -- $setting
  value=$(pip_value "$1" "$2")
  [ -z "$value" ] && continue
  build_args+=(--build-arg "$1=$value")
  for entry in $value; do
    path=${entry#file://}
    path=${path%/}
    [ "$(basename "$path")" = simple ] && path=$(dirname "$path")  # a local index links to files beside simple/
    if [ "${path:0:1}" = / ] && [ -e "$path" ]; then local_paths+=("$path"); fi
  done
done
for path in "${local_paths[@]}"; do mounts+=(-v "$path:$path:ro"); done
cert=$(pip_value PIP_CERT cert)
if [ -n "$cert" ] && [ -f "$cert" ]; then  # a CA bundle pip is told to trust here (e.g. a TLS-inspecting proxy)
  mounts+=(-v "$cert:/run/pip-ca-bundle.crt:ro")
  build_args+=(--build-arg "PIP_CERT=/run/pip-ca-bundle.crt")
fi

if curl -fsS --max-time 5 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
  say "torch from the public CPU index"
else
  wheel=$(for path in "${local_paths[@]}"; do find "$path" -maxdepth 3 -name 'torch-2.13.0+cpu-cp311-*.whl'; done 2>/dev/null | head -n1)
  [ -n "$wheel" ] || fail "neither download.pytorch.org nor a local torch-2.13.0+cpu wheel is reachable"
  mkdir -p "$WORK/torch-index/simple/torch"
  printf '<a href="file://%s">%s</a>\n' "$wheel" "$(basename "$wheel")" > "$WORK/torch-index/simple/torch/index.html"
  build_args+=(--build-arg "TORCH_INDEX_URL=file://$WORK/torch-index/simple")
  mounts+=(-v "$WORK/torch-index:$WORK/torch-index:ro" -v "$(dirname "$wheel"):$(dirname "$wheel"):ro")
  say "torch from $wheel (download.pytorch.org does not answer here)"
fi

# ---- build from a clean copy of the working tree (tracked and new files; what git ignores stays out)
mkdir -p "$WORK/context"
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$WORK/context/" 2>/dev/null || true
build() {
  podman build --isolation chroot --layers "${build_args[@]}" "${mounts[@]}" -t "$IMAGE" "$WORK/context" \
    >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "podman build"; }
}
started=$SECONDS
build
say "build: $((SECONDS - started)) s ($(podman image exists "$IMAGE" && echo ok))"
echo "# container-smoke: a one-line code change" >> "$WORK/context/gateway/__init__.py"
started=$SECONDS
build
say "rebuild after a one-line code change: $((SECONDS - started)) s"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image size: $((size / 1000000)) MB"

# ---- run the image's entrypoint (podman run needs cgroups this machine lacks; buildah run uses chroot)
CONTAINER=$(buildah from "$IMAGE")
entrypoint=$(buildah inspect --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$CONTAINER")
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$CONTAINER")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "starting '$entrypoint--host 127.0.0.1 --port $port' as user $user"
started=$SECONDS
# shellcheck disable=SC2086 # the entrypoint is a command line
buildah run --isolation chroot --user "$user" "$CONTAINER" -- $entrypoint --host 127.0.0.1 --port "$port" \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
url="http://127.0.0.1:$port"
until curl -fsS "$url/ready" >/dev/null 2>&1; do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -30 "$WORK/server.log"; fail "the container exited"; }
  [ $((SECONDS - started)) -lt 300 ] || { tail -30 "$WORK/server.log"; fail "not ready after 300 s"; }
  sleep 1
done
say "ready $((SECONDS - started)) s after start"

curl -fsS "$url/health" | grep -q '"ok"' || fail "/health"
say "/health ok; /ready: $(curl -fsS "$url/ready")"
answer=$(curl -fsS "$url/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "smollm2-135m", "temperature": 0, "max_tokens": 16, "messages": [{"role": "user", "content": "What is the capital of France?"}]}')
python3 -c 'import json, sys; text = json.loads(sys.argv[1])["choices"][0]["message"]["content"]; assert text.strip(), "empty"; print("[container-smoke] chat:", repr(text))' "$answer" \
  || fail "chat: $answer"
stream=$(curl -fsSN "$url/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "smollm2-135m", "stream": true, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}')
chunks=$(grep -c '^data: {' <<<"$stream" || true)
grep -q '^data: \[DONE\]' <<<"$stream" && [ "$chunks" -ge 2 ] || fail "stream: $stream"
say "stream: $chunks chunks, then [DONE]"
# Package data reached the image: the console's page and script, the listwise re-ranking prompt.
curl -fsS "$url/ui" | grep -q 'console.js' && curl -fsS -o /dev/null "$url/ui/assets/console.js" || fail "/ui"
curl -fsS "$url/v1/rerank" -H 'content-type: application/json' \
  -d '{"model": "all-minilm-l6-v2", "query": "capital of France", "documents": ["Paris is in France", "Bananas"]}' \
  | grep -q '"index":0' || fail "/v1/rerank"
say "/ui and /v1/rerank served"
pid=$(ss -ltnpH "sport = :$port" | grep -oE 'pid=[0-9]+' | head -n1 | cut -d= -f2)
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 10001 ] || fail "the server runs as uid $uid, not 10001"
say "the server (pid $pid) runs as uid $uid, not root"
say "PASSED"
