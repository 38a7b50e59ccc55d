"""The Sr-DPO trainer on real models: λ = 0 reproduces TRL's own sigmoid and IPO losses on the same batch,
the p ⊕ x passes change the loss when λ > 0, and a few steps on SmolLM2 lower the loss and leave a servable
model."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer

from tests.support.servers import VENV_BIN
from tests.training.conftest import HH_RLHF_SAMPLE
from training.preference_data import load_preference_pairs
from training.sr_dpo import SrDPOConfig, SrDPOTrainer

pytestmark = pytest.mark.slow


def _pairs(n: int = 4):
    pairs, _ = load_preference_pairs(HH_RLHF_SAMPLE)
    return pairs[:n]


def _trainer(cls, config_cls, model_path, tmp_path, **config):
    args = config_cls(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=4, max_length=1024,
                      report_to=[], use_cpu=True, seed=0, **config)
    return cls(model=str(model_path), args=args, train_dataset=Dataset.from_list(_pairs()),
               processing_class=AutoTokenizer.from_pretrained(model_path))


def _loss_on_first_batch(trainer) -> float:
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


@pytest.mark.parametrize(("ours", "trl_loss"), [("dpo", "sigmoid"), ("ipo", "ipo"), ("sr-dpo", "sigmoid"),
                                                ("sr-ipo", "ipo")])
def test_lambda_zero_equals_trl_losses_on_the_same_batch(tiny_causal_lm, tmp_path, ours, trl_loss):
    # A reference that differs from the policy: train the policy one step first, identically in both.
    reference = _trainer(DPOTrainer, DPOConfig, tiny_causal_lm, tmp_path, loss_type=[trl_loss], beta=0.1)
    mine = _trainer(SrDPOTrainer, SrDPOConfig, tiny_causal_lm, tmp_path, sr_loss=ours, sr_lambda=0.0, beta=0.1)
    with torch.no_grad():  # the same perturbed policy in both, so log-ratios are not all zero
        for trainer in (reference, mine):
            torch.manual_seed(1)
            for parameter in trainer.model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.02)
    assert _loss_on_first_batch(mine) == pytest.approx(_loss_on_first_batch(reference), rel=1e-5)


def test_the_refinement_margin_changes_the_loss(tiny_causal_lm, tmp_path):
    losses = {}
    for lam in (0.0, 1.0):
        trainer = _trainer(SrDPOTrainer, SrDPOConfig, tiny_causal_lm, tmp_path, sr_loss="sr-dpo", sr_lambda=lam)
        with torch.no_grad():
            torch.manual_seed(1)
            for parameter in trainer.model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.02)
        losses[lam] = _loss_on_first_batch(trainer)
        batch = next(iter(trainer.get_train_dataloader()))
        assert "p_input_ids" in batch and not torch.equal(batch["p_input_ids"], batch["input_ids"])
    assert losses[0.0] != pytest.approx(losses[1.0], abs=1e-7)


# Eight real steps of SmolLM2 (policy, reference and the refinement pass): minutes on 2 cores, and past the suite's
# 600 s default on a slow day (both runs were cut at 600 s once, on a day this machine ran ~2-3x slower).
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("loss", ["sr-dpo", "sr-ipo"])
def test_a_few_steps_on_smollm2_lower_the_loss_and_leave_a_servable_model(loss, tmp_path):
    out = tmp_path / "run"
    small = tmp_path / "pairs.jsonl"
    shortest = sorted(load_preference_pairs(HH_RLHF_SAMPLE)[0], key=lambda pair: len(json.dumps(pair)))[:10]
    small.write_text("\n".join(json.dumps(p) for p in shortest))
    result = subprocess.run([str(VENV_BIN / "llm-gateway"), "train", "sr-dpo", "--model", "embedded", "--data",
                             str(small), "--loss", loss, "--lora", "--out", str(out), "--steps", "8", "--batch-size",
                             "2", "--lr", "5e-4", "--max-length", "256", "--held-out", "2", "--max-train-pairs", "2"],
                            capture_output=True, text=True, timeout=1700)
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in history if "loss" in row]
    assert len(losses) == 8 and losses[-1] < losses[0]  # the same 2 pairs every step: the loss must fall
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "model" / "config.json").exists()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss_type"] == loss and summary["held_out_accuracy"] is not None


# ---- the p ⊕ x pass: formatted like TRL's plain pass, completions never truncated, Δ logged as the loss uses it

PLAIN_PAIRS = [{"prompt": "what is the capital of france", "chosen": " paris is the capital",
                "rejected": " i do not know"},
               {"prompt": "name a yellow fruit", "chosen": " banana", "rejected": " a very long answer that goes on "
                "and on about many fruits and colours and tastes and more"},
               {"prompt": "how many days are in a week", "chosen": " seven", "rejected": " six"}]


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory):
    """A tiny Llama over a word-level tokenizer that adds BOS to plain text (as Llama's and Mistral's do)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from training.sr_dpo import SR_PROMPT

    words = sorted({w for text in [SR_PROMPT, *(v for p in PLAIN_PAIRS for v in p.values())] for w in text.split()})
    vocabulary = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    directory = tmp_path_factory.mktemp("bos-lm")
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=len(vocabulary), max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _plain_trainer(model_path, tmp_path, **config):
    args = SrDPOConfig(output_dir=str(tmp_path / "bos"), per_device_train_batch_size=3, report_to=[], use_cpu=True,
                       seed=0, **config)
    return SrDPOTrainer(model=str(model_path), args=args, train_dataset=Dataset.from_list(PLAIN_PAIRS),
                        processing_class=AutoTokenizer.from_pretrained(model_path))


