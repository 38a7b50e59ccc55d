"""MEHL-Soup: the affine combination, gradients on the coefficients only, b members in memory, LoRA merged
as the dense ΔW PEFT merges, and ``llm-gateway train soup`` end to end on tiny members whose output the
gateway serves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.support.servers import VENV_BIN
from training.soup.mehl import SoupSettings, affine_soup, block_of, train_soup
from training.soup.members import Member, MemberStore, lora_delta
from training.soup.objective import Example

DATA = Path(__file__).resolve().parents[1] / "data" / "hh_rlhf_sample.jsonl.gz"  # committed with the tests


def test_the_affine_combination_spans_centre_members_and_beyond():
    members = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}, {"w": torch.tensor([1.0, 1.0])}]
    centre = {"w": sum(m["w"] for m in members) / 3}
    directions = [{"w": m["w"] - centre["w"]} for m in members]
    index = {"w": 0}
    assert torch.allclose(affine_soup(centre, directions, torch.zeros(3, 1), index)["w"], centre["w"])
    for i, member in enumerate(members):
        one_hot = torch.zeros(3, 1)
        one_hot[i, 0] = 1
        assert torch.allclose(affine_soup(centre, directions, one_hot, index)["w"], member["w"])
    beyond = affine_soup(centre, directions, torch.tensor([[-1.0], [0.0], [0.0]]), index)["w"]
    assert torch.allclose(beyond, 2 * centre["w"] - members[0]["w"])  # extrapolation past the centre


def test_blocks_are_tensors_or_layers():
    assert block_of("model.layers.3.self_attn.q_proj.weight", "tensor") == "model.layers.3.self_attn.q_proj.weight"
    assert block_of("model.layers.3.self_attn.q_proj.weight", "layer") == "layer 003"
    assert block_of("model.embed_tokens.weight", "layer") == "other"


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def _adapter(model, directory: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(_copy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.2)
    peft_model.save_pretrained(directory)
    return directory


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_a_lora_member_is_the_dense_delta_peft_merges(tmp_path):
    from peft import PeftModel

    model = _tiny_model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter = _adapter(model, tmp_path / "adapter", seed=1)
    merged = PeftModel.from_pretrained(_copy(model), str(adapter)).merge_and_unload()
    delta = lora_delta(adapter, base)
    assert set(delta) == {f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")}
    for name, parameter in merged.named_parameters():
        expected = parameter.detach() - base[name]
        assert torch.allclose(delta.get(name, torch.zeros_like(expected)), expected, atol=1e-6), name


def test_only_the_coefficients_learn_and_only_b_members_are_held(tmp_path):
    model = _tiny_model()
    model.requires_grad_(False)
    base = dict(model.named_parameters())
    members = [Member(f"m{i}", _adapter(model, tmp_path / f"m{i}", seed=i), "lora") for i in range(5)]
    store = MemberStore(members, {n: p.detach() for n, p in base.items()})
    examples = [Example(prompt=[1, 2, 3], chosen=[4 + i, 5, 6], rejected=[7, 8, 9]) for i in range(6)]
    before = {n: p.clone() for n, p in base.items()}
    soup, records = train_soup(model, base, store, examples, SoupSettings(model_batch=2, epochs=2, batch_size=3))
    assert store.loads == 5 and store.peak_alive <= 2  # three batches (2, 2, 1), never more than b at once
    assert [r.members for r in records] == [["m0", "m1"], ["m2", "m3"], ["m4"]]
    assert any(abs(x) > 1e-4 for r in records for row in r.coefficients for x in row)  # X moved
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in base.items())  # the base is untouched
    assert set(soup) == set(lora_delta(members[0].path, before))


def test_directions_are_unit_norm_per_block_as_the_reference_scales_them(tmp_path):
    """MEHL-Soup's reference divides each member's direction by its norm within every block, so a coefficient is a
    distance in weight space: the soup with member i's coefficient at its recorded norm is member i itself."""
    from training.soup.mehl import _fit_batch

    model = _tiny_model()
    model.requires_grad_(False)
    base = dict(model.named_parameters())
    members = [Member(f"m{i}", _adapter(model, tmp_path / f"m{i}", seed=i), "lora") for i in range(2)]
    store = MemberStore(members, {n: p.detach() for n, p in base.items()})
    deltas = [lora_delta(m.path, {n: p.detach() for n, p in base.items()}) for m in members]
    examples = [Example(prompt=[1, 2, 3], chosen=[4, 5, 6], rejected=[7, 8, 9])]
    settings = SoupSettings(model_batch=2, epochs=1, batch_size=1, learning_rate=0.0, blocks="layer")
    _, record = _fit_batch(model, base, store, [0, 1], None, examples, settings, None)
    centre = {n: (deltas[0][n] + deltas[1][n]) / 2 for n in deltas[0]}
    for i, delta in enumerate(deltas):
        for column, block in enumerate(record.blocks):
            expected = sum(float((delta[n] - centre[n]).square().sum()) for n in delta
                           if block_of(n, "layer") == block) ** 0.5
            assert record.direction_norms[i][column] == pytest.approx(expected, rel=1e-5)
    # with normalised directions, member i is the centre plus its recorded norms along its own direction
    directions = [{n: (d[n] - centre[n]) / record.direction_norms[i][record.blocks.index(block_of(n, "layer"))]
                   for n in d} for i, d in enumerate(deltas)]
    index = {n: record.blocks.index(block_of(n, "layer")) for n in centre}
    coefficients = torch.zeros(2, len(record.blocks))
    coefficients[0] = torch.tensor(record.direction_norms[0])
    rebuilt = affine_soup(centre, directions, coefficients, index)
    assert all(torch.allclose(rebuilt[n], deltas[0][n], atol=1e-6) for n in centre)


