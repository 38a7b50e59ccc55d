"""KICGPT on WN18RR, side by side in one run: the retriever alone, re-ranked by an upstream that knows the
answers (the pipeline's ceiling), and re-ranked by the embedded SmolLM2-135M.

    .venv/bin/python benchmarks/kg_link_predict.py --sample 250 --top-m 50 --smollm-top-m 50 --out /tmp/kg-bench

Every run is ``llm-gateway kg link-predict`` on the same random sample of test triples (both directions) with
the same trained retriever (trained once, copied). Runs resume from their predictions when started again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import uvicorn
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.harness import BIN, free_port, wait_ready  # noqa: E402

DATA = HERE.parent.parent / "shared" / "datasets" / "wn18rr"


def link_predict(out: Path, args: argparse.Namespace, *extra: str) -> dict:
    command = [str(BIN / "llm-gateway"), "kg", "link-predict", "--data", str(args.data), "--out", str(out),
               "--sample", str(args.sample), "--seed", str(args.seed), *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text())


def with_retriever(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("retriever.pt", "entity_vectors.npy"):
        if (source / name).exists() and not (target / name).exists():
            shutil.copy(source / name, target / name)
    return target


def start_oracle(args: argparse.Namespace) -> str:
    from training.kg.link_predict import load_task
    from training.kg.oracle import oracle_app

    task = load_task(args.data)
    answers: dict[str, set[str]] = {}
    for query in task.graph.queries("test"):
        answers.setdefault(task.query_text(query), set()).add(task.entities.labels[query.answer])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(oracle_app(answers), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    wait_ready(f"http://127.0.0.1:{port}/health")
    return f"http://127.0.0.1:{port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kg-bench"))
    parser.add_argument("--sample", type=int, default=250, help="test triples, each asked in both directions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-m", type=int, default=50)
    parser.add_argument("--smollm-top-m", type=int, default=50, help="candidates SmolLM2 re-ranks (KICGPT: 50)")
    parser.add_argument("--concurrency", type=int, default=4, help="SmolLM2 re-rankings in flight (the onnx "
                                                                   "engine decodes them in one batch)")
    parser.add_argument("--skip-smollm", action="store_true")
    args = parser.parse_args()

    reports = {"retriever": link_predict(args.out / "retriever", args)}
    oracle_config = args.out / "oracle-gateway.yaml"
    oracle_config.write_text(yaml.safe_dump({"models": [{"name": "oracle", "backend": "openai",
                                                         "base_url": start_oracle(args)}]}))
    for m in sorted({args.top_m, args.smollm_top_m}):
        out = with_retriever(args.out / "retriever", args.out / f"oracle-m{m}")
        reports[f"oracle, m={m}"] = link_predict(out, args, "--model", "oracle", "--config", str(oracle_config),
                                                 "--top-m", str(m))
    if not args.skip_smollm:
        out = with_retriever(args.out / "retriever", args.out / f"smollm2-m{args.smollm_top_m}")
        reports[f"smollm2-135m, m={args.smollm_top_m}"] = link_predict(
            out, args, "--model", "smollm2-135m", "--top-m", str(args.smollm_top_m), "--concurrency",
            str(args.concurrency))

    print(f"\nWN18RR test, {args.sample} random triples x 2 directions (seed {args.seed}), filtered")
    print(f"{'run':<24}{'queries':>8}{'MRR':>8}{'H@1':>7}{'H@3':>7}{'H@10':>7}{'H@m':>7}{'s/query':>9}{'placed':>8}")
    retriever = reports["retriever"]["retriever"]
    print(f"{'retriever alone':<24}{retriever['queries']:>8}{retriever['mrr']:>8.4f}{retriever['hits@1']:>7.1f}"
          f"{retriever['hits@3']:>7.1f}{retriever['hits@10']:>7.1f}{'':>7}{'':>9}{'':>8}")
    for name, report in reports.items():
        if "reranked" not in report:
            continue
        m = report["settings"]["top_m"]
        r = report["reranked"]
        print(f"{name:<24}{r['queries']:>8}{r['mrr']:>8.4f}{r['hits@1']:>7.1f}{r['hits@3']:>7.1f}{r['hits@10']:>7.1f}"
              f"{r[f'hits@{m}']:>7.1f}{report['seconds_per_query'].get('mean', 0):>9.2f}"
              f"{r['mean_candidates_placed_by_the_model']:>8.1f}")
        assert r["queries_whose_answer_left_the_top_m"] == 0
    full = reports["retriever"]["retriever_full_test"]
    print(f"retriever on the whole test set ({full['queries']} queries): MRR {full['mrr']:.4f}, "
          f"H@1 {full['hits@1']:.1f}, H@10 {full['hits@10']:.1f}")


if __name__ == "__main__":
    main()
