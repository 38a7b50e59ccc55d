"""Do MoTE models write their own steps? Each run (``train mote --out DIR``) is served as trained (local
``mote:``) and asked, with a plain generation prompt and the markers kept in the text, to answer held-out
HH-RLHF prompts; the steps it opened itself are counted. Under the paper's token rules the model learned to
open and close its steps (adaptive inference needs it); under frozen-start it never predicted a marker.

    .venv/bin/python benchmarks/mote_markers.py --run frozen-start=reports/aligncot/mote-frozen-start \
        --run paper=reports/aligncot/mote-paper --limit 8
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from gateway.core.config import parse_config
from safety.prompts import ALIGNCOT_END_MARKERS, ALIGNCOT_START_MARKERS, aligncot_written_steps
from training.aligncot_runs import harmful_prompts
from training.gateway_client import openai_client, running_gateway


def shape_of(text: str) -> str:
    """What the model wrote, in the trained format's terms."""
    steps = [step for step, _ in aligncot_written_steps(text)]
    if steps == ["analysis", "guidance", "answer"]:
        return "whole chain"
    if steps == ["answer"]:
        return "answer at once"
    if steps:
        return "chain cut short: " + "+".join(steps)
    markers = sum(text.count(m) for m in (*ALIGNCOT_START_MARKERS.values(), *ALIGNCOT_END_MARKERS.values()))
    return "stray markers" if markers else "no markers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument("--prompts", type=Path, default=Path("../shared/datasets/hh-rlhf/harmless-base-test.jsonl.gz"))
    parser.add_argument("--start", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--out", type=Path, default=None, help="write the answers and counts as JSON")
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.run)
    config = parse_config({"models": [{"name": label, "backend": "local", "mote": directory}
                                      for label, directory in runs.items()]})
    prompts = harmful_prompts(args.prompts, args.start, args.limit)
    report: dict[str, dict] = {}
    with running_gateway(config) as base_url:
        client = openai_client(base_url)
        for label in runs:
            started, answers = time.monotonic(), []
            for prompt in prompts:
                text = client.chat.completions.create(
                    model=label, max_tokens=args.max_tokens, temperature=0,
                    messages=[{"role": "user", "content": prompt}],
                    extra_body={"skip_special_tokens": False}).choices[0].message.content or ""
                answers.append({"prompt": prompt, "text": text, "shape": shape_of(text)})
            counts = Counter(a["shape"] for a in answers)
            report[label] = {"counts": dict(counts), "seconds": round(time.monotonic() - started, 1),
                             "answers": answers}
            print(f"{label}: {len(prompts)} prompts, {report[label]['seconds']} s — "
                  + ", ".join(f"{shape} {n}" for shape, n in counts.most_common()))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
