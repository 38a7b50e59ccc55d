"""``/v1/rerank`` (the Cohere / Jina / vLLM shape) and the listwise LLM re-ranking format (KICGPT's).

A chat model re-ranks as in KICGPT: an instruction it acknowledges, turns of knowledge in context
(``demonstrations``) each acknowledged, then the query and the candidates, answered by
``The final order: [a | b | ...]``. The conversation's wording is data, a YAML file
(``LISTWISE_PROMPT_FILE`` unless the config names another). The answer is parsed strictly, and whatever the
model left out follows in the order it was given, so a re-ranking never loses a candidate.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import yaml  # type: ignore[import-untyped]  # types-PyYAML is not installed
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_DOCUMENTS = 1000
LISTWISE_PROMPT_FILE = Path(__file__).parent / "prompts" / "listwise_rerank.yaml"


class DemonstrationGroup(BaseModel):
    """Knowledge of one kind for a listwise re-ranking, shown as one turn under its label."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=500, description="what these facts are, e.g. 'Examples used to "
                                                                 "analogy:'")
    facts: list[str] = Field(min_length=1)


class RerankRequest(BaseModel):
    """Cohere v1/v2, Jina and vLLM re-rank bodies; unknown vendor fields go on to re-rank upstreams."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    query: str = Field(min_length=1, description="what the documents are ranked against")
    documents: list[str | dict[str, Any]] = Field(min_length=1, max_length=MAX_DOCUMENTS,
                                                  description="strings, or objects (their 'text' field, else "
                                                              "their fields as 'key: value' lines)")
    top_n: int | None = Field(default=None, ge=1, description="return only the best top_n (default: all)")
    return_documents: bool = Field(default=True, description="include each document in its result")
    demonstrations: list[str | DemonstrationGroup] | None = Field(
        default=None, description="listwise (chat model) re-ranking: knowledge shown to the model before the "
                                  "query, e.g. related facts: strings (grouped into turns), or labelled groups "
                                  "({\"label\": ..., \"facts\": [...]}, a turn each, KICGPT's analogy and "
                                  "supplement examples)")

    # Rate limits reserve the default completion allowance (a listwise re-ranking generates an answer).
    completion_token_limit: ClassVar[int | None] = None

    @field_validator("documents", mode="before")
    @classmethod
    def _strings_or_objects(cls, documents: Any) -> Any:
        if isinstance(documents, list):
            bad = next((i for i, d in enumerate(documents) if not isinstance(d, str | dict)), None)
            if bad is not None:
                raise ValueError(f"document {bad} is a {type(documents[bad]).__name__}; each document must be a "
                                 "string or an object")
        return documents

    def texts(self) -> list[str]:
        return [document_text(document) for document in self.documents]

    def upstream_body(self, model: str) -> dict[str, Any]:
        return {**self.model_dump(exclude_unset=True), "model": model}


def document_text(document: str | dict[str, Any]) -> str:
    if isinstance(document, str):
        return document
    if isinstance(document.get("text"), str):
        return document["text"]
    return "\n".join(f"{key}: {value}" for key, value in document.items())


def rerank_response(request: RerankRequest, model: str, scores: list[float], prompt_tokens: int,
                    completion_tokens: int = 0) -> dict[str, Any]:
    """Results best first (ties keep the documents' order), cut to ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: request.top_n or len(scores)]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if request.return_documents:
            document = request.documents[index]
            result["document"] = {"text": document} if isinstance(document, str) else document
        results.append(result)
    total = prompt_tokens + completion_tokens
    return {"id": f"rerank-{uuid.uuid4().hex}", "object": "rerank", "created": int(time.time()), "model": model,
            "results": results,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total},
            "meta": {"billed_units": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}}


# ---- listwise re-ranking by a chat model ---------------------------------------------------------------------


@dataclass(frozen=True)
class ListwisePrompt:
    """The wording of the listwise conversation (see ``prompts/listwise_rerank.yaml`` for each field)."""

    instruction: str
    acknowledgement: str
    demonstration_turn: str
    demonstrations_per_turn: int
    max_demonstration_turns: int
    query_turn: str
    named_candidates: str
    numbered_candidates: str
    max_name_chars: int
    answer_marker: str
    system: str | None = None
    labelled_demonstration_turn: str = "{label}\n{demonstrations}"

    @classmethod
    def load(cls, path: Path | str = LISTWISE_PROMPT_FILE) -> ListwisePrompt:
        return _load_prompt(str(path))


@cache
def _load_prompt(path: str) -> ListwisePrompt:
    fields = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    try:
        return ListwisePrompt(**fields)
    except TypeError as exc:
        raise ValueError(f"listwise prompt file {path}: {exc}") from None


