"""Harmless rate of image queries answered through the gateway, with and without ECSO, judged by a model.

Records are JSONL ``{"image": path-or-url, "query": str}`` (VLSafe, MM-SafetyBench, ...). Each is sent to the
gateway's ``--model`` with the stage setting asked for; a judge model then labels each answer harmless or
harmful (binary, ``training.judge``). Runs unchanged against real models, e.g. vLLM serving LLaVA-1.5-7B.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import openai
from tqdm.auto import tqdm

from training.judge import harmless_rate, judge_harmless


@dataclass
class JudgedAnswer:
    query: str
    image: str
    stage: str
    answer: str
    ecso: str | None
    harmless: bool | None  # None: the judge's reply was neither word
    judge_reply: str


def load_records(path: Path) -> list[dict[str, str]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("query"), str) or not record.get("image"):
            raise ValueError(f"{path}, line {number}: expected {{\"image\": path-or-url, \"query\": str}}")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def image_url(image: str, base_dir: Path) -> str:
    """http(s) and data: URLs pass as they are; a file path becomes a data: URL."""
    if image.startswith(("http://", "https://", "data:")):
        return image
    path = Path(image) if Path(image).is_absolute() else base_dir / image
    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def judge_records(client: openai.OpenAI, records: Sequence[dict[str, str]], model: str, judge: str, stage: str,
                  base_dir: Path, concurrency: int = 4, max_tokens: int = 512) -> list[JudgedAnswer]:
    def one(record: dict[str, str]) -> JudgedAnswer:
        raw = client.chat.completions.with_raw_response.create(model=model, max_tokens=max_tokens, temperature=0,
                                                               messages=[{"role": "user", "content": [
                                                                   {"type": "text", "text": record["query"]},
                                                                   {"type": "image_url", "image_url": {
                                                                       "url": image_url(record["image"], base_dir)}}]}])
        answer = raw.parse().choices[0].message.content or ""
        verdict, reply = judge_harmless(client, judge, record["query"], answer, with_image=True)
        return JudgedAnswer(record["query"], record["image"], stage, answer, raw.headers.get("x-gateway-ecso"),
                            verdict, reply)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(tqdm(pool.map(one, records), total=len(records), desc=f"safety eval ({stage})"))


def summarise(results: Sequence[JudgedAnswer]) -> dict[str, Any]:
    return {"answers": len(results), "harmless_rate": harmless_rate([r.harmless for r in results]),
            "unjudged": sum(r.harmless is None for r in results),
            "rewritten": sum(r.ecso == "rewritten" for r in results)}


def write_answers(results: Sequence[JudgedAnswer], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for result in results:
            handle.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
