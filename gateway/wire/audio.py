"""Audio bytes in and out: decoding uploads (any container/codec FFmpeg reads, through PyAV: the format is
sniffed from the bytes, never trusted from a file name), encoding speech (wav, mp3, opus, flac, aac, pcm), and
the transcription response formats (json, text, srt, vtt, verbose_json). Every refusal is a 400."""

from __future__ import annotations

import base64
import binascii
import io
import wave
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
from pydantic import Field

from gateway.core.errors import InvalidRequestError
from gateway.wire.openai import OpenAIBaseModel

if TYPE_CHECKING:
    from av.audio.stream import AudioStream

MAX_AUDIO_BYTES = 25 * 1024 * 1024  # OpenAI's upload limit
ASR_SAMPLE_RATE = 16_000  # what Whisper listens at
MAX_AUDIO_SECONDS = 30 * 60

# Speech output formats, with their content type and PyAV encoder (None: written without FFmpeg).
SPEECH_FORMATS: dict[str, tuple[str, str | None]] = {
    "wav": ("audio/wav", None), "pcm": ("audio/pcm", None), "mp3": ("audio/mpeg", "libmp3lame"),
    "opus": ("audio/ogg", "libopus"), "flac": ("audio/flac", "flac"), "aac": ("audio/aac", "aac"),
}
PCM_SAMPLE_RATE = 24_000  # OpenAI's ``pcm``: raw 16-bit little-endian mono at 24 kHz


def decode_base64_audio(data: str, param: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("the audio is not valid base64", param=param) from None
    check_size(raw, param)
    return raw


def check_size(raw: bytes, param: str) -> None:
    if not raw:
        raise InvalidRequestError("the audio is empty", param=param)
    if len(raw) > MAX_AUDIO_BYTES:
        raise InvalidRequestError(f"the audio is {len(raw) / 2**20:.1f} MiB; the limit is "
                                  f"{MAX_AUDIO_BYTES // 2**20} MiB", param=param)


def decode_audio(raw: bytes, param: str = "file") -> np.ndarray:
    """Mono float32 samples at 16 kHz from an audio file in any format FFmpeg reads (blocking: run it in a
    thread). Bytes that are not audio, or audio longer than 30 minutes, are a 400."""
    import av

    try:
        with av.open(io.BytesIO(raw), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidRequestError("the file has no audio stream", param=param)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=ASR_SAMPLE_RATE)
            pieces, total = [], 0
            for frame in container.decode(audio=0):
                for converted in resampler.resample(frame):
                    piece = converted.to_ndarray().reshape(-1)
                    pieces.append(piece)
                    total += len(piece)
                if total > MAX_AUDIO_SECONDS * ASR_SAMPLE_RATE:
                    raise InvalidRequestError("the audio is longer than 30 minutes", param=param)
            for converted in resampler.resample(None):
                pieces.append(converted.to_ndarray().reshape(-1))
    except InvalidRequestError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise InvalidRequestError(f"the file is not audio in a format that can be decoded ({type(exc).__name__})",
                                  param=param) from None
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if not len(samples):
        raise InvalidRequestError("the audio has no samples", param=param)
    return samples.astype(np.float32, copy=False)


def encode_speech(samples: np.ndarray, rate: int, audio_format: str) -> bytes:
    """Mono float32 samples in [-1, 1] as a file of ``audio_format`` (blocking: run it in a thread)."""
    if audio_format == "pcm":
        return _pcm16(_resample(samples, rate, PCM_SAMPLE_RATE))
    if audio_format == "wav":
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(_pcm16(samples))
        return buffer.getvalue()
    return _encode_with_ffmpeg(samples, rate, audio_format)


def _encode_with_ffmpeg(samples: np.ndarray, rate: int, audio_format: str) -> bytes:
    import av

    codec = SPEECH_FORMATS[audio_format][1]
    assert codec is not None  # wav and pcm, the formats without an encoder, never come here
    container_format = {"opus": "ogg", "aac": "adts"}.get(audio_format, audio_format)
    target_rate = 48_000 if audio_format == "opus" else 24_000 if audio_format == "mp3" else rate
    samples = _resample(samples, rate, target_rate)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        # An audio codec makes an audio stream (PyAV's overloads can only tell from a literal codec name).
        stream = cast("AudioStream", container.add_stream(codec, rate=target_rate, layout="mono"))
        frame_size = 960 if audio_format == "opus" else 1152 if audio_format == "mp3" else 1024
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        for start in range(0, len(pcm), frame_size):
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + frame_size], format="s16", layout="mono")
            frame.sample_rate = target_rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def wav_samples(raw: bytes) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) of a 16-bit PCM WAV file (what espeak-ng writes)."""
    with wave.open(io.BytesIO(raw), "rb") as source:
        rate, channels = source.getframerate(), source.getnchannels()
        pcm = np.frombuffer(source.readframes(source.getnframes()), dtype="<i2").astype(np.float32) / 32768
    return pcm.reshape(-1, channels).mean(axis=1), rate


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear-interpolation resampling (speech synthesis output only; its band is far below either rate)."""
    if rate == target or not len(samples):
        return samples
    positions = np.arange(int(len(samples) * target / rate)) * (rate / target)
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


