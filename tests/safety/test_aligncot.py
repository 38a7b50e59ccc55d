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
    from gateway.core.config import ConfigError, parse_config
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


# ---- the trained format (a MoTE model, or its per-step adapters) ---------------------------------------------

START, END = prompts.ALIGNCOT_START_MARKERS, prompts.ALIGNCOT_END_MARKERS


def _trained_model(direct_safe: bool, written: str | None = None):
    """A model trained by ``train mote``: it continues the assistant prefix it is given. With ``written``, a
    plain generation prompt gets that text (a model that writes its own steps)."""

    def respond(body):
        last = body["messages"][-1]
        if last["role"] == "user" and last["content"].startswith("Safety Check."):
            answer = last["content"].split("RESPONSE:\n", 1)[1].split("\n\nAnswer yes or no:")[0]
            return Reply(text="No." if direct_safe or answer != DIRECT else "Yes.")
        if last["role"] == "user":
            return Reply(text=written or "")
        prefix = last["content"]
        if prefix.endswith(START["analysis"]):
            return Reply(text=ANALYSIS)
        if prefix.endswith(START["guidance"]):
            return Reply(text=f" {GUIDANCE} ")
        return Reply(text=DIRECT if prefix == START["answer"] else SAFE)

    return respond


def _trained_gateway(make_gateway, upstreams, **settings):
    experts = {step: f"m-{step}" for step in prompts.ALIGNCOT_STEPS} if len(upstreams) > 1 else None
    models = [{"name": "m", "backend": "openai", "base_url": upstreams[0].base_url, "stages": ["aligncot"],
               "aligncot": {"format": "trained", **({"experts": experts} if experts else {}), **settings}}]
    models += [{"name": f"m-{step}", "backend": "openai", "base_url": server.base_url, "upstream_model": step}
               for step, server in zip(prompts.ALIGNCOT_STEPS, upstreams[1:], strict=False)]
    return make_gateway({"models": models})


