"""The split the preference benchmarks share, by position in the HH-RLHF file: the first 400 records belong to
the soup (its fitting and test pairs) and to preference_eval.py; the Sr-DPO runs of sr_dpo_benchmark.sh train
on the rest and never see them.

    .venv/bin/python benchmarks/preference_split.py DATA {soup|runs} OUT.jsonl
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

SOUP_RECORDS = 400


def records(data: Path, part: str) -> list[str]:
    """The raw JSONL lines of one part: ``soup`` (the first SOUP_RECORDS) or ``runs`` (the rest)."""
    lines = gzip.open(data, "rt", encoding="utf-8").read().splitlines()
    return lines[:SOUP_RECORDS] if part == "soup" else lines[SOUP_RECORDS:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("part", choices=["soup", "runs"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    lines = records(args.data, args.part)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{args.part}: {len(lines)} records -> {args.out}")


if __name__ == "__main__":
    main()
