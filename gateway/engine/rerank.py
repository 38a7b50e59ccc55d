"""``/v1/rerank`` on any configured model: a re-ranker (``task: rerank``) scores each document itself, an
embedding model by cosine similarity to the query, and a chat model (or ``auto``) re-ranks the list as a
whole in KICGPT's conversation (``gateway.wire.rerank``), through the same routing, stages and failover as chat."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.core.config import RerankConfig
from gateway.core.errors import InvalidRequestError, ModelNotFoundError, UpstreamError
from gateway.engine.accounting import RequestRecord
from gateway.engine.answers import Answer
from gateway.engine.chat import CompletionService
from gateway.wire.openai import ChatCompletionRequest, EmbeddingRequest
from gateway.wire.rerank import (
    ListwisePrompt,
    RerankRequest,
    candidate_labels,
    complete_order,
    listwise_messages,
    order_scores,
    parse_final_order,
    rerank_response,
)

# Headers of a listwise re-ranking: how many candidates the model's answer placed (the rest kept their order).
LISTWISE_PLACED_HEADER = "x-gateway-rerank-placed"


@dataclass
class Reranked:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Reranker:
    def __init__(self, service: CompletionService, config: RerankConfig) -> None:
        self.service = service
        self.config = config
        self.prompt = ListwisePrompt.load(config.listwise_prompt) if config.listwise_prompt \
            else ListwisePrompt.load()

    async def rerank(self, request: RerankRequest, record: RequestRecord) -> Reranked:
        routed = self.service.routed is not None and request.model == self.service.routed.name
        backend = None if routed else self.service.pool.get(request.model)
        if not routed and backend is None:
            known = ", ".join(self.service.public_model_names())
            raise ModelNotFoundError(f"The model '{request.model}' does not exist; available models: {known}",
                                     param="model")
        task = "generate" if backend is None else backend.config.task
        if backend is not None and task == "rerank":
            record.answered_by(backend.name)
            body = await backend.rerank(request)
            record.add_usage(body.get("usage"))
            return Reranked(body)
        if backend is not None and task == "embed":
            record.answered_by(backend.name)
            return Reranked(await self._by_embeddings(request, backend.name, record))
        if task == "generate":
            return await self._listwise(request, record)
        raise InvalidRequestError(f"model '{request.model}' is a {task} model and cannot re-rank; name a re-ranker, "
                                  "an embedding model or a chat model", param="model")

    async def _by_embeddings(self, request: RerankRequest, name: str, record: RequestRecord) -> dict[str, Any]:
        """Cosine similarity of each document's embedding to the query's (a bi-encoder re-ranker)."""
        answer = await self.service.embed(EmbeddingRequest(model=name, input=[request.query, *request.texts()]),
                                          record)
        vectors = [item["embedding"] for item in sorted(answer.body["data"], key=lambda item: item["index"])]
        if len(vectors) != len(request.documents) + 1 or any(not isinstance(v, list) for v in vectors):
            raise UpstreamError(f"embedding model '{name}' did not return one vector per text")
        query, *documents = vectors
        scores = [round(_cosine(query, document), 6) for document in documents]
        usage = answer.body.get("usage") or {}
        return rerank_response(request, name, scores, int(usage.get("prompt_tokens", 0)))

    async def _listwise(self, request: RerankRequest, record: RequestRecord) -> Reranked:
        texts = request.texts()
        if len(texts) > self.config.max_listwise_documents:
            raise InvalidRequestError(f"{len(texts)} documents; a chat model re-ranks at most "
                                      f"{self.config.max_listwise_documents} in one request (rerank."
                                      "max_listwise_documents)", param="documents")
        labels, _ = candidate_labels(texts, self.prompt)
        chat = ChatCompletionRequest(model=request.model, temperature=0,
                                     max_tokens=_answer_budget(labels, self.prompt.answer_marker),
                                     messages=listwise_messages(self.prompt, request.query, texts,
                                                                request.demonstrations))  # type: ignore[arg-type]
        answer = await self.service.serve("chat", chat, record)
        assert isinstance(answer, Answer)  # not streamed
        text = answer.body["choices"][0]["message"].get("content") or ""
        placed = parse_final_order(text, texts, self.prompt)
        usage = answer.body.get("usage") or {}
        model = answer.body.get("model") or request.model
        body = rerank_response(request, model, order_scores(complete_order(placed, len(texts))),
                               int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        return Reranked(body, {**answer.headers, LISTWISE_PLACED_HEADER: f"{len(placed)}/{len(texts)}"})


def _answer_budget(labels: list[str], marker: str) -> int:
    """Completion tokens enough for the marker and every label once (about 3 characters a token, 2 tokens of
    separator each), with some slack."""
    return len(marker) // 3 + sum(len(label) for label in labels) // 3 + 2 * len(labels) + 16


def _cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0
