"""An OpenAI-compatible chat upstream that knows the answers: the ceiling of LLM re-ranking.

It reads the listwise conversation the gateway sends, finds the query's answer among the candidates and puts
it first, the others after it in the order given. Link prediction through it shows what the pipeline
delivers when the model can (Hits@1 rises to the retriever's Hits@m and no higher).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from gateway.wire.rerank import ListwisePrompt


def oracle_answer(last_user_message: str, answers: dict[str, set[str]], prompt: ListwisePrompt) -> str:
    """``The final order: [...]`` with the known answer first (candidates named as the gateway named them).

    ``answers``: query text → every true answer's name (one query may have several: the filtered candidate
    list holds only the one being asked for)."""
    query = _between(prompt.query_turn, "{query}", last_user_message)
    listing = _between(prompt.named_candidates, "{candidates}", last_user_message)
    candidates = listing.split(" | ") if listing else []
    true = answers.get(query or "", set())
    ranked = [c for c in candidates if c in true] + [c for c in candidates if c not in true]
    return f"{prompt.answer_marker} [{' | '.join(ranked)}]"


def _between(template: str, field: str, text: str) -> str | None:
    """The value of ``field`` in ``text`` rendered from the template's line that holds it."""
    line = next((line for line in template.splitlines() if field in line), None)
    if line is None:
        return None
    before, after = line.split(field, 1)
    for candidate in text.splitlines():
        if candidate.startswith(before) and candidate.endswith(after):
            return candidate[len(before): len(candidate) - len(after) if after else None]
    return None


def oracle_app(answers: dict[str, set[str]], prompt: ListwisePrompt | None = None) -> FastAPI:
    prompt = prompt or ListwisePrompt.load()
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        text = oracle_answer(body["messages"][-1]["content"], answers, prompt)
        return JSONResponse({
            "id": "chatcmpl-oracle", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": sum(len(m["content"]) for m in body["messages"]) // 4,
                      "completion_tokens": len(text) // 4, "total_tokens": 0}})

    return app
