"""The proxy hot path, side by side in one run: a canned upstream alone, this gateway with every feature on
(API key, per-key limits and dollar budget, the usage store, metrics, request ids, the JSON access log; `auto`
routing for its row), and the LiteLLM proxy in front of the same upstream. Each server is pinned to core 0
with ``taskset``; the upstream and ``wrk`` share the other core. Prints added latency at concurrency 1 and
requests/s at concurrency 32.

    .venv/bin/python benchmarks/hot_path.py [--duration 8] [--router-checkpoint DIR] [--litellm] [--granian]
        [--workers-row] [--replicas-row] [--usage-row] [--soak 100000]

Needs ``wrk`` (Debian: ``apt-get install wrk``). ``--litellm`` installs LiteLLM, ``--granian`` the granian server,
each into its own venv under ``~/.cache/llm-gateway/bench`` on first use (never a project dependency).
``--workers-row`` adds the gateway with two workers and Redis-shared limits (``redis-server`` needed), unpinned:
on a 2-core machine they share the cores with the upstream, Redis and wrk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIN, HERE, free_port, percentile, wait_ready  # noqa: E402

KEY = "sk-" + hashlib.sha256(b"llm-gateway hot-path benchmark").hexdigest()  # LiteLLM refuses weak keys
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = Path.home() / ".cache" / "llm-gateway" / "bench" / "litellm-venv"
GRANIAN_VERSION = "2.8.9"
GRANIAN_VENV = Path.home() / ".cache" / "llm-gateway" / "bench" / "granian-venv"
STREAM_CHUNKS = 100


def pinned(core: int | None, command: list[str]) -> list[str]:
    if core is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return command
    return ["taskset", "-c", str(core), *command]


@contextmanager
def process(command: list[str], ready_url: str, log: Path, timeout_s: float = 120) -> Iterator[int]:
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ready_url, timeout_s)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, script: Path, connections: int, duration_s: float) -> WrkResult:
    command = pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency", "-s",
                         str(script), url])
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
                     _ms(latency["50"]), _ms(latency["99"]), int(errors.group(1)) if errors else 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (a supervisor's workers)."""
    pids, total = [pid], 0
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        pids += [int(child) for child in children]
    return total / os.sysconf("SC_CLK_TCK")


def wrk_per_cpu(pid: int, url: str, script: Path, duration_s: float) -> tuple[WrkResult, float]:
    """A c=32 run and the requests served per CPU-second the server (all its processes) spent on them."""
    before = cpu_seconds(pid)
    result = wrk(url, script, 32, duration_s)
    spent = cpu_seconds(pid) - before
    return result, result.requests_per_s * round(max(1, duration_s)) / spent if spent else float("nan")


def wrk_script(directory: Path, name: str, model: str, stream: bool) -> Path:
    body = json.dumps({"model": model, "stream": stream, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]})
    path = directory / f"{name}.lua"
    path.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.headers["Authorization"] = "Bearer {KEY}"\nwrk.body = {json.dumps(body)}\n')
    return path


def time_to_first_byte(urls: dict[str, str], model_of: dict[str, str], requests: int = 300
                       ) -> dict[str, tuple[float, float]]:
    """p50/p99 ms until the first body byte of a streamed answer, one request at a time, per server; the servers
    take turns request by request, so that they share whatever else the machine is doing."""
    times: dict[str, list[float]] = {name: [] for name in urls}
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=30) as client:
        for i in range(requests + 20):
            for name, url in urls.items():
                payload = {"model": model_of[name], "stream": True, "max_tokens": 4,
                           "messages": [{"role": "user", "content": "hi"}]}
                started = time.perf_counter()
                with client.stream("POST", url, json=payload) as response:
                    body = response.iter_raw()
                    next(body)
                    elapsed = time.perf_counter() - started
                    for _ in body:
                        pass
                if i >= 20:  # warm-up
                    times[name].append(elapsed)
    return {name: (percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000) for name, values in times.items()}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak_rss(pid: int, url: str, script: Path, requests: int, rate: float) -> tuple[int, int, float, float]:
    """About ``requests`` requests at c=32 (the duration is estimated from ``rate``): requests sent, non-2xx,
    RSS before and after."""
    before = rss_mib(pid)
    command = pinned(1, ["wrk", "-t1", "-c32", f"-d{max(1, round(requests / rate))}s", "-s", str(script), url])
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    sent = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return sent, int(errors.group(1)) if errors else 0, before, rss_mib(pid)


def side_venv(venv: Path, command: str, requirement: str) -> Path:
    """``command`` from ``requirement`` installed once into a venv of its own (never a project dependency)."""
    binary = venv / "bin" / command
    if not binary.exists():
        print(f"installing {requirement} into {venv} (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", requirement], check=True)
    return binary