# ---- transcripts ---------------------------------------------------------------------------------------

TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class Transcript:
    """What a speech recogniser heard, before it is put in the requested response format."""

    text: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    words: list[dict[str, Any]] | None = None  # {"word", "start", "end"} when word timestamps were asked for

    def render(self, response_format: str, task: str) -> tuple[bytes | dict[str, Any], str]:
        """(body, media type) in one of ``TRANSCRIPT_FORMATS``."""
        if response_format == "json":
            return {"text": self.text, "usage": {"type": "duration", "seconds": round(self.duration)}}, \
                "application/json"
        if response_format == "verbose_json":
            body: dict[str, Any] = {"task": task, "language": self.language, "duration": round(self.duration, 3),
                                    "text": self.text, "segments": [vars(s) for s in self.segments]}
            if self.words is not None:
                body["words"] = self.words
            return body, "application/json"
        if response_format == "text":
            return (self.text + "\n").encode(), "text/plain; charset=utf-8"
        if response_format == "srt":
            blocks = [f"{n}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
                      for n, s in enumerate(self.segments, 1)]
            return "\n".join(blocks).encode(), "text/plain; charset=utf-8"
        cues = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in self.segments]
        return ("WEBVTT\n\n" + "\n".join(cues)).encode(), "text/vtt; charset=utf-8"


def _timestamp(seconds: float, separator: str) -> str:
    milliseconds = int(round(seconds * 1000))
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{millis:03d}"


@dataclass
class UpstreamAudioReply:
    """An upstream's transcription as it sent it (any response format), relayed unchanged."""

    content: bytes
    media_type: str


# ---- requests ------------------------------------------------------------------------------------------

@dataclass
class TranscriptionRequest:
    """``POST /v1/audio/transcriptions`` / ``translations`` (a multipart form)."""

    model: str
    audio: bytes
    filename: str
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    timestamp_granularities: list[str] = field(default_factory=list)
    other_fields: dict[str, str] = field(default_factory=dict)  # passed on to an upstream as sent

    # What the request path reads of any request.
    stream: ClassVar[bool] = False
    completion_token_limit: ClassVar[int] = 0


class SpeechRequest(OpenAIBaseModel):
    """``POST /v1/audio/speech``; ``emotion`` and ``pitch`` are EMOVA's style controls (also accepted in
    ``instructions`` as ``emotion: happy; pitch: high; speed: slow``)."""

    model: str = Field(min_length=1, max_length=256)
    input: str = Field(min_length=1, max_length=4096)
    voice: str | dict[str, Any] = "alloy"
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, max_length=4096)
    stream_format: Literal["audio", "sse"] = "audio"
    emotion: str | None = None
    pitch: str | int | None = None

    # What the request path reads of any request.
    stream: ClassVar[bool] = False
    include_usage: ClassVar[bool] = False
    completion_token_limit: ClassVar[int] = 0