def test_the_prompted_pass_keeps_bos_like_the_plain_pass(bos_model, tmp_path):
    from training.sr_dpo import SR_PROMPT

    trainer = _plain_trainer(bos_model, tmp_path, sr_loss="sr-dpo", sr_lambda=1.0, max_length=None)
    tokenizer = trainer.processing_class
    prompt_words = len(SR_PROMPT.split())
    for example in trainer.train_dataset:
        plain, prompted = example["prompt_ids"], example["prompt_p_ids"]
        assert plain[0] == prompted[0] == tokenizer.bos_token_id
        # p ⊕ x is BOS, p's tokens, then exactly x's tokens: the two passes differ by p alone.
        assert prompted[1 + prompt_words:] == plain[1:]
        assert tokenizer.decode(prompted[1:1 + prompt_words]) == SR_PROMPT


def test_no_pair_with_a_truncated_completion_reaches_the_loss(bos_model, tmp_path):
    from training.sr_dpo import SR_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(bos_model)
    longest_prompt = max(len(tokenizer(f"{SR_PROMPT} {p['prompt']}")["input_ids"]) for p in PLAIN_PAIRS)
    max_length = longest_prompt + 6  # fits the short answers, not the long rejected one

    def completion(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    expected_out = sum(len(tokenizer(f"{SR_PROMPT} {p['prompt']}")["input_ids"])
                       + max(completion(p["chosen"]), completion(p["rejected"])) > max_length for p in PLAIN_PAIRS)
    assert expected_out == 1
    trainer = _plain_trainer(bos_model, tmp_path, sr_loss="sr-dpo", sr_lambda=1.0, max_length=max_length)
    assert trainer.sr_dropped_pairs == {"train": 1} and len(trainer.train_dataset) == 2
    batch = next(iter(trainer.get_train_dataloader()))
    kept = list(trainer.train_dataset)
    whole = [len(e["chosen_ids"]) for e in kept] + [len(e["rejected_ids"]) for e in kept]
    assert batch["completion_mask"].sum(dim=1).tolist() == whole  # the plain pass: every completion token
    assert batch["p_completion_mask"].sum(dim=1).tolist() == whole  # and the p ⊕ x pass too
    plain_dpo = _plain_trainer(bos_model, tmp_path, sr_loss="dpo", max_length=max_length)
    # Plain DPO trains on the very same pairs (a fair comparison), though it never computes Δ.
    assert plain_dpo.sr_dropped_pairs == {"train": 1}
    assert [e["prompt"] for e in plain_dpo.train_dataset] == [e["prompt"] for e in kept]


def test_the_logged_delta_is_the_one_the_ipo_loss_uses(bos_model, tmp_path):
    trainer = _plain_trainer(bos_model, tmp_path, sr_loss="sr-ipo", sr_lambda=1.0, beta=0.1, max_length=None)
    with torch.no_grad():
        torch.manual_seed(1)
        for parameter in trainer.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
        prompted = {k[2:]: v for k, v in batch.items() if k.startswith("p_")}
        policy = trainer._sequence_logps(trainer.model, prompted)
        reference = trainer.compute_ref_log_probs(trainer.ref_model or trainer.model, prompted)
    lengths = prompted["completion_mask"].sum(dim=1).clamp(min=1).chunk(2)
    per_token = [(p - r) / n for p, r, n in zip(policy, reference, lengths, strict=True)]
    expected = float((0.1 * (per_token[0] - per_token[1])).mean())
    summed = float((0.1 * ((policy[0] - reference[0]) - (policy[1] - reference[1]))).mean())
    assert trainer._metrics["train"]["sr/delta"][-1] == pytest.approx(expected, rel=1e-4)
    assert expected != pytest.approx(summed, rel=1e-3)  # the summed form (what was logged before) differs