def ensure_granian() -> Path:
    """granian in its own venv that also sees this project's venv and source (a ``.pth`` file), so that it
    imports the gateway."""
    binary = side_venv(GRANIAN_VENV, "granian", f"granian[uvloop]=={GRANIAN_VERSION}")
    site = next((GRANIAN_VENV / "lib").glob("python3*/site-packages"))
    project_site = next((BIN.parent / "lib").glob("python3*/site-packages"))
    (site / "llm_gateway_project.pth").write_text(f"{HERE.parent}\n{project_site}\n")
    return binary


def gateway_config(upstream: str, stream_upstream: str, checkpoint: Path | None, store: Path) -> dict:
    model = {"backend": "openai", "base_url": upstream, "upstream_model": "fake",
             "price": {"input_per_1m": 0.5, "output_per_1m": 1.5}}
    config: dict = {
        "models": [{"name": "bench", **model}, {"name": "bench-stream", **model, "base_url": stream_upstream},
                   # the same upstream under two addresses: two replicas, for the cost of choosing one
                   {"name": "bench-replicas", **{k: v for k, v in model.items() if k != "base_url"},
                    "endpoints": [{"base_url": upstream}, {"base_url": upstream.replace("127.0.0.1", "localhost")}]}],
        "auth": {"api_keys": [{"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "name": "bench",
                               "requests_per_minute": 10**9, "tokens_per_minute": 10**12,
                               "budget_usd": 10**6, "budget_period": "month"}]},
        "server": {"log_level": "info"},  # the JSON access log stays on
        "usage_store": f"sqlite:///{store}",  # a row per request, and the key's dollar budget checked
    }
    if checkpoint is not None:
        names = json.loads((checkpoint / "router.json").read_text())["llm_names"]
        config["models"] += [{"name": name, **model} for name in names]
        config["router"] = {"checkpoint": str(checkpoint)}
    return config


