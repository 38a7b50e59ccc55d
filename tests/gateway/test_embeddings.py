"""``POST /v1/embeddings`` with the ``openai`` SDK: the packaged MiniLM served with no config (contract:
``all-minilm-l6-v2`` beside ``smollm2-135m``), and ``task: embed`` upstreams passed through."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

PARAPHRASES = ["A cat is sitting on the mat.", "A kitten sits on a rug."]
UNRELATED = "The central bank raised interest rates again."


def _vectors(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([item.embedding for item in response.data])


@pytest.mark.slow
def test_the_packaged_minilm_is_served_with_no_config(embedded_gateway):
    client = embedded_gateway.client()
    assert {m.id for m in client.models.list()} >= {"smollm2-135m", "all-minilm-l6-v2"}
    response = client.embeddings.create(model="all-minilm-l6-v2", input=[*PARAPHRASES, UNRELATED])
    vectors = _vectors(response)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > 0.5 > vectors[0] @ vectors[2] + 0.3  # paraphrases close, unrelated far
    assert response.model == "all-minilm-l6-v2" and response.usage.prompt_tokens > 3 * 5
    alias = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=PARAPHRASES[0])
    assert np.allclose(_vectors(alias)[0], vectors[0], atol=1e-5)


@pytest.mark.slow
def test_float_and_base64_encodings_and_token_ids_agree(embedded_gateway):
    url = f"{embedded_gateway.url}/v1/embeddings"
    floats = httpx.post(url, json={"model": "all-minilm-l6-v2", "input": "hello world",
                                   "encoding_format": "float"}, timeout=30).json()
    packed = httpx.post(url, json={"model": "all-minilm-l6-v2", "input": "hello world",
                                   "encoding_format": "base64"}, timeout=30).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats["data"][0]["embedding"], atol=1e-6)
    tokenizer = embedded_gateway_tokenizer()
    ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    by_ids = httpx.post(url, json={"model": "all-minilm-l6-v2", "input": [ids]}, timeout=30).json()
    assert np.allclose(by_ids["data"][0]["embedding"], floats["data"][0]["embedding"], atol=1e-4)


def embedded_gateway_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from routers.encoders.contextual import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("body, param, words", [
    ({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 128}, "dimensions", "384-dimensional"),
    ({"model": "all-minilm-l6-v2", "input": [[10**9]]}, "input", "outside the vocabulary"),
    ({"model": "all-minilm-l6-v2", "input": []}, "input", "empty"),
    ({"model": "smollm2-135m", "input": "x"}, "model", "does not serve embeddings"),
])
def test_bad_embedding_requests_are_clear_400s(embedded_gateway, body, param, words):
    response = httpx.post(f"{embedded_gateway.url}/v1/embeddings", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]


@pytest.mark.slow
def test_chat_on_an_embedding_model_names_the_right_endpoint(embedded_gateway):
    with pytest.raises(openai.BadRequestError, match="use POST /v1/embeddings"):
        embedded_gateway.client().chat.completions.create(model="all-minilm-l6-v2",
                                                          messages=[{"role": "user", "content": "hi"}])


def test_upstream_embedding_models_are_passed_through(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "e5-large", "backend": "openai", "task": "embed",
                                        "base_url": upstream.base_url, "upstream_model": "intfloat/e5-large-v2"}]})
    response = gateway.client().embeddings.create(model="e5-large", input=["ab", "abcd"], dimensions=3,
                                                  encoding_format="float", extra_body={"truncate_prompt_tokens": 8})
    assert _vectors(response).tolist() == [[2.0, 0.0, 1.0], [4.0, 1.0, 1.0]]
    assert response.model == "e5-large" and response.usage.prompt_tokens == 2
    sent = upstream.calls[-1].body
    assert sent["model"] == "intfloat/e5-large-v2" and sent["dimensions"] == 3 and sent["truncate_prompt_tokens"] == 8
