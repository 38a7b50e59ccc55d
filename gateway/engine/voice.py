"""The voice of the speech cascade, as EMOVA has it: the user's clip heard for more than its words, and a reply
spoken with an emotion and a pitch the model chose.

EMOVA (Chen et al., 2024, arXiv 2409.18042) is one model that hears speech and answers with text plus style labels
(an emotion and a pitch) that its speech decoder renders. The cascade assembles that from parts:

- **hearing**: besides the recogniser's transcript, :func:`voice_profile` measures the clip's pitch (the median
  fundamental frequency of its voiced frames, Praat's autocorrelation tracker through ``praat-parselmouth``) and
  its loudness (RMS level), and names their levels (``low``/``normal``/``high``; ``quiet``/``normal``/``loud``);
- **choosing the style**: the model that answers is asked how its reply to the user's message should sound, under
  constrained decoding to ``{"emotion": <one of the synthesiser's emotions>, "pitch": "low"|"normal"|"high"}``
  (:func:`style_request`), the message shown with its voice when it was spoken. A few worked examples lead the
  question: asked bare, SmolLM2-135M chose "fearful" for 6 of 10 neutral messages and "happy" for 2 of 10 grieving
  ones; with them, "happy" for 10 of 10 joyful ones, "neutral" for 10 of 10 neutral ones and "sad" or "fearful" for
  the grieving ones (``benchmarks/emova_styles.py``). It chooses the pitch label "normal" every time: the pitch of
  the voice comes from the emotion's preset (happy is spoken higher than sad). The style call runs beside the
  answer, so a streamed answer does not wait for it;
- **speaking**: the answer is synthesised in that style, and ``message.audio`` says which (``emotion``,
  ``pitch``).

Text chat asking for a spoken answer (``modalities: ["text", "audio"]``) gets a chosen style too, from the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.backends.speech import EMOTIONS, PITCHES
from gateway.wire.openai import ChatCompletionRequest

STYLE_EMOTIONS = tuple(EMOTIONS)  # the synthesiser's styles: neutral, happy, sad, angry, surprised, ...
STYLE_PITCHES = tuple(PITCHES)  # low, normal, high
STYLE_SCHEMA = {"type": "object", "properties": {"emotion": {"enum": list(STYLE_EMOTIONS)},
                                                  "pitch": {"enum": list(STYLE_PITCHES)}},
                "required": ["emotion", "pitch"], "additionalProperties": False}
STYLE_INSTRUCTION = "Say how the reply to each message should sound: its emotion and its pitch, as JSON."
# (message, emotion, pitch): the worked examples before the user's message
STYLE_EXAMPLES = (("I won the lottery, I am so excited!", "happy", "high"),
                  ("My dog died this morning and I cannot stop crying.", "sad", "low"),
                  ("How many days are in a week?", "neutral", "normal"))
STYLE_MAX_TOKENS = 24
# Speaker-independent levels of a median F0 (Hz) and of an RMS level (dBFS): adult male speech is mostly 85-155 Hz,
# female 165-255 Hz.
PITCH_LEVELS = ((130.0, "low"), (210.0, "normal"), (float("inf"), "high"))
LOUDNESS_LEVELS = ((-35.0, "quiet"), (-18.0, "normal"), (float("inf"), "loud"))


@dataclass(frozen=True)
class VoiceProfile:
    """What a clip sounds like, beyond its words."""

    median_pitch_hz: float | None  # None: no voiced frame
    level_db: float  # RMS level, dB relative to full scale

    @property
    def pitch(self) -> str:
        if self.median_pitch_hz is None:
            return "normal"
        return next(name for bound, name in PITCH_LEVELS if self.median_pitch_hz < bound)

    @property
    def loudness(self) -> str:
        return next(name for bound, name in LOUDNESS_LEVELS if self.level_db < bound)

    def describe(self) -> str:
        """E.g. ``spoken in a high voice (median pitch 231 Hz), loud``."""
        pitch = f" (median pitch {self.median_pitch_hz:.0f} Hz)" if self.median_pitch_hz is not None else ""
        return f"spoken in a {self.pitch} voice{pitch}, {self.loudness}"


@dataclass(frozen=True)
class SpeechStyle:
    emotion: str = "neutral"
    pitch: str = "normal"


def voice_profile(samples: np.ndarray, rate: int) -> VoiceProfile:
    """Pitch and loudness of mono float samples in [-1, 1] (blocking: a few milliseconds a second of audio)."""
    import parselmouth  # type: ignore[import-not-found]  # a compiled module without stubs

    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    level = 20 * np.log10(max(rms, 1e-9))
    if len(samples) < rate // 10:  # under 0.1 s: too short to track
        return VoiceProfile(None, level)
    frequencies = parselmouth.Sound(samples.astype(np.float64), sampling_frequency=rate).to_pitch() \
        .selected_array["frequency"]
    voiced = frequencies[frequencies > 0]
    return VoiceProfile(float(np.median(voiced)) if len(voiced) else None, level)


def style_request(model: str, message: str, voice: VoiceProfile | None,
                  examples: tuple[tuple[str, str, str], ...] = STYLE_EXAMPLES) -> ChatCompletionRequest:
    """The constrained question that makes ``model`` choose how its reply to ``message`` should sound."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": STYLE_INSTRUCTION}]
    for example, emotion, pitch in examples:
        messages += [{"role": "user", "content": example},
                     {"role": "assistant", "content": _style_json(SpeechStyle(emotion, pitch))}]
    heard = f"{message}\n({voice.describe()})" if voice is not None else message
    messages.append({"role": "user", "content": heard})
    return ChatCompletionRequest.model_validate({
        "model": model, "messages": messages, "temperature": 0, "max_tokens": STYLE_MAX_TOKENS,
        "response_format": {"type": "json_schema", "json_schema": {"name": "voice", "schema": STYLE_SCHEMA}}})


def style_of(text: str) -> SpeechStyle | None:
    """The style a model wrote (None: not the JSON asked for)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or value.get("emotion") not in STYLE_EMOTIONS \
            or value.get("pitch") not in STYLE_PITCHES:
        return None
    return SpeechStyle(value["emotion"], value["pitch"])


def _style_json(style: SpeechStyle) -> str:
    return orjson.dumps({"emotion": style.emotion, "pitch": style.pitch}).decode()
