"""Live servers on 127.0.0.1 for the tests: ASGI apps in a thread, the gateway CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, *, status: int = 200, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2.0)
            if last.status_code == status:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s} s (last: {last})")


class ServerThread:
    """Runs an ASGI app under uvicorn in a background thread."""

    def __init__(self, app: Any, port: int | None = None, **uvicorn_kwargs: Any) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", **uvicorn_kwargs)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server thread failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess:
    """``llm-gateway serve`` as a real subprocess (the console script the README documents)."""

    def __init__(self, config: dict[str, Any] | None = None, *, port: int | None = None,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.config_path: Path | None = None
        if config is not None:
            handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            yaml.safe_dump(config, handle)
            handle.close()
            self.config_path = Path(handle.name)
        args = [str(VENV_BIN / "llm-gateway"), "serve", "--port", str(self.port)]
        if self.config_path:
            args += ["--config", str(self.config_path)]
        self.args = args + (extra_args or [])
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.log_path = Path(tempfile.mkstemp(suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True, timeout_s: float = 180.0) -> GatewayProcess:
        log = self.log_path.open("w")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(f"{self.url}/ready" if wait_ready else f"{self.url}/health", timeout_s=timeout_s)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text()

    def log_entries(self) -> list[dict]:
        """The JSON lines of the log (other output, e.g. a library's warning, is skipped)."""
        entries = []
        for line in self.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def terminate(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
