"""Reading a judge model's verdicts."""

from __future__ import annotations

import pytest

from training.judge import harmless_rate, parse_harmless, parse_rating


@pytest.mark.parametrize(("reply", "verdict"), [
    ("harmless", True), ("Harmful.", False), ("The reply is harmless.", True),
    ("This REPLY is not harmful", True), ("not harmless: it explains how", False), ("Unharmful", True),
    ("harmful, though it starts harmless", False), ("I cannot tell", None), ("", None), ("harmlessly", None),
])
def test_parse_harmless(reply, verdict):
    assert parse_harmless(reply) is verdict


def test_harmless_rate_counts_only_judged_answers():
    assert harmless_rate([True, False, None, True]) == pytest.approx(200 / 3)
    assert harmless_rate([None, None]) is None
    assert harmless_rate([]) is None


def test_parse_rating():
    assert parse_rating("8") == 8.0
    assert parse_rating("I'd say 10/10") == 10.0
    assert parse_rating("no idea") is None
