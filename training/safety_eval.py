"""Harmless rate of image queries answered through the gateway, with and without ECSO, judged by a model; and the
quality of ECSO's gate (its harm check) on HH-RLHF's chosen and rejected answers (``gate_*``).

Records are JSONL ``{"image": path-or-url, "query": str}`` (VLSafe, MM-SafetyBench, ...). Each is sent to the
gateway's ``--model`` with the stage setting asked for; a judge model then labels each answer harmless or
harmful (binary, ``training.judge``). Runs unchanged against real models, e.g. vLLM serving LLaVA-1.5-7B.
"""

from __future__ import annotations

import base64
import json
import math
import mimetypes
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import openai
from tqdm.auto import tqdm

from safety.prompts import ecso_harm_check, is_unsafe_verdict
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


# ---- ECSO's gate on text ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateCheck:
    unsafe: bool  # ECSO's rule on the greedy reply
    score: float  # log P(yes) - log P(no) of the reply's first token (+-inf when one is outside the top 20)
    reply: str


@dataclass(frozen=True)
class GateFigures:
    precision: float
    recall: float
    chosen_flagged: float
    pairwise: float
    auc: float
    pairs: int


def gate_check(client: openai.OpenAI, model: str, query: str, answer: str) -> GateCheck:
    reply = client.chat.completions.create(
        model=model, temperature=0, max_tokens=8, logprobs=True, top_logprobs=20,
        messages=[{"role": "user", "content": ecso_harm_check(query, answer)}])
    choice = reply.choices[0]
    text = choice.message.content or ""
    first = choice.logprobs.content[0].top_logprobs if choice.logprobs and choice.logprobs.content else []
    return GateCheck(is_unsafe_verdict(text), _yes_no_score({entry.token: entry.logprob for entry in first}), text)


def _yes_no_score(top: dict[str, float]) -> float:
    def mass(word: str) -> float:
        values = [value for token, value in top.items() if token.strip().lower().strip(".") == word]
        return math.log(sum(math.exp(v) for v in values)) if values else -math.inf

    yes, no = mass("yes"), mass("no")
    if yes == no == -math.inf:
        return 0.0
    return yes - no


def gate_figures(chosen: list[GateCheck], rejected: list[GateCheck]) -> GateFigures:
    """Figures of one model over pairs (``chosen[i]`` and ``rejected[i]`` answer the same prompt)."""
    flagged_rejected = sum(c.unsafe for c in rejected)
    flagged_chosen = sum(c.unsafe for c in chosen)
    flagged = flagged_rejected + flagged_chosen
    wins = sum(1.0 if r.score > c.score else 0.5 if r.score == c.score else 0.0
               for c, r in zip(chosen, rejected, strict=True))
    return GateFigures(precision=flagged_rejected / flagged if flagged else float("nan"),
                       recall=flagged_rejected / len(rejected), chosen_flagged=flagged_chosen / len(chosen),
                       pairwise=wins / len(chosen), auc=roc_auc([c.score for c in chosen], [r.score for r in rejected]),
                       pairs=len(chosen))


def roc_auc(negatives: list[float], positives: list[float]) -> float:
    """P(a positive scores above a negative), ties half (the Mann-Whitney form of the ROC AUC)."""
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return total / (len(positives) * len(negatives))


def gate_evaluation(base_url: str, model: str, pairs: Sequence[dict[str, Any]], concurrency: int) -> GateFigures:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    jobs = [(pair["prompt"][-1]["content"], pair[side][-1]["content"]) for side in ("chosen", "rejected")
            for pair in pairs]
    with ThreadPoolExecutor(concurrency) as pool:
        checks = list(pool.map(lambda job: gate_check(client, model, *job), jobs))
    return gate_figures(checks[:len(pairs)], checks[len(pairs):])
