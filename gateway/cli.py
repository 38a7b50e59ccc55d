"""The ``llm-gateway`` command line.

    llm-gateway serve [--config FILE] [--host H] [--port P] [--workers N] [--allow-unauthenticated]
    llm-gateway keys hash [KEY]
    llm-gateway router train --data FILE [FILE ...] --out DIR [--mode frozen|finetune] [--steps N] [--seed S]
    llm-gateway router eval (--checkpoint DIR | --baseline NAME --data FILE ...) --test FILE:SCORING ... [--json OUT]
    llm-gateway router calibrate --config GW.yaml --data FILE:SCORING ...
    llm-gateway router collect --config GW.yaml --questions FILE.jsonl --models M ... --out DATA.json
    llm-gateway train sr-dpo --model PATH_OR_EMBEDDED --data FILE --loss sr-dpo|sr-ipo|dpo|ipo [--lora] --out DIR
    llm-gateway train aligncot-data --config GW.yaml --model M --prompts HH.jsonl.gz --out chains.jsonl
    llm-gateway train mote --model PATH_OR_EMBEDDED --data chains.jsonl --out DIR
    llm-gateway train aligncot-eval --config GW.yaml --base M [--experts analysis=A guidance=G answer=S] --judge J
    llm-gateway safety eval --data FILE.jsonl --judge MODEL [--stage ecso|none] [--config GW.yaml | --url URL]

Each command group registers its sub-parser in its own module (the trainers' groups through the
``llm_gateway.commands`` entry points); heavy imports (torch, trainers) happen
only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import uvicorn

from gateway.core.config import ConfigError, GatewayConfig, Settings, hash_key, load_config
from gateway.core.metrics import MULTIPROCESS_ENV

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace], int]


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _serve(args: argparse.Namespace) -> int:
    from gateway.core.logs import configure_logging

    settings = Settings()
    config = load_config(args.config or settings.config)
    host = args.host or settings.host
    if host not in LOOPBACK_HOSTS and not config.auth.api_keys and not args.allow_unauthenticated:
        raise ConfigError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could use your models.\n"
            "  Add keys to the config (auth: {api_keys: [{key_sha256: <llm-gateway keys hash>, name: team-a}]}),\n"
            "  or pass --allow-unauthenticated if something in front of the gateway already authenticates.")
    port = args.port or settings.port
    if args.workers == 1:
        _run_worker(config, settings.cache_dir, host, port)
        return 0
    limited = [key.name for key in config.auth.api_keys if key.requests_per_minute or key.tokens_per_minute]
    if limited and not config.limits.redis_url:
        raise ConfigError(f"--workers {args.workers} with per-key limits ({', '.join(limited)}) needs "
                          "limits.redis_url: each worker would count alone and allow the limit once per worker")
    configure_logging(config.server.log_level)
    _serve_workers(config, settings.cache_dir, host, port, args.workers)
    return 0


def _uvicorn_config(app: Any, host: str, port: int, shutdown_grace_s: float, **options: Any) -> uvicorn.Config:
    # uvicorn takes whole seconds and reads 0 as "wait forever": round a fraction up, never down to 0.
    grace = max(1, math.ceil(shutdown_grace_s))
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, backlog=4096,
                          timeout_graceful_shutdown=grace, **options)


def _run_worker(config: GatewayConfig, cache_dir: Path, host: str, port: int,
                sockets: list[socket.socket] | None = None) -> None:
    """One server process: the app and its event loop (``sockets`` come bound from the supervisor)."""
    from gateway.core.logs import configure_logging
    from gateway.http import create_app

    configure_logging(config.server.log_level)
    app = create_app(config, cache_dir=cache_dir)
    DrainingServer(_uvicorn_config(app, host, port, config.server.shutdown_grace_s)).run(sockets=sockets)


def _serve_workers(config: GatewayConfig, cache_dir: Path, host: str, port: int, workers: int) -> None:
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
        listener = _uvicorn_config(None, host, port, config.server.shutdown_grace_s).bind_socket()

        def start_worker() -> multiprocessing.process.BaseProcess:
            process = spawn.Process(target=_run_worker, args=(config, cache_dir, host, port, [listener]))
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
        gateway = cast("FastAPI", self.config.app).state.gateway  # the app is create_app's (see _run_worker)
        gateway.begin_drain()
        if gateway.config.server.drain_delay_s:
            await asyncio.sleep(gateway.config.server.drain_delay_s)
        gateway.begin_stop()
        await super().shutdown(sockets)


def _hash_key(args: argparse.Namespace) -> int:
    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        raise ConfigError("no key given: llm-gateway keys hash KEY (or the key on stdin)")
    print(hash_key(key))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the OpenAI-compatible server")
    serve.add_argument("--config", type=Path, help="YAML config (default: $LLM_GATEWAY_CONFIG or the embedded "
                                                   "model alone)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, choices=range(1, 257), metavar="N",
                       help="server processes sharing the port, one per core (default 1; per-key limits then "
                            "need limits.redis_url)")
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="serve on a non-loopback address without API keys")
    serve.set_defaults(handler=_serve)

    keys = commands.add_parser("keys", help="API key helpers")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    hash_parser = keys_commands.add_parser("hash", help="print the sha256 form of a key for auth.api_keys")
    hash_parser.add_argument("key", nargs="?", help="the key (read from stdin when left out)")
    hash_parser.set_defaults(handler=_hash_key)

    for add_commands in registered_command_groups():
        add_commands(commands)
    return parser


COMMANDS_ENTRY_POINT_GROUP = "llm_gateway.commands"


def registered_command_groups() -> list[Callable[[Any], Any]]:
    """The command groups other packages add (``[project.entry-points."llm_gateway.commands"]``: the trainers'
    ``router``, ``safety``, ``train`` and ``kg``), so the gateway's CLI never imports the trainers itself. Each
    is a function that adds its sub-parsers to the ``llm-gateway`` sub-command set."""
    from importlib.metadata import entry_points

    return [entry.load() for entry in entry_points(group=COMMANDS_ENTRY_POINT_GROUP)]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except (ConfigError, ValueError) as exc:
        # Bad input (config, data files, options): a message, not a stack trace.
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name not in TRAINING_ONLY_MODULES:
            raise
        print(f"llm-gateway: this command needs the trainers' dependencies ({exc.name} is missing): "
              "pip install 'llm-gateway[train]'", file=sys.stderr)
        return 2


# Installed by the ``train`` extra only (the serving image leaves them out).
TRAINING_ONLY_MODULES = frozenset({"trl", "datasets", "matplotlib", "rank_bm25"})


if __name__ == "__main__":
    sys.exit(main())
