"""Serving the app: uvicorn with a drain (``DrainingServer``), one process or ``--workers N`` on one port."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import uvicorn

from gateway.core.config import GatewayConfig
from gateway.core.metrics import MULTIPROCESS_ENV

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)


def uvicorn_config(app: Any, host: str, port: int, shutdown_grace_s: float, **options: Any) -> uvicorn.Config:
    # uvicorn takes whole seconds and reads 0 as "wait forever": round a fraction up, never down to 0.
    grace = max(1, math.ceil(shutdown_grace_s))
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, backlog=4096,
                          timeout_graceful_shutdown=grace, **options)


def run_server(config: GatewayConfig, cache_dir: Path, host: str, port: int,
                sockets: list[socket.socket] | None = None) -> None:
    """One server process: the app and its event loop (``sockets`` come bound from the supervisor)."""
    from gateway.core.logs import configure_logging
    from gateway.http.app import create_app

    configure_logging(config.server.log_level)
    app = create_app(config, cache_dir=cache_dir)
    DrainingServer(uvicorn_config(app, host, port, config.server.shutdown_grace_s)).run(sockets=sockets)


def serve_workers(config: GatewayConfig, cache_dir: Path, host: str, port: int, workers: int) -> None:
    """``workers`` processes on one listening socket, each a ``DrainingServer``; SIGTERM/SIGINT are passed on to
    them, and a worker that dies while serving is replaced. Prometheus values are summed over the workers
    through a shared directory. (uvicorn's own supervisor builds plain ``uvicorn.Server`` workers, without the
    drain, so it is not used.)"""
    import multiprocessing
    import signal
    import time

    multiprocessing.allow_connection_pickling()  # the bound socket travels to the spawned workers
    spawn = multiprocessing.get_context("spawn")
    stopping: list[int] = []
    with tempfile.TemporaryDirectory(prefix="llm-gateway-metrics-") as metrics_dir:
        os.environ[MULTIPROCESS_ENV] = metrics_dir  # the workers inherit it: see gateway.metrics
        listener = uvicorn_config(None, host, port, config.server.shutdown_grace_s).bind_socket()

        def start_worker() -> multiprocessing.process.BaseProcess:
            process = spawn.Process(target=run_server, args=(config, cache_dir, host, port, [listener]))
            process.start()
            return process

        processes = [start_worker() for _ in range(workers)]
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, frame: stopping.append(number))
        while not stopping:
            time.sleep(0.2)
            for i, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    logger.error("worker %s exited with %s; starting another", process.pid, process.exitcode)
                    processes[i] = start_worker()
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join()
        listener.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain: on SIGTERM /ready goes 503 while requests are still served for
    ``drain_delay_s`` (the load balancer takes the replica out), then the listener closes and in-flight
    requests and streams get ``shutdown_grace_s`` to finish, then end with an error rather than a cut."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gateway = cast("FastAPI", self.config.app).state.gateway  # the app is create_app's (see run_server)
        gateway.begin_drain()
        if gateway.config.server.drain_delay_s:
            await asyncio.sleep(gateway.config.server.drain_delay_s)
        gateway.begin_stop()
        await super().shutdown(sockets)
