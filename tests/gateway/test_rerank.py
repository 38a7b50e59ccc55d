"""``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``) against live gateways: a chat model as listwise
re-ranker (KICGPT's conversation, strict parsing, nothing lost), an upstream's own ``/v1/rerank`` passed
through (with Cohere's SDK as the client), a local embedding model by cosine, a local cross-encoder, and
bad input as clear 400s. The listwise parser and its fallback are checked on messy answers first."""

from __future__ import annotations

import random
import re

import cohere
import httpx
import pytest

from gateway.wire.rerank import (
    LISTWISE_PROMPT_FILE,
    ListwisePrompt,
    candidate_labels,
    complete_order,
    listwise_messages,
    order_scores,
    parse_final_order,
)
from tests.support.upstream import Reply

PROMPT = ListwisePrompt.load()
FRUITS = ["apple", "banana", "cherry", "damson"]


# ---- the strict parser and the fallback -------------------------------------------------------------------

@pytest.mark.parametrize("answer, expected", [
    ("The final order: [cherry | apple | banana | damson]", [2, 0, 1, 3]),
    ("Sure! Let me think.\nThe final order: [Cherry|  APPLE ]\nHope this helps.", [2, 0]),  # extra text, case
    ("The final order: [cherry | cherry | apple | cherry]", [2, 0]),  # repeats count once
    ("The final order: [mango | cherry | kiwi | apple]", [2, 0]),  # invented names dropped
    ("The final order: [\"damson\" | 'banana' | *apple*]", [3, 1, 0]),  # quoted names
    ("I think apple is best, then cherry.", []),  # no marker: nothing is trusted
    ("The final order: [a | b]\nWait, the final order: [banana | apple]", [1, 0]),  # the last marker counts
    ("The final order: [cherry | apple | ban", [2, 0]),  # cut off by max_tokens mid-name
    ("The final order: damson | apple\n", [3, 0]),  # no brackets, one line
    ("The final order: []", []),
])
def test_the_parser_reads_only_what_the_model_clearly_said(answer, expected):
    assert parse_final_order(answer, FRUITS, PROMPT) == expected


def test_long_documents_are_numbered_and_the_numbers_parsed():
    documents = ["x" * 200, "a second long document " * 10, "short"]
    labels, numbered = candidate_labels(documents, PROMPT)
    assert numbered and labels == ["1", "2", "3"]
    assert parse_final_order("The final order: [[3] | 1 | 3 | 7]", documents, PROMPT) == [2, 0]
    turn = listwise_messages(PROMPT, "q", documents)[-1]["content"]
    assert "[2] a second long document" in turn and "Query: q" in turn


def test_duplicate_names_fall_back_to_numbers():
    assert candidate_labels(["Paris", "paris", "Rome"], PROMPT) == (["1", "2", "3"], True)


def test_the_conversation_has_acknowledged_knowledge_turns():
    facts = [f"fact {i}" for i in range(20)]
    messages = listwise_messages(PROMPT, "which fruit is red?", FRUITS, facts)
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant"] * 4 + ["user"]  # instruction + ceil(20 / 8) knowledge turns + query
    assert all(m["content"] == PROMPT.acknowledgement for m in messages if m["role"] == "assistant")
    assert "fact 0" in messages[2]["content"] and "fact 19" in messages[6]["content"]
    assert "Candidates: [apple | banana | cherry | damson]" in messages[-1]["content"]


def test_labelled_knowledge_groups_are_a_turn_each_under_their_label():
    from gateway.wire.rerank import DemonstrationGroup

    groups = [DemonstrationGroup(label="Examples used to analogy:", facts=["(cherry, is, red)", "(lime, is, green)"]),
              "a loose fact", DemonstrationGroup(label="Examples that give supplement information:",
                                                 facts=["(apple, grows on, trees)"])]
    messages = listwise_messages(PROMPT, "which fruit is red?", FRUITS, groups)
    turns = [m["content"] for m in messages if m["role"] == "user"][1:-1]
    assert turns == ["Examples used to analogy:\n(cherry, is, red)\n(lime, is, green)", "Knowledge:\na loose fact",
                     "Examples that give supplement information:\n(apple, grows on, trees)"]
    assert all(m["content"] == PROMPT.acknowledgement for m in messages if m["role"] == "assistant")


def test_completing_an_order_never_loses_or_repeats_a_candidate():
    """The fallback invariant: whatever the model answers, the final ranking is a permutation that keeps the
    given order for what the model left out, so a relevant candidate in the top m stays in the top m."""
    rng = random.Random(0)
    names = [f"entity {i}" for i in range(30)]
    for _ in range(300):
        said = [rng.choice(names + ["made up", "entity 99"]) for _ in range(rng.randint(0, 40))]
        answer = rng.choice(["", "Here you go. "]) + "The final order: [" + " | ".join(said) + "]"
        order = complete_order(parse_final_order(answer, names, PROMPT), len(names))
        assert sorted(order) == list(range(len(names)))
        placed = [i for i in dict.fromkeys(names.index(s) for s in said if s in names)]
        assert order[: len(placed)] == placed
        left_out = [i for i in range(len(names)) if i not in placed]
        assert order[len(placed):] == left_out
    scores = order_scores([2, 0, 1])
    assert scores[2] > scores[0] > scores[1] > 0


