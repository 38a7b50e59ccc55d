"""MoTE: per-token expert routing by step markers, exact adapter export, SFT on SmolLM2, serving the exported
adapters through the AlignCoT stage; AlignCoT data generation and evaluation commands."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LogitsProcessor

from gateway.backends.transformers.mote import (
    BASE,
    EXPERTS,
    NO_STEP,
    MoTELinear,
    StepRouting,
    attach_mote,
    load_mote,
    step_ids_from_markers,
)
from safety.prompts import ALIGNCOT_END_MARKERS, ALIGNCOT_START_MARKERS
from tests.support.servers import VENV_BIN
from tests.support.upstream import Reply
from tests.training.conftest import HH_RLHF_SAMPLE
from training.mote import MoTEConfig, export_step_adapters, train_mote

A, G, S = 901, 902, 903  # marker token ids in the hand-made sequences


def test_step_ids_follow_the_markers():
    ids = torch.tensor([[5, 6, A, 7, 8, G, 9, S, 10, 11],
                        [S, 1, 2, 3, 0, 0, 0, 0, 0, 0],
                        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    assert step_ids_from_markers(ids, [A, G, S]).tolist() == [
        [NO_STEP, NO_STEP, 0, 0, 0, 1, 1, 2, 2, 2],
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
        [NO_STEP] * 10]


def test_each_token_uses_its_steps_expert_plus_the_shared_one():
    torch.manual_seed(0)
    base = torch.nn.Linear(4, 3)
    routing = StepRouting()
    layer = MoTELinear(base, routing, n_steps=3, rank=2, lora_alpha=4, mix=0.5)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(1, 4, 4)
    routing.step_ids = torch.tensor([[NO_STEP, 0, 1, 2]])
    y = layer(x)
    c = 4 / 2

    def expert(e, v):
        return layer.lora_B[e] @ (layer.lora_A[e] @ v)

    for t, step in enumerate([NO_STEP, 0, 1, 2]):
        v = x[0, t]
        expected = base(v) + c * (expert(3, v) if step == NO_STEP else 0.5 * expert(step, v) + 0.5 * expert(3, v))
        assert torch.allclose(y[0, t], expected, atol=1e-5), t


def test_paper_rule_question_tokens_mix_a_step_expert_with_the_shared_one():
    torch.manual_seed(0)
    base = torch.nn.Linear(4, 3)
    routing = StepRouting()
    layer = MoTELinear(base, routing, n_steps=3, rank=2, lora_alpha=4, mix=0.3)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 3, 4)
    routing.step_ids = torch.tensor([[NO_STEP, NO_STEP, 2], [NO_STEP, 0, 0]])
    routing.question_expert = torch.tensor([1, 2])  # drawn per sequence
    y = layer(x)

    def expert(e, v):
        return layer.lora_B[e] @ (layer.lora_A[e] @ v)

    for b, steps in enumerate([[1, 1, 2], [2, 0, 0]]):  # question tokens take their sequence's drawn expert
        for t, step in enumerate(steps):
            v = x[b, t]
            expected = base(v) + 2 * (0.3 * expert(step, v) + 0.7 * expert(3, v))
            assert torch.allclose(y[b, t], expected, atol=1e-5), (b, t)


def test_paper_rule_markers_open_and_close_each_step_and_are_learned(tiny_causal_lm, tmp_path):
    from transformers import AutoTokenizer

    from training.mote import _learnable_marker_rows, encode_record

    markers = [*ALIGNCOT_START_MARKERS.values(), *ALIGNCOT_END_MARKERS.values()]
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    encoded = encode_record(tokenizer, _records()[0], 512, "paper")
    marker_ids = {tokenizer.convert_tokens_to_ids(t) for t in markers}
    in_sequence = [token for token in encoded["input_ids"] if token in marker_ids]
    assert len(in_sequence) == 6 and [t for t in encoded["labels"] if t in marker_ids] == in_sequence  # targets
    old = encode_record(tokenizer, _records()[0], 512)
    assert all(label == -100 for token, label in zip(old["input_ids"], old["labels"], strict=True)
               if token in marker_ids)  # today's rule: start markers only, never targets

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    vocabulary = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    before = model.get_input_embeddings().weight.detach().clone()
    tables = _learnable_marker_rows(model, vocabulary)
    optimizer = torch.optim.AdamW([{"params": tables, "weight_decay": 0.0}], lr=1e-2)
    ids = torch.tensor([encoded["input_ids"]])
    model(input_ids=ids, labels=torch.tensor([encoded["labels"]])).loss.backward()
    optimizer.step()
    after = model.get_input_embeddings().weight.detach()
    assert torch.equal(after[:vocabulary], before[:vocabulary])  # the model's own vocabulary is untouched
    assert not torch.equal(after[vocabulary:], before[vocabulary:])  # the markers learn

    out = tmp_path / "run"
    summary = train_mote(tiny_causal_lm, _records(4), out, MoTEConfig(rank=2, max_steps=2, batch_size=2,
                                                                      token_rules="paper"), progress=False)
    assert summary["config"]["token_rules"] == "paper"
    served = AutoModelForCausalLM.from_pretrained(out / BASE)  # the base that serving loads: learned marker rows
    rows = served.get_input_embeddings().weight.detach()[vocabulary:]
    assert rows.shape[0] == 6 and not torch.allclose(rows, rows[0].expand_as(rows))  # no longer all the mean
    assert torch.equal(served.get_input_embeddings().weight.detach()[:vocabulary], before[:vocabulary])
    assert ALIGNCOT_END_MARKERS["analysis"] in AutoTokenizer.from_pretrained(out / BASE).get_vocab()


def test_exported_adapters_equal_the_merged_experts(tiny_causal_lm, tmp_path):
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    config = MoTEConfig(rank=4, lora_alpha=8, mix=0.3)
    routing, layers = attach_mote(model, n_steps=3, rank=config.rank, lora_alpha=config.lora_alpha, mix=config.mix)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_(std=0.05)
    adapters = export_step_adapters(tiny_causal_lm, layers, config, tmp_path / "adapters")
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    for index, step in enumerate(["analysis", "guidance", "answer"]):
        routing.step_ids = torch.full_like(ids, index)
        with torch.no_grad():
            mote_logits = model(input_ids=ids).logits
            peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), adapters[step])
            peft_logits = peft(input_ids=ids).logits
        assert torch.allclose(mote_logits, peft_logits, atol=1e-4), step
        assert json.loads((adapters[step] / "adapter_config.json").read_text())["r"] == 8


class _ForceAt(LogitsProcessor):
    """Greedy decoding, except that decoding step ``at`` must write ``token`` (a generated step marker)."""

    def __init__(self, prompt_length: int, at: int, token: int) -> None:
        self.prompt_length, self.at, self.token = prompt_length, at, token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] - self.prompt_length == self.at:
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.token] = 0
            return forced
        return scores


@pytest.mark.parametrize("rules", ["frozen-start", "paper"])
def test_a_mote_model_served_as_trained_gives_the_training_logits(tiny_causal_lm, tmp_path, rules):
    """The served model (the run loaded by the local backend's ``load_mote``) decoding with a KV cache, a step
    marker in its prompt and another one it generates, against the training forward pass over the whole
    sequence (``attach_mote`` + the run's experts + step ids from the markers)."""
    from safetensors.torch import load_file
    from transformers import LogitsProcessorList

    from gateway.backends.transformers.backend import load_causal_lm

    out = tmp_path / "run"
    train_mote(tiny_causal_lm, _records(4), out, MoTEConfig(rank=2, max_steps=3, batch_size=2, learning_rate=3e-2,
                                                            token_rules=rules), progress=False)
    served, tokenizer, _ = load_causal_lm(out / BASE, "cpu")
    manifest = load_mote(served, tokenizer, out)
    assert manifest.token_rules == rules and manifest.end_markers == (() if rules == "frozen-start" else tuple(
        ALIGNCOT_END_MARKERS.values()))
    marker_ids = [tokenizer.convert_tokens_to_ids(m) for m in ALIGNCOT_START_MARKERS.values()]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "How do I pick a lock?"}],
                                           add_generation_prompt=True, tokenize=False) + "<|analysis|>The user"
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert marker_ids[0] in prompt_ids[0].tolist()
    with torch.no_grad():
        generated = served.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                    max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
                                    logits_processor=LogitsProcessorList([_ForceAt(prompt_ids.shape[1], 2,
                                                                                   marker_ids[1])]))
    sequence = generated.sequences
    assert sequence[0, prompt_ids.shape[1] + 2] == marker_ids[1]  # the guidance marker was generated
    decoded = torch.cat(generated.logits)  # the raw logits of each decoding step

    reference = AutoModelForCausalLM.from_pretrained(out / BASE)
    routing, layers = attach_mote(reference, n_steps=3, rank=2, lora_alpha=32.0, mix=0.5)
    experts = load_file(out / EXPERTS)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(experts[f"{name}.lora_A"])
            layer.lora_B.copy_(experts[f"{name}.lora_B"])
        routing.step_ids = step_ids_from_markers(sequence, marker_ids)
        routing.question_mean = rules == "paper"  # serving's expectation of the per-sequence draw
        trained = reference(input_ids=sequence).logits[0, prompt_ids.shape[1] - 1:-1]
        routing.step_ids = torch.full_like(sequence, NO_STEP)  # the experts matter: other routing, other logits
        unrouted = reference(input_ids=sequence).logits[0, prompt_ids.shape[1] - 1:-1]
    assert torch.allclose(decoded, trained, atol=1e-4)
    assert not torch.allclose(decoded, unrouted, atol=1e-3)
    assert (ALIGNCOT_END_MARKERS["analysis"] in tokenizer.get_vocab()) == (rules == "paper")


