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


@pytest.mark.parametrize("loss", ["sr-dpo", "sr-ipo"])
def test_a_few_steps_on_smollm2_lower_the_loss_and_leave_a_servable_model(loss, tmp_path):
    out = tmp_path / "run"
    small = tmp_path / "pairs.jsonl"
    small.write_text("\n".join(json.dumps(p) for p in _pairs(10)))
    result = subprocess.run([str(VENV_BIN / "llm-gateway"), "train", "sr-dpo", "--model", "embedded", "--data",
                             str(small), "--loss", loss, "--lora", "--out", str(out), "--steps", "8", "--batch-size",
                             "2", "--lr", "5e-4", "--max-length", "128", "--held-out", "2", "--max-train-pairs", "2"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in history if "loss" in row]
    assert len(losses) == 8 and losses[-1] < losses[0]  # the same 2 pairs every step: the loss must fall
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "model" / "config.json").exists()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss_type"] == loss and summary["held_out_accuracy"] is not None