@pytest.mark.slow
def test_the_soup_command_end_to_end_and_the_gateway_serves_the_result(tmp_path, make_gateway):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"))
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=512, tie_word_embeddings=True))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    members = [str(_adapter(base, tmp_path / f"member-{i}", seed=10 + i)) for i in range(3)]
    out = tmp_path / "soup"
    result = subprocess.run(
        [str(VENV_BIN / "llm-gateway"), "train", "soup", "--base", str(tmp_path / "base"), "--members", *members,
         "--data", str(DATA), "--out", str(out), "--model-batch", "2", "--max-examples", "12",
         "--test-examples", "8", "--epochs", "1", "--batch-size", "4", "--max-length", "128",
         "--baselines", "greedy", "peft", "new-lora"],
        capture_output=True, text=True, timeout=900, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["members"]) == {"member-0", "member-1", "member-2"}
    entries = {name: report[name] for name in ("soup", "uniform", "greedy", "best_single", "new_lora",
                                               *(f"peft_{m}" for m in ("ties", "dare_linear", "svd")))}
    for name, entry in {**entries, **report["members"]}.items():  # the fitting split's figure and the held-out one
        assert isinstance(entry["fit_nll"], float) and isinstance(entry["test_nll"], float), (name, entry)
        assert not any(key.startswith("val_") for key in entry), (name, entry)
    assert report["peak_members_held"] <= 2 and report["member_loads_during_soup"] == 3
    assert report["new_lora"]["fit_nll"] != report["base"]["fit_nll"]  # it trained (bf16 once swallowed it)
    assert (out / "soup.png").stat().st_size > 10_000 and (out / "metrics.jsonl").read_text().count("\n") == 6
    assert "fit NLL" in result.stdout and "test NLL" in result.stdout
    gateway = make_gateway({"models": [{"name": "soup", "backend": "local", "path": str(out / "model"),
                                        "device": "cpu"}]}, wait_ready=True)
    answer = gateway.client().chat.completions.create(model="soup", max_tokens=5,
                                                      messages=[{"role": "user", "content": "Hello"}])
    assert answer.choices[0].finish_reason in ("length", "stop") and answer.usage.completion_tokens >= 1


def test_the_dpo_objective_fits_the_coefficients_against_the_base(tmp_path):
    from training.soup.objective import attach_reference, evaluate

    model = _tiny_model()
    model.requires_grad_(False)
    base = dict(model.named_parameters())
    members = [Member(f"m{i}", _adapter(model, tmp_path / f"m{i}", seed=20 + i), "lora") for i in range(2)]
    store = MemberStore(members, {n: p.detach() for n, p in base.items()})
    examples = [Example(prompt=[1, 2, 3 + i], chosen=[10, 11, 12], rejected=[20, 21, 22]) for i in range(4)]
    attach_reference(model, base, examples)
    assert all(e.reference is not None for e in examples)
    at_base = evaluate(model, base, examples, "dpo", beta=0.5)
    assert at_base["dpo_loss"] == pytest.approx(0.6931, abs=1e-3)  # the base against itself: log 2
    soup, records = train_soup(model, base, store, examples,
                               SoupSettings(model_batch=2, epochs=5, batch_size=4, objective="dpo", beta=0.5))
    from training.soup.mehl import with_base

    deltas = [lora_delta(m.path, {n: p.detach() for n, p in base.items()}) for m in members]
    centre = {n: (deltas[0][n] + deltas[1][n]) / 2 for n in deltas[0]}  # where the coefficients start
    fitted = evaluate(model, with_base(base, soup), examples, "dpo", beta=0.5)
    started = evaluate(model, with_base(base, centre), examples, "dpo", beta=0.5)
    assert records[0].losses[-1] < records[0].losses[0] and fitted["dpo_loss"] < started["dpo_loss"]
    assert set(fitted) == {"nll", "dpo_loss", "accuracy"}


def test_reply_log_probabilities_match_the_whole_sequence_computation_and_bf16_stays_close():
    """The objective projects only reply positions onto the vocabulary; the sums must equal those of the plain
    per-example computation (prompts of different lengths in one batch), and bf16 autocast must stay close."""
    from torch.nn import functional as F

    from training.soup.mehl import uses_bf16
    from training.soup.objective import reply_logprobs

    model = _tiny_model().eval()
    weights = dict(model.named_parameters())
    examples = [Example(prompt=[1, 2, 3, 4, 5, 6], chosen=[10, 11], rejected=[20]),
                Example(prompt=[7, 8], chosen=[12, 13, 14, 15], rejected=[21, 22])]
    with torch.no_grad():
        sums, counts = reply_logprobs(model, weights, examples, "chosen")
        for example, total, count in zip(examples, sums.tolist(), counts.tolist(), strict=True):
            ids = torch.tensor([example.prompt + example.chosen])
            logprobs = F.log_softmax(model(ids).logits[0, :-1], dim=-1)
            start = len(example.prompt) - 1
            expected = sum(float(logprobs[start + i, token]) for i, token in enumerate(example.chosen))
            assert count == len(example.chosen)
            assert total == pytest.approx(expected, abs=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = reply_logprobs(model, weights, examples, "chosen")
    assert torch.allclose(low, sums, atol=0.1, rtol=0.02)
    assert uses_bf16("fp32") is False and uses_bf16("bf16") is True
