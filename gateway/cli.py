"""The ``llm-gateway`` command line.

    llm-gateway serve [--config FILE] [--host H] [--port P] [--workers N] [--allow-unauthenticated]
    llm-gateway keys hash [KEY]
    llm-gateway usage [--config FILE | --store URL] [--since YYYY-MM-DD]
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
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.core.config import ConfigError, Settings, hash_key, load_config

logger = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace], int]


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


# OpenMP's threads (torch's intra-op pool) spin for a while after each parallel region by default. In a server whose
# cores ONNX Runtime's own pool also works on, every sampling step of the onnx engine then leaves two torch threads
# spinning against it: the embedded model decoded at 55 tokens/s instead of 125 (measured on 2 cores). Passive
# threads sleep at once; a setting of the caller's own is kept. Read when torch loads, so before any import of it.
_SERVER_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}


def _serve(args: argparse.Namespace) -> int:
    for name, value in _SERVER_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    from gateway.core.logs import configure_logging
    from gateway.http.server import run_server, serve_workers  # the server's imports only when serving

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
        run_server(config, settings.cache_dir, host, port)
        return 0
    limited = [key.name for key in config.auth.api_keys
               if key.requests_per_minute or key.tokens_per_minute or key.budget_usd is not None]
    if limited and not config.limits.redis_url:
        raise ConfigError(f"--workers {args.workers} with per-key limits or budgets ({', '.join(limited)}) needs "
                          "limits.redis_url: each worker would count alone and allow the limit once per worker")
    configure_logging(config.server.log_level)
    serve_workers(config, settings.cache_dir, host, port, args.workers)
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        raise ConfigError("no key given: llm-gateway keys hash KEY (or the key on stdin)")
    print(hash_key(key))
    return 0


def _usage(args: argparse.Namespace) -> int:
    from datetime import datetime

    from sqlalchemy.exc import SQLAlchemyError

    from gateway.engine.usage import UsageStore, store_url
    from gateway.engine.usage.report import format_spend, spend_by_day
    from gateway.engine.usage.store import EmptyStore, StoreUnavailable

    settings = Settings()
    if args.store:
        configured: str | None = args.store
    else:
        config = load_config(args.config or settings.config)
        if config.usage_store is False:
            raise ConfigError("this configuration keeps no usage (usage_store: false)")
        configured = config.usage_store
    try:
        since = datetime.strptime(args.since, "%Y-%m-%d") if args.since else None
    except ValueError:
        raise ConfigError(f"--since {args.since!r}: expected a date, YYYY-MM-DD") from None
    try:
        store = UsageStore(store_url(configured, settings.cache_dir), read_only=True)  # a report never migrates
    except SQLAlchemyError as exc:
        raise ConfigError(f"usage store URL: {str(exc).splitlines()[0][:300]}") from None
    try:
        lines = spend_by_day(store, since)
    except EmptyStore:
        lines = []
    except (StoreUnavailable, SQLAlchemyError) as exc:
        raise ConfigError(f"cannot read the usage store: {str(exc).splitlines()[0][:300]}") from None
    finally:
        store.close()
    print(format_spend(lines) if lines else "no requests recorded")
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

    usage = commands.add_parser("usage", help="spend by day, API key and model, from the usage store (USD)")
    usage_source = usage.add_mutually_exclusive_group()
    usage_source.add_argument("--config", type=Path, help="read the store this config names (default: "
                                                          "$LLM_GATEWAY_CONFIG, else the default store)")
    usage_source.add_argument("--store", help="the store's URL: sqlite:///PATH or postgresql://...")
    usage.add_argument("--since", help="only requests from this UTC day on (YYYY-MM-DD)")
    usage.set_defaults(handler=_usage)

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