def candidate_labels(texts: list[str], prompt: ListwisePrompt) -> tuple[list[str], bool]:
    """How the model names each candidate: by its text when all are short and distinct (KICGPT's entity names),
    else by its number. Returns the labels and whether they are numbers."""
    keys = [_normalise(text) for text in texts]
    if all(0 < len(text) <= prompt.max_name_chars and "|" not in text and "\n" not in text for text in texts) \
            and len(set(keys)) == len(keys):
        return [" ".join(text.split()) for text in texts], False
    return [str(i + 1) for i in range(len(texts))], True


def listwise_messages(prompt: ListwisePrompt, query: str, texts: list[str],
                      demonstrations: list[str | DemonstrationGroup] | None = None) -> list[dict[str, str]]:
    """The conversation: instruction, acknowledged knowledge turns (a labelled group is a turn of its own;
    strings go ``demonstrations_per_turn`` to a turn), then the query with its candidates."""
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages += [{"role": "user", "content": prompt.instruction.strip()},
                 {"role": "assistant", "content": prompt.acknowledgement}]
    for turn in _knowledge_turns(prompt, demonstrations or [])[:prompt.max_demonstration_turns]:
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": prompt.acknowledgement}]
    labels, numbered = candidate_labels(texts, prompt)
    if numbered:
        listing = prompt.numbered_candidates.strip().format(
            candidates="\n".join(f"[{label}] {' '.join(text.split())}" for label, text in zip(labels, texts,
                                                                                                strict=True)))
    else:
        listing = prompt.named_candidates.strip().format(candidates=" | ".join(labels))
    messages.append({"role": "user", "content": prompt.query_turn.strip().format(query=query, candidates=listing,
                                                                                 count=len(texts))})
    return messages


def _knowledge_turns(prompt: ListwisePrompt, demonstrations: list[str | DemonstrationGroup]) -> list[str]:
    turns: list[str] = []
    loose: list[str] = []

    def flush() -> None:
        for start in range(0, len(loose), prompt.demonstrations_per_turn):
            batch = "\n".join(loose[start:start + prompt.demonstrations_per_turn])
            turns.append(prompt.demonstration_turn.strip().format(demonstrations=batch))
        loose.clear()

    for item in demonstrations:
        if isinstance(item, str):
            loose.append(item)
            continue
        flush()
        turns.append(prompt.labelled_demonstration_turn.strip().format(label=item.label,
                                                                        demonstrations="\n".join(item.facts)))
    flush()
    return turns


def parse_final_order(answer: str, texts: list[str], prompt: ListwisePrompt) -> list[int]:
    """The candidates' indices in the order the model gave after the last answer marker.

    Strict: nothing without the marker; names that are not candidates (invented) are dropped, repeats count
    once; a list cut off by the token limit keeps what was complete.
    """
    labels, numbered = candidate_labels(texts, prompt)
    lookup = {_normalise(label): i for i, label in enumerate(labels)}
    found = list(re.finditer(re.escape(prompt.answer_marker), answer, flags=re.IGNORECASE))
    if not found:
        return []
    rest = answer[found[-1].end():].lstrip(" \t")
    if rest.startswith("["):
        rest = rest[1:]
        closed = rest.find("]") if not numbered else _closing_bracket(rest)
        complete = closed >= 0
        rest = rest[:closed] if complete else rest
    else:
        complete = "\n" in rest
        rest = rest.split("\n", 1)[0]
    items = rest.split("|")
    if not complete and len(items) > 1:
        items = items[:-1]  # cut off mid-name by the token limit
    order: list[int] = []
    for item in items:
        key = _normalise(item.strip().strip("[]\"'`*.,").strip())
        index = lookup.get(key)
        if index is not None and index not in order:
            order.append(index)
    return order


def _closing_bracket(text: str) -> int:
    """The ``]`` that ends a list of numbers, which may themselves be written ``[3]``."""
    depth = 0
    for position, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            if depth == 0:
                return position
            depth -= 1
    return -1


def complete_order(order: list[int], count: int) -> list[int]:
    """``order`` followed by every candidate it left out, in the given order: nothing is ever lost."""
    seen = set(order)
    return order + [i for i in range(count) if i not in seen]


def order_scores(order: list[int]) -> list[float]:
    """Relevance scores from a ranking: 1 for the first, falling evenly to 1/n for the last."""
    scores = [0.0] * len(order)
    for position, index in enumerate(order):
        scores[index] = round(1 - position / len(order), 6)
    return scores


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())
