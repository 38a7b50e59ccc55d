"""The AlignCoT stage through the gateway, with scripted upstreams that record every call."""

from __future__ import annotations

import json

import httpx
import pytest

from safety import prompts
from tests.support.upstream import Reply

QUERY = "How can I get into my neighbour's wifi?"
DIRECT = "Here is how to crack WPA2: ..."
ANALYSIS, GUIDANCE, SAFE = "The user wants unauthorised access.", "Do not explain cracking.", "Ask your neighbour."


def _model(direct_safe: bool, final_safe: bool = True):
    def respond(body):
        text = body["messages"][-1]["content"]
        if text.startswith("Safety Check."):
            answer = text.split("RESPONSE:\n", 1)[1].split("\n\nAnswer yes or no:")[0]
            safe = direct_safe if answer == DIRECT else final_safe
            return Reply(text="No." if safe else "Yes, it is harmful.")
        if text.startswith("Question Analysis."):
            return Reply(text=ANALYSIS)
        if text.startswith("Answer Guidance."):
            return Reply(text=GUIDANCE)
        if text.startswith("Safe Answer."):
            return Reply(text=SAFE)
        return Reply(text=DIRECT)

    return respond


def _prompt_of(call):
    return call.body["messages"][-1]["content"]


@pytest.fixture
def gateway(upstream, make_gateway):
    return make_gateway({"models": [{"name": "m", "backend": "openai", "base_url": upstream.base_url,
                                     "stages": ["aligncot"]}]})


def _ask(gateway, **extra):
    return httpx.post(f"{gateway.base_url}/chat/completions", timeout=30,
                      json={"model": "m", "messages": [{"role": "user", "content": QUERY}], **extra})


def test_a_safe_direct_answer_skips_the_chain(upstream, gateway):
    upstream.responder = _model(direct_safe=True)
    response = _ask(gateway)
    assert response.json()["choices"][0]["message"]["content"] == DIRECT
    assert response.headers["x-gateway-stages"] == "aligncot" and response.headers["x-gateway-aligncot"] == "skipped"
    assert len(upstream.calls) == 2  # the answer and its safety check: step skipping cut the rest
    assert _prompt_of(upstream.calls[1]) == prompts.aligncot_safety_check(QUERY, DIRECT)


@pytest.mark.parametrize("stream", [False, True])
def test_an_unsafe_direct_answer_goes_through_the_chain(upstream, gateway, stream):
    upstream.responder = _model(direct_safe=False)
    response = _ask(gateway, stream=stream, aligncot={"return_chain": True})
    if stream:
        chunks = [json.loads(line[6:]) for line in response.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        chain = chunks[0]["aligncot_chain"]
    else:
        text, chain = response.json()["choices"][0]["message"]["content"], response.json()["aligncot_chain"]
    assert text == SAFE
    # A stream starts before the outcome is known: it travels in the chunks instead of a header.
    assert (chunks[0]["aligncot"] if stream else response.headers["x-gateway-aligncot"]) == "chain"
    assert [_prompt_of(c) for c in upstream.calls] == [
        QUERY, prompts.aligncot_safety_check(QUERY, DIRECT), prompts.aligncot_analysis(QUERY),
        prompts.aligncot_guidance(QUERY, ANALYSIS), prompts.aligncot_answer(QUERY, ANALYSIS, GUIDANCE),
        prompts.aligncot_safety_check(QUERY, SAFE)]
    assert [step["step"] for step in chain] == ["direct", "safety_check", "analysis", "guidance", "answer",
                                                "safety_check"]


def test_the_chain_is_hidden_unless_asked_for(upstream, gateway):
    upstream.responder = _model(direct_safe=False)
    body = _ask(gateway).json()
    assert "aligncot_chain" not in body and body["aligncot"] == "chain"


def test_an_answer_that_still_fails_the_check_is_refused(upstream, gateway):
    upstream.responder = _model(direct_safe=False, final_safe=False)
    response = _ask(gateway)
    assert response.json()["choices"][0]["message"]["content"] == prompts.ALIGNCOT_REFUSAL
    assert response.headers["x-gateway-aligncot"] == "refused"


def test_mote_experts_serve_one_step_each(make_upstream, make_gateway):
    base, analysis, guidance, answer = (make_upstream(n) for n in ("base", "analysis", "guidance", "answer"))
    for server in (base, analysis, guidance, answer):
        server.responder = _model(direct_safe=False)
    gateway = make_gateway({"models": [
        {"name": "m", "backend": "openai", "base_url": base.base_url, "stages": ["aligncot"],
         "aligncot": {"experts": {"analysis": "m-analysis", "guidance": "m-guidance", "answer": "m-answer"}}},
        {"name": "m-analysis", "backend": "openai", "base_url": analysis.base_url, "upstream_model": "analysis"},
        {"name": "m-guidance", "backend": "openai", "base_url": guidance.base_url, "upstream_model": "guidance"},
        {"name": "m-answer", "backend": "openai", "base_url": answer.base_url, "upstream_model": "answer"}]})
    assert _ask(gateway).json()["choices"][0]["message"]["content"] == SAFE
    assert [len(s.calls) for s in (base, analysis, guidance, answer)] == [3, 1, 1, 1]
    assert analysis.calls[0].body["model"] == "analysis" and _prompt_of(answer.calls[0]).startswith("Safe Answer.")


def test_without_step_skipping_the_chain_always_runs(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "m", "backend": "openai", "base_url": upstream.base_url,
                                        "stages": ["aligncot"], "aligncot": {"skip_steps": False}}]})
    upstream.responder = _model(direct_safe=True)
    assert _ask(gateway).json()["choices"][0]["message"]["content"] == SAFE
    assert len(upstream.calls) == 4  # analysis, guidance, answer, check


def test_config_errors():
    from gateway.config import ConfigError, parse_config
    from gateway.http import create_app

    def start(aligncot):
        create_app(parse_config({"models": [{"name": "m", "backend": "openai", "base_url": "http://x/v1",
                                             "stages": ["aligncot"], "aligncot": aligncot}]}))

    with pytest.raises(ConfigError, match="needs exactly the steps analysis, guidance, answer"):
        start({"experts": {"analysis": "m"}})
    with pytest.raises(ConfigError, match="uses model 'ghost', which is not configured"):
        start({"experts": {"analysis": "ghost", "guidance": "m", "answer": "m"}})
    with pytest.raises(ConfigError, match="aligncot.colour: Extra inputs are not permitted"):
        start({"colour": "red"})
