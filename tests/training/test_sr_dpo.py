"""Sr-DPO / Sr-IPO: the loss by hand, stop-gradient, equality with TRL at λ = 0, data conversion, training."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch

from tests.training.conftest import HH_RLHF_SAMPLE
from training.preference_data import hh_rlhf_pair, load_preference_pairs, parse_dialogue
from training.sr_dpo import SR_PROMPT, sr_preference_loss, with_prompt

# policy/ref log-probs of chosen, rejected; then the same with p prepended
VALUES = dict(policy_chosen=[-10.0, -4.0], policy_rejected=[-12.0, -3.0], ref_chosen=[-11.0, -5.0],
              ref_rejected=[-11.5, -2.0], policy_chosen_p=[-9.0, -6.0], policy_rejected_p=[-13.0, -2.5],
              ref_chosen_p=[-10.0, -5.5], ref_rejected_p=[-12.0, -2.0])


def _tensors(**overrides):
    return {k: torch.tensor(v, requires_grad=True) for k, v in {**VALUES, **overrides}.items()}


def _by_hand(i: int, beta: float, lam: float, kind: str) -> float:
    v = {k: vals[i] for k, vals in VALUES.items()}
    margin = (v["policy_chosen"] - v["ref_chosen"]) - (v["policy_rejected"] - v["ref_rejected"])
    delta = beta * ((v["policy_chosen_p"] - v["ref_chosen_p"]) - (v["policy_rejected_p"] - v["ref_rejected_p"]))
    if kind == "dpo":
        return -math.log(1 / (1 + math.exp(-(beta * margin - lam * delta))))
    return (margin - lam * delta - 1 / (2 * beta)) ** 2


@pytest.mark.parametrize(("loss_type", "kind", "refined"), [("sr-dpo", "dpo", True), ("sr-ipo", "ipo", True),
                                                             ("dpo", "dpo", False), ("ipo", "ipo", False)])
def test_loss_values_by_hand(loss_type, kind, refined):
    beta, lam = 0.1, 0.5
    got = sr_preference_loss(**_tensors(), beta=beta, lam=lam, loss_type=loss_type)
    expected = [_by_hand(i, beta, lam if refined else 0.0, kind) for i in range(2)]
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_no_gradient_reaches_the_margin():
    tensors = _tensors()
    sr_preference_loss(**tensors, beta=0.1, lam=1.0, loss_type="sr-dpo").sum().backward()
    for name in ("policy_chosen_p", "policy_rejected_p", "ref_chosen_p", "ref_rejected_p"):
        assert tensors[name].grad is None
    assert tensors["policy_chosen"].grad is not None and tensors["policy_chosen"].grad.abs().sum() > 0


@pytest.mark.parametrize(("refined", "plain"), [("sr-dpo", "dpo"), ("sr-ipo", "ipo")])
def test_lambda_zero_is_the_plain_loss(refined, plain):
    a = sr_preference_loss(**_tensors(), beta=0.2, lam=0.0, loss_type=refined)
    b = sr_preference_loss(**_tensors(), beta=0.2, lam=0.0, loss_type=plain)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown loss_type 'kto'"):
        sr_preference_loss(**_tensors(), beta=0.1, lam=0.0, loss_type="kto")


def test_prompt_is_prepended_to_the_query():
    assert with_prompt("How do I bake bread?", SR_PROMPT) == f"{SR_PROMPT} How do I bake bread?"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "How do I bake bread?"}]
    prompted = with_prompt(messages, SR_PROMPT)
    assert prompted[0]["content"] == "hi" and prompted[2]["content"] == f"{SR_PROMPT} How do I bake bread?"
    assert messages[2]["content"] == "How do I bake bread?"  # the original is untouched


def test_hh_rlhf_conversion_and_edge_cases(tmp_path):
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: Sure, safely.",
            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: No."}
    pair, reason = hh_rlhf_pair(good)
    assert reason is None
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"]
    assert pair["prompt"][2]["content"] == "help me"
    assert pair["chosen"] == [{"role": "assistant", "content": "Sure, safely."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "No."}]
    cases = {
        "no shared prefix": {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
        "empty response": {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a\n\nAssistant:  "},
        "identical responses": {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a\n\nAssistant: x"},
        "no Assistant turn": {"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"},
        "missing chosen/rejected text": {"chosen": "x"},
    }
    for expected, record in cases.items():
        assert hh_rlhf_pair(record) == (None, expected)
    trl = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        for record in [good, trl, *cases.values(), {"prompt": "x", "chosen": "", "rejected": "y"}]:
            handle.write(json.dumps(record) + "\n")
        handle.write("{not json\n")
    pairs, report = load_preference_pairs(path)
    assert len(pairs) == 2 and pairs[1] == trl
    assert report.kept == 2 and sum(report.skipped.values()) == 7
    assert report.skipped["unreadable JSON"] == 1 and report.skipped["empty chosen"] == 1
    assert "2 pairs kept" in str(report)


def test_parse_dialogue_keeps_multiline_turns():
    messages = parse_dialogue("\n\nHuman: line one\nline two\n\nAssistant: ok")
    assert messages == [{"role": "user", "content": "line one\nline two"}, {"role": "assistant", "content": "ok"}]


def test_the_hh_rlhf_sample_converts_with_a_count():
    pairs, report = load_preference_pairs(HH_RLHF_SAMPLE)
    assert report.kept == len(pairs) > 280
    assert report.kept + sum(report.skipped.values()) == 300
