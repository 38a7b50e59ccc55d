"""``llm-gateway kg link-predict``: KICGPT on WN18RR — retriever, LLM re-ranking through the gateway's
``/v1/rerank``, filtered MRR / Hits@k of both in a JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_kg_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from training.kg import PROMPTS_FILE
    from training.kg.wordnet import WORDNET_DIR

    kg = commands.add_parser("kg", help="knowledge-graph completion with LLM re-ranking (KICGPT)")
    sub = kg.add_subparsers(dest="kg_command", required=True, metavar="COMMAND")
    predict = sub.add_parser("link-predict", help="retriever + listwise LLM re-ranking of the top m; filtered "
                                                  "MRR and Hits@1/3/10 in both directions",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    predict.add_argument("--data", required=True, type=Path, help="directory of train/valid/test.txt(.gz) "
                                                                   "triples (WN18RR)")
    predict.add_argument("--out", required=True, type=Path, help="report.json, predictions.jsonl (resumed from), "
                                                                  "the trained retriever")
    predict.add_argument("--wordnet", type=Path, default=WORDNET_DIR, help="WordNet 3.0 data files")
    predict.add_argument("--model", help="the chat model (or 'auto') that re-ranks; left out: the retriever alone")
    target = predict.add_mutually_exclusive_group()
    target.add_argument("--config", type=Path, help="start a gateway from this config (default: "
                                                    "$LLM_GATEWAY_CONFIG or the embedded model)")
    target.add_argument("--url", help="a running gateway's /v1 URL")
    predict.add_argument("--api-key", help="the gateway's API key, if it requires one")
    predict.add_argument("--top-m", type=int, default=50, help="candidates the model re-ranks (KICGPT: 50)")
    predict.add_argument("--sample", type=int, help="random test triples to ask, each in both directions "
                                                    "(default: all)")
    predict.add_argument("--seed", type=int, default=0)
    predict.add_argument("--concurrency", type=int, default=1, help="re-rank requests in flight")
    predict.add_argument("--prompts", type=Path, default=PROMPTS_FILE, help="YAML: how queries and facts are "
                                                                             "worded, demonstration counts")
    predict.add_argument("--listwise-prompt", type=Path, help="YAML: the re-ranking conversation (sets "
                                                              "rerank.listwise_prompt of the started gateway)")
    predict.add_argument("--retriever-epochs", type=int, default=4)
    predict.add_argument("--timeout", type=float, default=600.0, help="seconds per re-rank request")
    predict.set_defaults(handler=_link_predict)


def _link_predict(args: argparse.Namespace) -> int:
    from gateway.core.config import ConfigError, Settings, load_config
    from training.gateway_client import running_gateway
    from training.kg.link_predict import RunSettings, load_task, run
    from training.kg.retriever import RetrieverSettings

    if args.top_m < 1:
        raise ConfigError("--top-m must be at least 1")
    if args.listwise_prompt and args.url:
        raise ConfigError("--listwise-prompt configures a gateway this command starts; a running one (--url) "
                          "uses its own rerank.listwise_prompt")
    task = load_task(args.data, args.wordnet, args.prompts)
    settings = RunSettings(top_m=args.top_m, sample=args.sample, seed=args.seed, model=args.model,
                           concurrency=args.concurrency,
                           retriever=RetrieverSettings(epochs=args.retriever_epochs, seed=args.seed))
    if args.model is None:
        report = run(task, args.out, settings, None)
    else:
        config = None
        if not args.url:
            config = load_config(args.config or Settings().config)
            if args.listwise_prompt:
                config.rerank.listwise_prompt = args.listwise_prompt
            config.rerank.max_listwise_documents = max(config.rerank.max_listwise_documents, args.top_m)
        with running_gateway(config, args.url) as base_url:
            report = run(task, args.out, settings, _gateway_reranker(base_url, args.model, args.api_key,
                                                                     args.timeout))
    print(json.dumps({k: v for k, v in report.items() if k not in ("retriever_training",)}, indent=1))
    print(f"report: {args.out / 'report.json'}")
    return 0


def _gateway_reranker(base_url: str, model: str, api_key: str | None, timeout_s: float) -> Any:
    """Re-rank through the gateway's ``/v1/rerank``: the candidates' order and what the gateway said about it."""
    import httpx

    from gateway.core.config import ConfigError

    client = httpx.Client(timeout=timeout_s, headers={"authorization": f"Bearer {api_key}"} if api_key else {})

    def rerank(query: str, candidates: list[str],
               demonstrations: list[dict[str, Any]]) -> tuple[list[int], dict[str, Any]]:
        response = client.post(f"{base_url}/rerank", json={
            "model": model, "query": query, "documents": candidates, "demonstrations": demonstrations,
            "return_documents": False})
        if response.status_code != 200:
            raise ConfigError(f"the gateway refused the re-ranking ({response.status_code}): {response.text[:500]}"
                              " — the predictions so far are kept; run again to resume")
        placed = response.headers.get("x-gateway-rerank-placed", "0/0").split("/")[0]
        info = {"placed": int(placed), "answered_by": response.headers.get("x-gateway-routed-model")}
        return [result["index"] for result in response.json()["results"]], info

    return rerank
