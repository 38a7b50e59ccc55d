"""Two source trees of the gateway, interleaved on one canned upstream: the before/after figure of a change to the
hot path, with the machine's drift spread over both (the rounds alternate which tree goes first).

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/hot_path_ab.py --before /tmp/before --after . [--rounds 4] [--duration 6]

Each round starts each tree's gateway (``PYTHONPATH`` points at the tree), pinned to core 0 as in
``hot_path.py``, and measures c=32 named-model requests/s, requests per CPU-second of the gateway, and streamed
chunks/s (100-chunk answers). Prints every round, then mean ± standard deviation per tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port  # noqa: E402
from hot_path import BIN, HERE, STREAM_CHUNKS, cpu_seconds, gateway_config, pinned, process, wrk, wrk_script  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree of the gateway before the change")
    parser.add_argument("--after", type=Path, required=True, help="source tree after the change")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    args = parser.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="hot-path-ab-"))
    upstream_port, stream_port = free_port(), free_port()
    upstream, stream_upstream = f"http://127.0.0.1:{upstream_port}/v1", f"http://127.0.0.1:{stream_port}/v1"
    config = work / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_config(upstream, stream_upstream, None)))
    named_script = wrk_script(work, "bench", "bench", False)
    stream_script = wrk_script(work, "bench-stream", "bench-stream", True)
    fake = [sys.executable, str(HERE / "fake_upstream.py")]
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    figures: dict[str, dict[str, list[float]]] = {name: {"req/s": [], "req/CPU-s": [], "chunks/s": []}
                                                  for name in trees}
    seconds = round(max(1, args.duration))
    print(f"c=32, {seconds} s per run, {args.rounds} rounds; {'tree':<7}{'req/s':>9}{'req/CPU-s':>11}{'chunks/s':>10}")
    with (process(pinned(1, [*fake, "--port", str(upstream_port), "--chunks", "4"]), f"{upstream}/models",
                  work / "upstream.log"),
          process(pinned(1, [*fake, "--port", str(stream_port), "--chunks", str(STREAM_CHUNKS)]),
                  f"{stream_upstream}/models", work / "stream.log")):
        for round_ in range(args.rounds):
            order = list(trees.items()) if round_ % 2 == 0 else list(reversed(trees.items()))
            for name, tree in order:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                command = pinned(0, ["env", f"PYTHONPATH={tree}", str(BIN / "llm-gateway"), "serve", "--config",
                                     str(config), "--port", str(port)])
                with process(command, f"{url}/ready", work / f"{name}.log") as pid:
                    wrk(f"{url}/v1/chat/completions", named_script, 32, 2)  # warm-up
                    spent_before = cpu_seconds(pid)
                    named = wrk(f"{url}/v1/chat/completions", named_script, 32, seconds)
                    spent = cpu_seconds(pid) - spent_before
                    streamed = wrk(f"{url}/v1/chat/completions", stream_script, 32, seconds)
                row = {"req/s": named.requests_per_s, "req/CPU-s": named.requests_per_s * seconds / spent,
                       "chunks/s": streamed.requests_per_s * STREAM_CHUNKS}
                for key, value in row.items():
                    figures[name][key].append(value)
                print(f"round {round_ + 1}: {name:<7}{row['req/s']:>9,.0f}{row['req/CPU-s']:>11,.0f}"
                      f"{row['chunks/s']:>10,.0f}", flush=True)
    for name, values in figures.items():
        summary = ", ".join(f"{key} {statistics.mean(v):,.0f} ± {statistics.stdev(v) if len(v) > 1 else 0:,.0f}"
                            for key, v in values.items())
        print(f"{name}: {summary}")


if __name__ == "__main__":
    main()
