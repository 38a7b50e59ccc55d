"""The ``llm-gateway`` command line.

    llm-gateway serve [--config FILE] [--host H] [--port P]
    llm-gateway router train --data FILE [FILE ...] --out DIR [--mode frozen|finetune] [--steps N] [--seed S]
    llm-gateway router eval (--checkpoint DIR | --baseline NAME --data FILE ...) --test FILE:SCORING ... [--json OUT]
    llm-gateway router calibrate --config GW.yaml --data FILE:SCORING ...
    llm-gateway safety eval --data FILE.jsonl --judge MODEL [--stage ecso|none] [--config GW.yaml | --url URL]

Each command group registers its sub-parser in its own module; heavy imports (torch, trainers) happen
only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.config import ConfigError, Settings, load_config

Command = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.http import create_app
    from gateway.logs import configure_logging

    settings = Settings()
    config = load_config(args.config or settings.config)
    configure_logging(config.server.log_level)
    app = create_app(config, cache_dir=settings.cache_dir)
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=int(config.server.shutdown_grace_s) or None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the OpenAI-compatible server")
    serve.add_argument("--config", type=Path, help="YAML config (default: $LLM_GATEWAY_CONFIG or the embedded "
                                                   "model alone)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.set_defaults(handler=_serve)

    from training.router_commands import add_router_commands
    from training.safety_commands import add_safety_commands

    add_router_commands(commands)
    add_safety_commands(commands)
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
