"""The ``llm-gateway`` command line.

    llm-gateway serve [--config FILE] [--host H] [--port P] [--allow-unauthenticated]
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

Each command group registers its sub-parser in its own module; heavy imports (torch, trainers) happen
only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn

from gateway.config import ConfigError, Settings, hash_key, load_config

Command = Callable[[argparse.Namespace], int]


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _serve(args: argparse.Namespace) -> int:
    from gateway.http import create_app
    from gateway.logs import configure_logging

    settings = Settings()
    config = load_config(args.config or settings.config)
    host = args.host or settings.host
    if host not in LOOPBACK_HOSTS and not config.auth.api_keys and not args.allow_unauthenticated:
        raise ConfigError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could use your models.\n"
            "  Add keys to the config (auth: {api_keys: [{key_sha256: <llm-gateway keys hash>, name: team-a}]}),\n"
            "  or pass --allow-unauthenticated if something in front of the gateway already authenticates.")
    configure_logging(config.server.log_level)
    app = create_app(config, cache_dir=settings.cache_dir)
    # uvicorn takes whole seconds and reads 0 as "wait forever": round a fraction up, never down to 0.
    grace = max(1, math.ceil(config.server.shutdown_grace_s))
    server = DrainingServer(uvicorn.Config(app, host=host, port=args.port or settings.port, log_config=None,
                                           access_log=False, timeout_graceful_shutdown=grace))
    server.run()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain: on SIGTERM /ready goes 503 while requests are still served for
    ``drain_delay_s`` (the load balancer takes the replica out), then the listener closes and in-flight
    requests and streams get ``shutdown_grace_s`` to finish, then end with an error rather than a cut."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gateway = self.config.app.state.gateway
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
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="serve on a non-loopback address without API keys")
    serve.set_defaults(handler=_serve)

    keys = commands.add_parser("keys", help="API key helpers")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    hash_parser = keys_commands.add_parser("hash", help="print the sha256 form of a key for auth.api_keys")
    hash_parser.add_argument("key", nargs="?", help="the key (read from stdin when left out)")
    hash_parser.set_defaults(handler=_hash_key)

    from training.router_commands import add_router_commands
    from training.safety_commands import add_safety_commands
    from training.train_commands import add_train_commands

    add_router_commands(commands)
    add_safety_commands(commands)
    add_train_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except (ConfigError, ValueError) as exc:
        # Bad input (config, data files, options): a message, not a stack trace.
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