# ---- live gateways ----------------------------------------------------------------------------------------

def _listwise_judge(body):
    """A chat upstream that re-ranks: it puts the candidates in reverse alphabetical order, with chatter, one
    invented name and one repeat, and leaves out the last candidate."""
    turn = body["messages"][-1]["content"]
    candidates = re.search(r"Candidates: \[(.*)\]", turn).group(1).split(" | ")
    ranked = sorted(candidates, reverse=True)[:-1]
    return Reply(text=f"Happy to help!\nThe final order: [{ranked[0]} | durian | {' | '.join(ranked)}]")


def test_a_chat_model_reranks_listwise_and_nothing_is_lost(upstream, make_gateway):
    upstream.responder = _listwise_judge
    gateway = make_gateway({"models": [{"name": "judge", "backend": "openai", "base_url": upstream.base_url}]})
    response = httpx.post(f"{gateway.url}/v1/rerank", timeout=30, json={
        "model": "judge", "query": "which fruit is red?", "documents": FRUITS, "top_n": 3,
        "demonstrations": ["a cherry is a small red fruit", "a banana is yellow"]})
    assert response.status_code == 200, response.text
    body = response.json()
    # reverse alphabetical, apple left out by the model but kept (last); top_n cuts to three
    assert [r["index"] for r in body["results"]] == [3, 2, 1]
    assert [r["document"]["text"] for r in body["results"]] == ["damson", "cherry", "banana"]
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == 1.0
    assert response.headers["x-gateway-rerank-placed"] == "3/4"
    assert response.headers["x-gateway-routed-model"] == "judge"
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    sent = upstream.calls[-1].body
    assert sent["temperature"] == 0 and sent["max_tokens"] > 20
    sdk = cohere.ClientV2(api_key="unused", base_url=gateway.url).rerank(
        model="judge", query="which fruit is red?", documents=FRUITS, top_n=2)  # what Cohere's SDK users call
    assert [r.index for r in sdk.results] == [3, 2]
    assert "a cherry is a small red fruit" in sent["messages"][2]["content"]
    assert sent["messages"][1]["content"] == PROMPT.acknowledgement


def test_an_answer_without_an_order_keeps_the_given_order(upstream, make_gateway):
    upstream.responder = lambda body: Reply(text="I cannot rank these.")
    gateway = make_gateway({"models": [{"name": "judge", "backend": "openai", "base_url": upstream.base_url}]})
    response = httpx.post(f"{gateway.url}/rerank", json={"model": "judge", "query": "q", "documents": FRUITS,
                                                         "return_documents": False}, timeout=30)
    assert [r["index"] for r in response.json()["results"]] == [0, 1, 2, 3]
    assert "document" not in response.json()["results"][0]
    assert response.headers["x-gateway-rerank-placed"] == "0/4"


def test_a_custom_listwise_prompt_file_is_used(upstream, make_gateway, tmp_path):
    custom = tmp_path / "prompt.yaml"
    wording = LISTWISE_PROMPT_FILE.read_text()
    custom.write_text(wording.replace("Order all {count} candidates", "Rank the {count} fruits"))
    upstream.responder = _listwise_judge
    gateway = make_gateway({"models": [{"name": "judge", "backend": "openai", "base_url": upstream.base_url}],
                            "rerank": {"listwise_prompt": str(custom)}})
    httpx.post(f"{gateway.url}/v1/rerank", json={"model": "judge", "query": "q", "documents": FRUITS}, timeout=30)
    assert "Rank the 4 fruits" in upstream.calls[-1].body["messages"][-1]["content"]


def test_a_rerank_upstream_is_passed_through_with_the_cohere_sdk(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "bge-reranker", "backend": "openai", "task": "rerank",
                                        "base_url": upstream.base_url, "upstream_model": "BAAI/bge-reranker"}]})
    client = cohere.ClientV2(api_key="unused", base_url=gateway.url)
    response = client.rerank(model="bge-reranker", query="red fruit", top_n=2,
                             documents=["a yellow banana", "a red cherry", "red fruit salad"])
    assert [r.index for r in response.results] == [2, 1]
    assert response.results[0].relevance_score == pytest.approx(1.0)
    sent = upstream.calls[-1]
    assert sent.path == "/v1/rerank" and sent.body["model"] == "BAAI/bge-reranker" and sent.body["top_n"] == 2


