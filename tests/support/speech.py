"""Speech for tests, synthesised by espeak-ng (the same program as the embedded TTS, called directly)."""

from __future__ import annotations

import re
import subprocess


def spoken(text: str, voice: str = "en-us", words_per_minute: int = 160, pitch: int = 50) -> bytes:
    """``text`` read aloud, as a WAV file (``pitch``: espeak-ng's 0-99)."""
    return subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "--stdout"],
                          input=text.encode(), capture_output=True, check=True, timeout=60).stdout


def words(text: str) -> str:
    """Lower-case words without punctuation, space-separated (what a word error rate compares)."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'")))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """jiwer's word error rate after that normalisation."""
    import jiwer

    return float(jiwer.wer(words(reference), words(hypothesis) or "<nothing>"))
