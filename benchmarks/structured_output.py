"""Constrained decoding on the embedded SmolLM2 through a live gateway: generation speed and how often the answer
parses, free text vs response_format json_schema vs json_object (llguidance masks every step).

    .venv/bin/python benchmarks/structured_output.py [--requests 10] [--max-tokens 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jsonschema
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import embedded_gateway  # noqa: E402

CITY = {"type": "object", "additionalProperties": False, "required": ["city", "population", "country", "capital"],
        "properties": {"city": {"type": "string", "maxLength": 24}, "population": {"type": "integer"},
                       "country": {"type": "string", "enum": ["France", "Germany", "Italy", "Other"]},
                       "capital": {"type": "boolean"}}}
FORMATS = {"free text": None, "json_schema": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
           "json_object": {"type": "json_object"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=40)
    args = parser.parse_args()
    with embedded_gateway() as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
        print(f"smollm2-135m, 'Describe Paris as JSON.', temperature 1, seeds 0-{args.requests - 1}, "
              f"max_tokens {args.max_tokens}")
        print(f"{'format':<12} {'tokens/s':>8} {'parse':>6} {'valid':>6} {'cut by length':>13}")
        for name, response_format in FORMATS.items():
            tokens = seconds = parsed = valid = cut = 0.0
            for seed in range(args.requests):
                extra = {"response_format": response_format} if response_format else {}
                started = time.perf_counter()
                reply = client.chat.completions.create(
                    model="smollm2-135m", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                    max_tokens=args.max_tokens, temperature=1.0, seed=seed, **extra)
                seconds += time.perf_counter() - started
                tokens += reply.usage.completion_tokens
                cut += reply.choices[0].finish_reason == "length"
                try:
                    value = json.loads(reply.choices[0].message.content or "")
                    parsed += 1
                    jsonschema.validate(value, CITY)
                    valid += 1
                except (json.JSONDecodeError, jsonschema.ValidationError):
                    pass
            n = args.requests
            print(f"{name:<12} {tokens / seconds:>8.1f} {parsed:>3.0f}/{n} {valid:>3.0f}/{n} {cut:>10.0f}/{n}")


if __name__ == "__main__":
    main()