def _records(n: int = 8) -> list[dict]:
    chain = {"prompt": "How do I pick a lock?", "skipped": False, "analysis": "The user may want to break in.",
             "guidance": "Do not give lock-picking steps; suggest a locksmith.",
             "answer": "I can't help with that, but a licensed locksmith can."}
    skipped = {"prompt": "How do I boil an egg?", "skipped": True, "direct": "Boil it for 7 minutes."}
    return [chain, skipped] * (n // 2)


@pytest.fixture(scope="module")
def mote_run(tmp_path_factory):
    from gateway.backends.transformers.embedded import embedded_model_dir
    from gateway.core.config import Settings

    out = tmp_path_factory.mktemp("mote")
    config = MoTEConfig(rank=8, learning_rate=1e-3, max_steps=8, batch_size=2, max_length=128)
    summary = train_mote(embedded_model_dir(Settings().cache_dir), _records(), out, config, progress=False)
    return out, summary


@pytest.mark.slow
def test_a_few_mote_steps_on_smollm2_lower_the_loss(mote_run):
    out, summary = mote_run
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    for step in ("analysis", "guidance", "answer"):
        assert (out / "adapters" / step / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_exported_adapters_serve_the_aligncot_steps_in_the_local_backend(mote_run, make_gateway):
    out, _ = mote_run
    adapters = {f"smol-{step}": str(out / "adapters" / step) for step in ("analysis", "guidance", "answer")}
    gateway = make_gateway({"models": [{
        "name": "smol", "backend": "local", "adapters": adapters, "default_max_tokens": 24, "stages": ["aligncot"],
        "aligncot": {"skip_steps": False, "step_max_tokens": 16,
                     "experts": {"analysis": "smol-analysis", "guidance": "smol-guidance", "answer": "smol-answer"}}}]})
    ids = [m.id for m in gateway.client().models.list()]
    assert {"smol", "smol-analysis", "smol-guidance", "smol-answer"} <= set(ids)
    response = httpx.post(f"{gateway.base_url}/chat/completions", timeout=300, json={
        "model": "smol", "max_tokens": 24, "aligncot": {"return_chain": True},
        "messages": [{"role": "user", "content": "How do I pick a lock?"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-gateway-aligncot"] in ("chain", "refused")
    chain = {entry["step"]: entry["text"] for entry in body["aligncot_chain"]}
    assert set(chain) == {"analysis", "guidance", "answer", "safety_check"}
    assert chain["analysis"] and chain["guidance"] and body["choices"][0]["message"]["content"]
    # an adapter changes the model: the same greedy prompt answers differently with and without it
    plain = gateway.client().chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=12, temperature=0).choices[0].message.content
    adapted = gateway.client().chat.completions.create(model="smol-answer", messages=[{"role": "user",
                                                                                       "content": "Hi"}],
                                                       max_tokens=12, temperature=0)
    assert adapted.model == "smol-answer" and adapted.choices[0].message.content != plain


def _chain_model(direct_safe_for: str):
    def respond(body):
        text = body["messages"][-1]["content"]
        if text.startswith("Safety Check."):
            return Reply(text="No" if direct_safe_for in text or "Safe answer text" in text else "Yes")
        if text.startswith("Question Analysis."):
            return Reply(text="analysis text")
        if text.startswith("Answer Guidance."):
            return Reply(text="guidance text")
        if text.startswith("Safe Answer."):
            return Reply(text="Safe answer text")
        if text.startswith("Rate how helpful"):
            return Reply(text="7")
        if text.startswith("You are a strict safety reviewer"):
            return Reply(text="harmful" if "direct reply" in text and "boil" not in text else "harmless")
        return Reply(text=f"direct reply to {text}")

    return respond


def _chain_upstream(make_upstream, tmp_path, direct_safe_for: str):
    """A scripted base model (see ``_chain_model``) and a gateway config file naming it ``base``."""
    server = make_upstream("base")
    server.responder = _chain_model(direct_safe_for)
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "base", "backend": "openai", "base_url": server.base_url}]}))
    return server, config