def test_an_embedding_model_reranks_by_cosine(make_gateway):
    gateway = make_gateway({"models": [{"name": "minilm", "backend": "local", "task": "embed",
                                        "encoder": "minilm"}]})
    documents = ["The stock market fell sharply today.", "Kittens love to chase balls of yarn.",
                 "Preheat the oven before baking bread."]
    response = httpx.post(f"{gateway.url}/v1/rerank", timeout=60, json={
        "model": "minilm", "query": "What do young cats like to play with?", "documents": documents})
    results = response.json()["results"]
    assert results[0]["index"] == 1 and results[0]["relevance_score"] > results[1]["relevance_score"] + 0.2
    assert -1 <= results[-1]["relevance_score"] <= 1 and response.json()["usage"]["prompt_tokens"] > 10


def test_a_local_cross_encoder_scores_each_pair(make_gateway, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from routers.encoders.contextual import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "tiny-cross-encoder")
    tokenizer.save_pretrained(tmp_path / "tiny-cross-encoder")
    gateway = make_gateway({"models": [{"name": "tiny-ce", "backend": "local", "task": "rerank",
                                        "path": str(tmp_path / "tiny-cross-encoder")}]})
    documents = ["first document", "the second one", "a third, longer document than the others"]
    body = httpx.post(f"{gateway.url}/v1/rerank", json={"model": "tiny-ce", "query": "a query",
                                                        "documents": documents}, timeout=60).json()
    expected = CrossEncoder(str(tmp_path / "tiny-cross-encoder")).predict([("a query", d) for d in documents])
    assert {r["index"]: r["relevance_score"] for r in body["results"]} == pytest.approx(
        dict(enumerate(float(s) for s in expected)), abs=1e-5)
    assert [r["index"] for r in body["results"]] == sorted(range(3), key=lambda i: -expected[i])
    chat = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30,
                      json={"model": "tiny-ce", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "/v1/rerank" in chat.json()["error"]["message"]


@pytest.mark.parametrize("body, status, param, words", [
    ({"model": "judge", "documents": ["a"]}, 400, "query", "required"),
    ({"model": "judge", "query": "q", "documents": []}, 400, "documents", "at least 1"),
    ({"model": "judge", "query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n", "greater than or equal"),
    ({"model": "judge", "query": "q", "documents": [3]}, 400, "documents", "document 0 is a int"),
    ({"model": "judge", "query": "q", "documents": ["a"] * 101}, 400, "documents", "at most 100"),
    ({"model": "nope", "query": "q", "documents": ["a"]}, 404, "model", "does not exist"),
    ({"model": "voice", "query": "q", "documents": ["a"]}, 400, "model", "cannot re-rank"),
])
def test_bad_rerank_requests_are_clear_errors(upstream, make_gateway, body, status, param, words):
    gateway = make_gateway({"models": [{"name": "judge", "backend": "openai", "base_url": upstream.base_url},
                                       {"name": "voice", "backend": "openai", "task": "speech",
                                        "base_url": upstream.base_url}]})
    response = httpx.post(f"{gateway.url}/v1/rerank", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]
    assert upstream.calls == []
    assert httpx.post(f"{gateway.url}/v1/rerank", content=b"{not json", timeout=30).status_code == 400


def test_every_rerank_path_needs_the_api_key(upstream, make_gateway):
    upstream.responder = _listwise_judge
    gateway = make_gateway({"models": [{"name": "judge", "backend": "openai", "base_url": upstream.base_url}],
                            "auth": {"api_keys": [{"name": "team", "key": "sk-test-rerank-key"}]}})
    body = {"model": "judge", "query": "q", "documents": FRUITS}
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        assert httpx.post(f"{gateway.url}{path}", json=body, timeout=30).status_code == 401
        ok = httpx.post(f"{gateway.url}{path}", json=body, timeout=30,
                        headers={"authorization": "Bearer sk-test-rerank-key"})
        assert ok.status_code == 200, ok.text
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'gateway_requests_total{endpoint="rerank",model="judge",status="200"} 3.0' in metrics


@pytest.mark.slow
def test_auto_routes_the_listwise_reranking(make_upstream, make_gateway, router_checkpoint):
    from tests.gateway.test_routing import SHORT

    pool = {name: make_upstream(name) for name in SHORT.values()}
    for server in pool.values():
        server.responder = _listwise_judge
    gateway = make_gateway({"models": [{"name": name, "backend": "openai", "base_url": server.base_url}
                                       for name, server in pool.items()],
                            "router": {"model_name": "auto", "checkpoint": str(router_checkpoint),
                                       "model_map": SHORT}})
    response = httpx.post(f"{gateway.url}/v1/rerank", timeout=30, json={
        "model": "auto", "query": "Solve for x: 3x + 5 = 20", "documents": ["x = 3", "x = 5", "x = 25"]})
    assert response.status_code == 200, response.text
    routed = response.headers["x-gateway-routed-model"]
    assert routed in pool and pool[routed].calls  # the routed model answered the listwise conversation
    assert response.headers["x-gateway-route-scores"] and response.json()["model"] == routed
    assert [r["index"] for r in response.json()["results"]] == [1, 0, 2]  # the judge's reverse alphabetical order