@pytest.mark.parametrize("rules", ["frozen-start", "paper"])
def test_trained_format_feeds_each_step_adapter_the_sequence_it_was_trained_on(make_upstream, make_gateway, rules):
    base, analysis, guidance, answer = (make_upstream(n) for n in ("base", "analysis", "guidance", "answer"))
    for server in (base, analysis, guidance, answer):
        server.responder = _trained_model(direct_safe=False)
    gateway = _trained_gateway(make_gateway, [base, analysis, guidance, answer], token_rules=rules)
    response = _ask(gateway, max_tokens=40, temperature=0.7, aligncot={"return_chain": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == SAFE and response.headers["x-gateway-aligncot"] == "chain"
    assert [(e["step"], e["text"]) for e in body["aligncot_chain"]] == [
        ("direct", DIRECT), ("safety_check", "Yes."), ("analysis", ANALYSIS), ("guidance", GUIDANCE),
        ("answer", SAFE), ("safety_check", "No.")]
    close = END if rules == "paper" else dict.fromkeys(END, "")
    prefixes = {"analysis": START["analysis"],
                "guidance": f"{START['analysis']}{ANALYSIS}{close['analysis']}{START['guidance']}",
                "answer": f"{START['analysis']}{ANALYSIS}{close['analysis']}{START['guidance']}{GUIDANCE}"
                          f"{close['guidance']}{START['answer']}"}
    for step, server in (("analysis", analysis), ("guidance", guidance)):
        (call,) = server.calls
        assert call.body["messages"] == [{"role": "user", "content": QUERY},
                                         {"role": "assistant", "content": prefixes[step]}]
        assert call.body["continue_final_message"] is True and call.body["add_generation_prompt"] is False
        assert call.body["skip_special_tokens"] is False and call.body["temperature"] == 0
        assert set(START.values()) <= set(call.body["stop"])
        assert (set(END.values()) <= set(call.body["stop"])) == (rules == "paper")
    direct, final = answer.calls  # the direct answer as trained (the answer marker at once), then the chain's
    assert direct.body["messages"][-1] == {"role": "assistant", "content": START["answer"]}
    assert final.body["messages"][-1] == {"role": "assistant", "content": prefixes["answer"]}
    assert final.body["max_tokens"] == 40 and final.body["temperature"] == 0.7  # the client's sampling
    assert [_prompt_of(c).startswith("Safety Check.") for c in base.calls] == [True, True]


def test_trained_format_without_skipping_and_a_safe_direct_answer(make_upstream, make_gateway):
    base = make_upstream("base")
    base.responder = _trained_model(direct_safe=True)
    gateway = _trained_gateway(make_gateway, [base])
    assert _ask(gateway).json()["choices"][0]["message"]["content"] == DIRECT  # skipped: the direct answer passed
    assert [c.body["messages"][-1]["content"][:12] for c in base.calls] == [START["answer"], "Safety Check"]
    base.calls.clear()
    gateway = _trained_gateway(make_gateway, [base], skip_steps=False)
    assert _ask(gateway).json()["choices"][0]["message"]["content"] == SAFE
    assert len(base.calls) == 4  # analysis, guidance, answer, check: one model (a MoTE model) for every step


@pytest.mark.parametrize(("written", "outcome", "calls"), [
    # the MoTE model writes its whole chain in one generation, opening and closing its steps
    (f"{START['analysis']}{ANALYSIS}{END['analysis']}\n{START['guidance']}{GUIDANCE}{END['guidance']}"
     f"{START['answer']}{SAFE}", "chain", 2),
    # it answers at once (the paper's adaptive skipping); the answer fails the check, so the chain runs
    (f"{START['answer']}{DIRECT}", "chain", 6),
    # it stops after its analysis: the stage opens the next steps itself
    (f"{START['analysis']}{ANALYSIS}{END['analysis']}", "chain", 4),
    # no markers at all: the chain is asked step by step
    ("I am not sure.", "chain", 5)])
def test_paper_rules_one_generation_writes_its_own_steps(make_upstream, make_gateway, written, outcome, calls):
    base = make_upstream("base")
    base.responder = _trained_model(direct_safe=False, written=written)
    gateway = _trained_gateway(make_gateway, [base], token_rules="paper")
    body = _ask(gateway, aligncot={"return_chain": True}).json()
    assert body["choices"][0]["message"]["content"] == SAFE and body["aligncot"] == outcome
    chain = {e["step"]: e["text"] for e in body["aligncot_chain"]}
    assert chain["analysis"] == ANALYSIS and chain["guidance"] == GUIDANCE and chain["answer"] == SAFE
    assert len(base.calls) == calls
    first = base.calls[0].body
    assert first["messages"][-1] == {"role": "user", "content": QUERY} and first["add_generation_prompt"] is True
    assert first["stop"] == [END["answer"]] and first["skip_special_tokens"] is False


@pytest.mark.parametrize("final", [SAFE, ""])
def test_an_empty_answer_is_never_returned(make_upstream, make_gateway, final):
    """A step adapter that closes its step at once writes nothing. Measured with SmolLM2's adapters fed the
    trained sequence: 14 of 16 answers came back empty (a Safety Check passes nothing). An empty direct answer
    goes on to the chain; an empty final answer is refused."""
    base = make_upstream("base")
    trained = _trained_model(direct_safe=True)

    def respond(body):
        last = body["messages"][-1]
        if last["role"] == "assistant" and last["content"] == START["answer"]:
            return Reply(text="")  # the direct answer: a step marker at once, the stop string, nothing written
        if last["role"] == "assistant" and last["content"].endswith(START["answer"]):
            return Reply(text=final)
        return trained(body)

    base.responder = respond
    gateway = _trained_gateway(make_gateway, [base])
    response = _ask(gateway, aligncot={"return_chain": True})
    body = response.json()
    expected = SAFE if final else prompts.ALIGNCOT_REFUSAL
    assert body["choices"][0]["message"]["content"] == expected
    assert response.headers["x-gateway-aligncot"] == ("chain" if final else "refused")
    steps = [(e["step"], e["text"]) for e in body["aligncot_chain"]]
    assert steps[:2] == [("direct", ""), ("safety_check", "no answer: not returned")]
    checks = [c for c in base.calls if c.body["messages"][-1]["content"].startswith("Safety Check.")]
    assert len(checks) == (1 if final else 0)  # nothing empty reaches the check model