def row(name: str, c1: WrkResult | None, c32: WrkResult | None, base: WrkResult | None, note: str = "") -> None:
    added = f"{c1.p50_ms - base.p50_ms:8.2f}" if c1 and base else f"{'–':>8}"
    p50 = f"{c1.p50_ms:8.2f}{c1.p99_ms:8.2f}" if c1 else f"{'–':>8}{'–':>8}"
    rate = f"{c32.requests_per_s:12,.0f}" if c32 else f"{'–':>12}"
    errors = (c1.errors if c1 else 0) + (c32.errors if c32 else 0)
    print(f"{name:<34}{p50}{added}{rate}  {note}{' NON-2XX: ' + str(errors) if errors else ''}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--router-checkpoint", type=Path, help="adds the `auto` row")
    parser.add_argument("--litellm", action="store_true", help="add LiteLLM (installed into its own venv)")
    parser.add_argument("--granian", action="store_true",
                        help="add the gateway served by granian instead of uvicorn (granian in its own venv)")
    parser.add_argument("--workers-row", action="store_true", help="add the gateway with --workers 2")
    parser.add_argument("--replicas-row", action="store_true",
                        help="add a model with two endpoints (prefix-affinity) in front of the same upstream")
    parser.add_argument("--usage-row", action="store_true",
                        help="what the usage store and budget cost: the gateway with and without them, alternated")
    parser.add_argument("--usage-rounds", type=int, default=4, help="--usage-row: alternations")
    parser.add_argument("--soak", type=int, default=0, metavar="N",
                        help="then send about N more requests (c=32) and print the gateway's RSS before and after")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")

    cores = os.cpu_count() or 1
    if cores >= 2:  # this process is a client too (time to first byte): keep it off the servers' core
        os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="hot-path-"))
    ports = {name: free_port() for name in ("upstream", "stream", "gateway", "litellm", "granian")}
    upstream = f"http://127.0.0.1:{ports['upstream']}/v1"
    stream_upstream = f"http://127.0.0.1:{ports['stream']}/v1"
    config_file = work / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(gateway_config(upstream, stream_upstream, args.router_checkpoint,
                                                         work / "usage.sqlite3")))
    scripts = {name: wrk_script(work, name, model, stream) for name, model, stream in
               [("fake", "fake", False), ("bench", "bench", False), ("auto", "auto", False),
                ("replicas", "bench-replicas", False),
                ("fake-stream", "fake", True), ("bench-stream", "bench-stream", True)]}
    fake_upstream = [sys.executable, str(HERE / "fake_upstream.py")]
    d = args.duration

    def measure(url: str, script: str) -> tuple[WrkResult, WrkResult]:
        wrk(url, scripts[script], 32, 2)  # warm-up
        return wrk(url, scripts[script], 1, d), wrk(url, scripts[script], 32, d)

    print(f"{os.cpu_count()} cores; servers on core 0, upstream and wrk on core 1; {d:g} s per run; "
          f"a 4-token chat body; c=1 for latency, c=32 for throughput")
    print(f"{'server':<34}{'p50 ms':>8}{'p99 ms':>8}{'added':>8}{'req/s c=32':>12}")
    with (process(pinned(1, [*fake_upstream, "--port", str(ports["upstream"]), "--chunks", "4"]),
                  f"{upstream}/models", work / "upstream.log"),
          process(pinned(1, [*fake_upstream, "--port", str(ports["stream"]), "--chunks", str(STREAM_CHUNKS)]),
                  f"{stream_upstream}/models", work / "stream.log")):
        direct = measure(f"{upstream}/chat/completions", "fake")
        row("canned upstream alone", *direct, None)
        gateway_command = pinned(0, [str(BIN / "llm-gateway"), "serve", "--config", str(config_file), "--port",
                                     str(ports["gateway"])])
        gateway_url = f"http://127.0.0.1:{ports['gateway']}"
        with process(gateway_command, f"{gateway_url}/ready", work / "gateway.log") as gateway_pid:
            named = measure(f"{gateway_url}/v1/chat/completions", "bench")
            row("llm-gateway, model named", *named, direct[0], "usage store + budget")
            if args.replicas_row:
                replicated = measure(f"{gateway_url}/v1/chat/completions", "replicas")
                row("llm-gateway, two endpoints", *replicated, direct[0], "prefix-affinity")
            # What two workers on two free cores would do, measured where the cores are not free: requests per
            # CPU-second, one worker against two (equal figures: no shared bottleneck, scaling with the cores).
            _, one_per_cpu = wrk_per_cpu(gateway_pid, f"{gateway_url}/v1/chat/completions", scripts["bench"], d)
            if args.router_checkpoint:
                routed = measure(f"{gateway_url}/v1/chat/completions", "auto")
                row("llm-gateway, model auto", *routed, direct[0])
            if args.soak:
                soak = soak_rss(gateway_pid, f"{gateway_url}/v1/chat/completions", scripts["bench"], args.soak,
                                named[1].requests_per_s)
            stream_direct = wrk(f"{stream_upstream}/chat/completions", scripts["fake-stream"], 32, d)
            stream_gateway = wrk(f"{gateway_url}/v1/chat/completions", scripts["bench-stream"], 32, d)
            ttfb = time_to_first_byte({"upstream": f"{stream_upstream}/chat/completions",
                                       "gateway": f"{gateway_url}/v1/chat/completions"},
                                      {"upstream": "fake", "gateway": "bench-stream"})
            ttfb_direct, ttfb_gateway = ttfb["upstream"], ttfb["gateway"]
        if args.usage_row:  # with and without the usage store (and so the budget, which needs it), alternated
            bare = yaml.safe_load(config_file.read_text())
            bare["usage_store"] = False
            for key in bare["auth"]["api_keys"]:
                key.pop("budget_usd")
            bare_file = work / "gateway-no-store.yaml"
            bare_file.write_text(yaml.safe_dump(bare))
            rounds: dict[str, list[float]] = {"usage store + budget": [], "no usage store, no budget": []}
            for _ in range(args.usage_rounds):
                for label, path in (("usage store + budget", config_file), ("no usage store, no budget", bare_file)):
                    command = pinned(0, [str(BIN / "llm-gateway"), "serve", "--config", str(path), "--port",
                                         str(ports["gateway"])])
                    with process(command, f"{gateway_url}/ready", work / "gateway-ab.log"):
                        wrk(f"{gateway_url}/v1/chat/completions", scripts["bench"], 32, 2)  # warm-up
                        rounds[label].append(wrk(f"{gateway_url}/v1/chat/completions", scripts["bench"], 32,
                                                 d).requests_per_s)
            for label, values in rounds.items():
                mean = sum(values) / len(values)
                spread = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
                print(f"{'llm-gateway, model named':<34}{'':>24}{mean:12,.0f}  {label}, {len(values)} alternated "
                      f"runs: ±{spread:,.0f} ({', '.join(f'{v:,.0f}' for v in values)})")
            with_store, without = (sum(v) / len(v) for v in rounds.values())
            print(f"{'':<34}the usage store and budget cost {100 * (1 - with_store / without):.1f}% of the "
                  "throughput (means)")
        if args.granian:  # the same app under granian instead of uvicorn
            command = pinned(0, [str(ensure_granian()), "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                                 "--port", str(ports["granian"]), "--workers", "1", "--runtime-threads", "1",
                                 "--no-ws", "--no-access-log", "--backlog", "4096", "benchmarks.granian_app:app"])
            os.environ["LLM_GATEWAY_CONFIG"] = str(config_file)
            url = f"http://127.0.0.1:{ports['granian']}"
            with process(command, f"{url}/ready", work / "granian.log"):
                under_granian = measure(f"{url}/v1/chat/completions", "bench")
                row(f"llm-gateway under granian {GRANIAN_VERSION}", *under_granian, direct[0])
        if args.workers_row:  # per-key limits across workers need Redis: a local redis-server
            redis_port = free_port()
            shared = {**yaml.safe_load(config_file.read_text()), "limits": {"redis_url": f"redis://127.0.0.1:{redis_port}/0"}}
            shared_file = work / "gateway-workers.yaml"
            shared_file.write_text(yaml.safe_dump(shared))
            command = ["taskset", "-c", f"0-{cores - 1}", str(BIN / "llm-gateway"), "serve", "--config",
                       str(shared_file), "--port", str(ports["gateway"]), "--workers", "2"]
            redis = subprocess.Popen(pinned(1, ["redis-server", "--port", str(redis_port), "--save", "",
                                                "--appendonly", "no"]), stdout=subprocess.DEVNULL)
            one_redis_command = pinned(0, [str(BIN / "llm-gateway"), "serve", "--config", str(shared_file), "--port",
                                           str(ports["gateway"])])
            with process(one_redis_command, f"{gateway_url}/ready", work / "gateway-redis.log") as pid:
                wrk(f"{gateway_url}/v1/chat/completions", scripts["bench"], 32, 2)
                one_redis, one_redis_per_cpu = wrk_per_cpu(pid, f"{gateway_url}/v1/chat/completions",
                                                           scripts["bench"], d)
                row("llm-gateway, 1 worker + Redis limits", None, one_redis, None,
                    f"{one_redis_per_cpu:,.0f} requests per CPU-second")
            with process(command, f"{gateway_url}/ready", work / "gateway-2.log") as supervisor:
                wrk(f"{gateway_url}/v1/chat/completions", scripts["bench"], 32, 2)
                two, two_per_cpu = wrk_per_cpu(supervisor, f"{gateway_url}/v1/chat/completions", scripts["bench"], d)
                row("llm-gateway, 2 workers + Redis", None, two, None,
                    f"{two.requests_per_s / one_redis.requests_per_s:.2f}x one pinned worker + Redis (unpinned); "
                    f"{two_per_cpu:,.0f} requests per CPU-second (in-process limits, 1 worker: {one_per_cpu:,.0f})")
            redis.terminate()
        if args.litellm:
            litellm_config = work / "litellm.yaml"
            litellm_config.write_text(yaml.safe_dump({
                "model_list": [{"model_name": "bench", "litellm_params": {"model": "openai/fake", "api_base": upstream,
                                                                           "api_key": "none"}}],
                "general_settings": {"master_key": KEY}}))  # the same key check as the gateway's
            binary = side_venv(LITELLM_VENV, "litellm", f"litellm[proxy]=={LITELLM_VERSION}")
            command = pinned(0, [str(binary), "--config", str(litellm_config), "--port", str(ports["litellm"]),
                                 "--num_workers", "1"])
            url = f"http://127.0.0.1:{ports['litellm']}"
            with process(command, f"{url}/health/liveliness", work / "litellm.log", timeout_s=300):
                litellm = measure(f"{url}/v1/chat/completions", "bench")
                row(f"LiteLLM proxy {LITELLM_VERSION}, 1 worker", *litellm, direct[0])
    print(f"\nstreaming, {STREAM_CHUNKS} chunks per answer, c=32:")
    print(f"  upstream alone {stream_direct.requests_per_s * STREAM_CHUNKS:10,.0f} chunks/s   "
          f"llm-gateway {stream_gateway.requests_per_s * STREAM_CHUNKS:10,.0f} chunks/s")
    print(f"  time to first byte, c=1: upstream p50 {ttfb_direct[0]:.2f} ms p99 {ttfb_direct[1]:.2f} ms; "
          f"llm-gateway p50 {ttfb_gateway[0]:.2f} ms p99 {ttfb_gateway[1]:.2f} ms; "
          f"added p50 {ttfb_gateway[0] - ttfb_direct[0]:.2f} ms")
    if args.soak:
        print(f"\nsoak: {soak[0]:,} requests at c=32 ({soak[1]} non-2xx); gateway RSS {soak[2]:.1f} MiB before, "
              f"{soak[3]:.1f} MiB after")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
