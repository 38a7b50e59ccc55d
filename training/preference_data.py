"""Preference data for the DPO-family trainers.

Two inputs: TRL's ``{prompt, chosen, rejected}`` records (strings or message lists), and Anthropic HH-RLHF
dialogues (``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``), converted to TRL's
conversational format: the shared dialogue before the last Assistant turn is the prompt, the two last
Assistant turns are chosen and rejected. Bad records (no shared prefix, an empty response, unreadable JSON)
are skipped and counted by reason, never dropped silently.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ASSISTANT = "\n\nAssistant:"


@dataclass
class ConversionReport:
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common()) or "none"
        return f"{self.kept} pairs kept; skipped: {reasons}"


def parse_dialogue(text: str) -> list[dict[str, str]]:
    """``\\n\\nHuman: a\\n\\nAssistant: b`` -> chat messages."""
    parts = _TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=False):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def hh_rlhf_pair(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(TRL conversational record, None) or (None, reason it is skipped)."""
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return None, "missing chosen/rejected text"
    cut_c, cut_r = chosen.rfind(_ASSISTANT), rejected.rfind(_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        return None, "no Assistant turn"
    if chosen[:cut_c] != rejected[:cut_r]:
        return None, "no shared prefix"
    chosen_reply = chosen[cut_c + len(_ASSISTANT):].strip()
    rejected_reply = rejected[cut_r + len(_ASSISTANT):].strip()
    if not chosen_reply or not rejected_reply:
        return None, "empty response"
    if chosen_reply == rejected_reply:
        return None, "identical responses"
    prompt = parse_dialogue(chosen[:cut_c])
    if not prompt or prompt[-1]["role"] != "user":
        return None, "prompt does not end with a Human turn"
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen_reply}],
            "rejected": [{"role": "assistant", "content": rejected_reply}]}, None


def _preference_record(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    if "prompt" in record:
        for key in ("prompt", "chosen", "rejected"):
            if not record.get(key):
                return None, f"empty {key}"
        return {k: record[k] for k in ("prompt", "chosen", "rejected")}, None
    return hh_rlhf_pair(record)


def load_preference_pairs(path: Path | str) -> tuple[list[dict[str, Any]], ConversionReport]:
    """Read JSONL (optionally .gz) of TRL or HH-RLHF records; returns the pairs and what was skipped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        return parse_preference_lines(handle)


def parse_preference_lines(lines: Iterable[str]) -> tuple[list[dict[str, Any]], ConversionReport]:
    """JSONL lines of TRL or HH-RLHF records → the pairs and what was skipped."""
    report = ConversionReport()
    pairs = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            report.skipped["unreadable JSON"] += 1
            continue
        pair, reason = _preference_record(record) if isinstance(record, dict) else (None, "not an object")
        if pair is None:
            report.skipped[reason or "unknown"] += 1
            continue
        pairs.append(pair)
        report.kept += 1
    return pairs, report


Pairs = list[dict[str, Any]]


def split_pairs(pairs: Pairs, held_out: int, seed: int) -> tuple[Pairs, Pairs]:
    """A seeded shuffle; the last ``held_out`` pairs are held out."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    shuffled = [pairs[i] for i in order]
    return shuffled[: len(shuffled) - held_out], shuffled[len(shuffled) - held_out:]