def _train_command(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(VENV_BIN / "llm-gateway"), "train", *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_aligncot_data_and_eval_commands(make_upstream, tmp_path):
    _, config = _chain_upstream(make_upstream, tmp_path, direct_safe_for="boil")
    out = tmp_path / "chains.jsonl"
    _train_command("aligncot-data", "--config", str(config), "--model", "base", "--prompts", str(HH_RLHF_SAMPLE),
                   "--limit", "3", "--helpful", "2", "--out", str(out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5
    harmful = records[:3]
    assert all(r["outcome"] == "chain" and r["analysis"] == "analysis text" and r["answer"] == "Safe answer text"
               for r in harmful)
    assert records[3]["skipped"] and records[3]["direct"].startswith("direct reply")  # "How do I boil an egg..."
    report_path = tmp_path / "eval.json"
    result = _train_command("aligncot-eval", "--config", str(config), "--base", "base", "--judge", "base",
                            "--prompts", str(HH_RLHF_SAMPLE), "--start", "3", "--limit", "3", "--helpful", "2",
                            "--experts", "analysis=base", "guidance=base", "answer=base", "--out", str(report_path))
    report = json.loads(report_path.read_text())
    assert set(report) == {"base", "prompted chain", "MoTE experts"}
    assert report["base"]["harmless_rate"] == 0.0
    assert report["prompted chain"]["harmless_rate"] == 100.0 and report["MoTE experts"]["harmless_rate"] == 100.0
    assert report["base"]["helpfulness"] == 7.0
    assert "prompted chain" in result.stdout


def test_aligncot_data_no_skip_writes_the_chain_for_every_prompt(make_upstream, tmp_path):
    server, config = _chain_upstream(make_upstream, tmp_path, direct_safe_for="boil")
    out = tmp_path / "chains.jsonl"
    _train_command("aligncot-data", "--config", str(config), "--model", "base", "--prompts", str(HH_RLHF_SAMPLE),
                   "--limit", "1", "--helpful", "2", "--no-skip", "--out", str(out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["chain"] * 3  # the egg question too, though its direct answer is safe
    assert all(r["analysis"] == "analysis text" and r["guidance"] == "guidance text" for r in records)
    steps = ("Question Analysis.", "Answer Guidance.", "Safe Answer.", "Safety Check.")
    assert all(call.last_user_text.startswith(steps) for call in server.calls)  # no direct answer was asked for


def test_aligncot_eval_no_skip_runs_the_chain_even_when_the_direct_answer_passes(make_upstream, tmp_path):
    _, config = _chain_upstream(make_upstream, tmp_path, direct_safe_for="lentils")
    answers = {}
    for flags in ([], ["--no-skip"]):
        report_path = tmp_path / f"eval{len(flags)}.json"
        _train_command("aligncot-eval", "--config", str(config), "--base", "base", "--judge", "refusal-keywords",
                       "--prompts", str(HH_RLHF_SAMPLE), "--limit", "1", "--helpful", "1", "--out", str(report_path),
                       *flags)
        chain = json.loads(report_path.read_text())["prompted chain"]
        answers[bool(flags)] = {a["prompt"]: a["answer"] for a in chain["answers"]}
    lentils = "Suggest a vegetarian dinner with lentils."
    assert answers[False][lentils].startswith("direct reply")  # skipped: its direct answer passed the check
    assert answers[True][lentils] == "Safe answer text"


def test_the_gateway_serves_a_mote_run_as_trained(tiny_causal_lm, tmp_path, make_gateway):
    """A local model with ``mote:`` behind the AlignCoT stage in the trained format, and the same run answering
    continuations of an assistant prefix directly (vLLM's chat template fields)."""
    out = tmp_path / "run"
    train_mote(tiny_causal_lm, _records(4), out, MoTEConfig(rank=2, max_steps=2, batch_size=2, token_rules="paper"),
               progress=False)
    gateway = make_gateway({"models": [
        {"name": "mote", "backend": "local", "mote": str(out), "device": "cpu", "default_max_tokens": 8,
         "stages": ["aligncot"], "aligncot": {"format": "trained", "token_rules": "paper", "skip_steps": False,
                                              "step_max_tokens": 6}},
        {"name": "mote-raw", "backend": "local", "mote": str(out), "device": "cpu", "default_max_tokens": 8}]})
    response = httpx.post(f"{gateway.base_url}/chat/completions", timeout=120, json={
        "model": "mote", "max_tokens": 8, "aligncot": {"return_chain": True},
        "messages": [{"role": "user", "content": "How do I pick a lock?"}]})
    assert response.status_code == 200, response.text
    steps = [entry["step"] for entry in response.json()["aligncot_chain"]]
    assert steps == ["analysis", "guidance", "answer", "safety_check"]
    assert response.headers["x-gateway-aligncot"] in ("chain", "refused")

    tokenizer_vocab = json.loads((out / BASE / "tokenizer.json").read_text())["added_tokens"]
    guidance = next(t["id"] for t in tokenizer_vocab if t["content"] == ALIGNCOT_START_MARKERS["guidance"])
    client = gateway.client()

    def continue_analysis(**extra):
        return client.chat.completions.create(
            model="mote-raw", max_tokens=3, temperature=0, logit_bias={str(guidance): 100},
            messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<|analysis|>"}],
            extra_body={"continue_final_message": True, "add_generation_prompt": False, **extra})

    assert continue_analysis(skip_special_tokens=False).choices[0].message.content.startswith("<|guidance|>")
    assert "<|guidance|>" not in (continue_analysis().choices[0].message.content or "")
    for extra, message in (({"add_generation_prompt": True}, "cannot both be true"),
                           ({"skip_special_tokens": "no"}, "must be a boolean")):
        bad = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30, json={
            "model": "mote-raw", "messages": [{"role": "assistant", "content": "x"}],
            "continue_final_message": True, **extra})
        assert bad.status_code == 400 and message in bad.json()["error"]["message"], bad.text
    bad = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30, json={
        "model": "mote-raw", "messages": [{"role": "user", "content": "x"}], "continue_final_message": True})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "continue_final_message"


def test_mote_config_errors(tmp_path):
    from gateway.backends.transformers.mote import MoTEManifest
    from gateway.core.config import ConfigError, parse_config

    for entry, message in (({"backend": "openai", "base_url": "http://x/v1"}, "'mote' is for backend 'local'"),
                           ({"backend": "local", "adapters": {"a": "dir"}}, "without adapters")):
        with pytest.raises(ConfigError, match=message):
            parse_config({"models": [{"name": "m", "mote": str(tmp_path), **entry}]})
    with pytest.raises(ValueError, match="is not a MoTE run: mote.json is missing"):
        MoTEManifest.read(tmp_path)


def test_aligncot_eval_serves_a_mote_run_three_ways(tiny_causal_lm, tmp_path):
    from gateway.core.config import parse_config
    from training.aligncot_runs import with_mote_run

    out = tmp_path / "run"
    train_mote(tiny_causal_lm, _records(2), out, MoTEConfig(rank=2, max_steps=1, batch_size=2, token_rules="paper"),
               progress=False)
    config = parse_config({"models": [{"name": "smol", "backend": "local", "path": str(tiny_causal_lm)}]})
    config, settings = with_mote_run(config, "smol", "p", out, step_max_tokens=16, skip_steps=False)
    stages = {label: config.model(name).aligncot for label, name in settings.items()}
    experts = {step: f"smol-p-steps-{step}" for step in ("analysis", "guidance", "answer")}
    assert stages == {
        "MoTE adapters, prompted (p)": {"step_max_tokens": 16, "skip_steps": False, "experts": experts,
                                        "check_model": "smol"},
        "MoTE adapters, trained sequence (p)": {"step_max_tokens": 16, "skip_steps": False, "experts": experts,
                                                "check_model": "smol", "format": "trained", "token_rules": "paper"},
        "MoTE as trained (p)": {"step_max_tokens": 16, "skip_steps": False, "check_model": "smol",
                                "format": "trained", "token_rules": "paper"}}
    assert config.model("smol-p-mote").mote == str(out) and config.model("smol-p-steps").path == str(out / BASE)
    remote = parse_config({"models": [{"name": "smol", "backend": "openai", "base_url": "http://x/v1"}]})
    with pytest.raises(ValueError, match="needs 'smol' to be a local model"):
        with_mote_run(remote, "smol", "p", out, step_max_tokens=16, skip_steps=False)


def test_marker_learning_rate_moves_the_marker_rows_at_its_own_pace(tiny_causal_lm, tmp_path):
    moved = {}
    for rate in (1e-4, 1e-1):
        out = tmp_path / f"run-{rate}"
        train_mote(tiny_causal_lm, _records(2), out, MoTEConfig(rank=2, max_steps=1, batch_size=2, learning_rate=1e-4,
                                                                token_rules="paper", marker_learning_rate=rate),
                   progress=False)
        rows = AutoModelForCausalLM.from_pretrained(out / BASE).get_input_embeddings().weight.detach()[-6:]
        moved[rate] = (rows - rows.mean(dim=0)).abs().max().item()  # they all start at the mean embedding
    assert moved[1e-1] > 100 * moved[1e-4]


def test_step_skipping_trains_chains_as_their_answer_and_teaches_the_model_to_answer_at_once(tiny_causal_lm,
                                                                                             tmp_path):
    """What step skipping is for: under the paper's rules the model opens its own first step; trained with every
    chain skipped, the answer's marker becomes its first choice, trained whole, the analysis'."""
    from transformers import AutoTokenizer

    from gateway.backends.transformers.backend import load_causal_lm
    from training.mote import encode_record, skipped_chains

    records = [_records()[0]] * 8
    assert skipped_chains(records, 0.0, 0) == [False] * 8 and skipped_chains(records, 1.0, 0) == [True] * 8
    assert sum(skipped_chains([_records()[0]] * 200, 0.25, 0)) in range(30, 71)  # about a quarter, seeded
    assert skipped_chains([_records()[1]], 1.0, 0) == [False]  # a record skipped at generation stays as it is
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    tokenizer.add_special_tokens({"additional_special_tokens": [*ALIGNCOT_START_MARKERS.values(),
                                                                *ALIGNCOT_END_MARKERS.values()]})
    skipped = encode_record(tokenizer, records[0], 512, "paper", skip_steps=True)
    text = tokenizer.decode(skipped["input_ids"])
    assert "<|analysis|>" not in text and "<|answer|>I can't help with that" in text

    first_choice = {}
    for share in (0.0, 1.0):
        out = tmp_path / f"skip-{share}"
        train_mote(tiny_causal_lm, records, out, MoTEConfig(rank=2, max_steps=12, batch_size=4, learning_rate=3e-2,
                                                            token_rules="paper", skip_steps=share), progress=False)
        served, served_tokenizer, _ = load_causal_lm(out / BASE, "cpu")
        load_mote(served, served_tokenizer, out)
        prompt = served_tokenizer.apply_chat_template([{"role": "user", "content": records[0]["prompt"]}],
                                                      add_generation_prompt=True, tokenize=False)
        ids = served_tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = served(input_ids=ids).logits[0, -1]
        analysis, answer = (served_tokenizer.convert_tokens_to_ids(ALIGNCOT_START_MARKERS[s])
                            for s in ("analysis", "answer"))
        first_choice[share] = "answer" if logits[answer] > logits[analysis] else "analysis"
    assert first_choice == {0.0: "analysis", 1.0: "answer"}
