"""Audio in chat: ``input_audio`` parts in, ``modalities: ["text", "audio"]`` out.

A model entry with ``audio: true`` takes both natively (its request passes through untouched). For every other
model the gateway runs EMOVA's behaviour assembled from parts, a cascade: the configured speech recogniser
turns each ``input_audio`` part into text (so routing, safety stages and the model all read the transcript) and
the clip's pitch and loudness are measured, the text model answers and, beside its answer, chooses how the answer
should sound (an emotion and a pitch, :mod:`gateway.engine.voice`), and the speech synthesiser speaks the answer in
that style into ``message.audio``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.backends import Backend
from gateway.backends.speech import EspeakBackend
from gateway.core.errors import GatewayError, InvalidRequestError
from gateway.engine.pool import ModelPool
from gateway.engine.voice import SpeechStyle, VoiceProfile, style_of, style_request, voice_profile
from gateway.wire.audio import (
    ASR_SAMPLE_RATE,
    SpeechRequest,
    Transcript,
    TranscriptionRequest,
    decode_audio,
    decode_base64_audio,
)
from gateway.wire.openai import ChatCompletionRequest, message_text_of
from gateway.wire.stages import add_usage

logger = logging.getLogger(__name__)

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]  # what SpeechRequest.response_format takes
# chat's ``audio.format`` -> the speech model's format
AUDIO_OUTPUT_FORMATS: dict[str, SpeechFormat] = {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "opus",
                                                  "aac": "aac", "pcm16": "pcm"}
INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac", "opus", "ogg", "m4a", "webm", "aac")
AUDIO_EXPIRY_S = 3600
_AUDIO_DATA_PIECE = 64 * 1024  # base64 characters per streamed audio delta (a multiple of 4)


@dataclass(frozen=True)
class AudioOutput:
    voice: str
    audio_format: SpeechFormat


@dataclass
class AudioPlan:
    """A chat request as each kind of model takes it: ``native`` (audio untouched) for ``audio: true`` models,
    ``cascaded`` (transcripts in place of audio, no audio output asked) for the others; ``voice``: how the last
    user turn's clip sounded, when it was spoken."""

    native: ChatCompletionRequest
    cascaded: ChatCompletionRequest
    has_audio_input: bool
    output: AudioOutput | None
    voice: VoiceProfile | None = None


    def request_for(self, backend: Backend) -> ChatCompletionRequest:
        return self.native if backend.config.audio else self.cascaded


@dataclass
class ChosenStyle:
    """How a cascaded answer is spoken, and what choosing it cost (the model call's usage)."""

    style: SpeechStyle = field(default_factory=SpeechStyle)
    usage: dict[str, int] = field(default_factory=dict)


class AudioChat:
    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool
        self.recogniser = next((b for b in pool.backends.values() if b.config.task == "transcribe"), None)
        self.synthesiser = next((b for b in pool.backends.values() if b.config.task == "speech"), None)

    @staticmethod
    def involved(request: ChatCompletionRequest) -> bool:
        extra = request.model_extra or {}
        return has_audio_input(request) or "audio" in (extra.get("modalities") or []) or extra.get("audio") is not None

    async def plan(self, request: ChatCompletionRequest, all_native: bool) -> AudioPlan:
        """The request's variants; ``all_native``: every model it may go to takes audio (no transcription)."""
        extra = request.model_extra or {}
        output = self._output(extra)
        audio_in = has_audio_input(request)
        if output is not None and not all_native:
            if self.synthesiser is None:
                raise InvalidRequestError("audio output needs a speech model (task: speech) or a model with "
                                          "audio: true", param="modalities")
            if isinstance(self.synthesiser, EspeakBackend):
                self.synthesiser.voice_for(output.voice)  # an unknown voice is a 400 before anything runs
        if all_native:
            return AudioPlan(request, request, audio_in, output)
        data = request.model_dump(exclude_unset=True)
        data.pop("modalities", None)
        data.pop("audio", None)
        voice = None
        if audio_in:
            last_user = max((m for m, message in enumerate(data["messages"]) if message.get("role") == "user"),
                            default=-1)
            for m, message in enumerate(data["messages"]):
                if isinstance(message.get("content"), list):
                    parts = []
                    for p, part in enumerate(message["content"]):
                        text, heard = await self._as_text(part, f"messages.{m}.content.{p}", profile=m == last_user)
                        parts.append(text)
                        voice = heard or voice
                    message["content"] = parts
        return AudioPlan(request, ChatCompletionRequest.model_validate(data), audio_in, output, voice)

    def _output(self, extra: dict[str, Any]) -> AudioOutput | None:
        modalities = extra.get("modalities") or ["text"]
        if "audio" not in modalities:
            if extra.get("audio") is not None:
                raise InvalidRequestError("'audio' needs modalities: ['text', 'audio']", param="audio")
            return None
        options = extra.get("audio")
        if not isinstance(options, dict) or not isinstance(options.get("voice"), str | dict):
            raise InvalidRequestError("audio output needs 'audio': {'voice': ..., 'format': ...}", param="audio")
        audio_format = AUDIO_OUTPUT_FORMATS.get(options.get("format", "wav"))
        if audio_format is None:
            raise InvalidRequestError(f"audio.format must be one of {', '.join(AUDIO_OUTPUT_FORMATS)}",
                                      param="audio.format")
        voice = options["voice"]
        return AudioOutput(voice.get("id", "") if isinstance(voice, dict) else voice, audio_format)

    async def _as_text(self, part: dict[str, Any], param: str,
                       profile: bool) -> tuple[dict[str, Any], VoiceProfile | None]:
        """The part as text (an audio part: its transcript), and with ``profile`` an audio part's voice."""
        if part.get("type") != "input_audio":
            return part, None
        if self.recogniser is None:
            raise InvalidRequestError("the request carries audio, but no model takes audio and no speech "
                                      "recogniser (task: transcribe) is configured", param=param)
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise InvalidRequestError("an input_audio part needs {'data': base64, 'format': ...}", param=param)
        audio_format = audio.get("format")
        if audio_format not in INPUT_AUDIO_FORMATS:
            raise InvalidRequestError(f"input_audio.format must be one of {', '.join(INPUT_AUDIO_FORMATS)}",
                                      param=f"{param}.input_audio.format")
        raw = decode_base64_audio(audio["data"], f"{param}.input_audio.data")
        heard = await self.recogniser.transcribe(TranscriptionRequest(model=self.recogniser.name, audio=raw,
                                                                      filename=f"input.{audio_format}"), "transcribe")
        if not isinstance(heard, Transcript):  # an upstream recogniser answers JSON ({"text": ...})
            heard = Transcript(orjson.loads(heard.content).get("text", ""), "", 0.0)
        voice = None
        if profile:  # the clip decoded (the recogniser read it already, so it is audio) and measured, off the loop
            voice = await asyncio.to_thread(
                lambda: voice_profile(decode_audio(raw, f"{param}.input_audio.data"), ASR_SAMPLE_RATE))
        return {"type": "text", "text": heard.text}, voice

    async def choose_style(self, backend: Backend, plan: AudioPlan) -> ChosenStyle:
        """How ``backend``'s answer should sound, chosen by that model under constrained decoding (neutral when it
        cannot say: an upstream that refuses the JSON schema, an error)."""
        question = style_request(backend.name, plan.cascaded.last_user_text(), plan.voice)
        try:
            reply = await backend.complete("chat", question)
        except GatewayError as exc:
            logger.warning("model '%s' chose no speaking style (%s); neutral", backend.name, exc.message)
            return ChosenStyle()
        style = style_of(message_text_of(reply))
        if style is None:
            logger.warning("model '%s' answered no speaking style; neutral", backend.name)
        return ChosenStyle(style or SpeechStyle(), add_usage(reply))

    async def speak_answer(self, body: dict[str, Any], output: AudioOutput,
                           chosen: Awaitable[ChosenStyle]) -> dict[str, Any]:
        """Each choice's text spoken into ``message.audio`` in the chosen style (content moves to its transcript,
        as OpenAI's); the style's model call is added to the usage."""
        choice_style = await chosen
        for choice in body.get("choices", []):
            message = choice.get("message") or {}
            text = message.get("content") or ""
            if text:
                message["audio"] = {**self._audio_header(), "data": await self._speak(text, output, choice_style.style),
                                    "transcript": text, **_style_fields(choice_style.style)}
                message["content"] = None
        if choice_style.usage and body.get("usage"):
            body["usage"] = {**body["usage"], **add_usage(body, {"usage": choice_style.usage})}
        return body

    async def speak_stream(self, chunks: AsyncIterator[dict[str, Any]], output: AudioOutput,
                           keepalive: dict[str, Any], chosen: asyncio.Future[ChosenStyle]
                           ) -> AsyncIterator[dict[str, Any]]:
        """Text deltas become ``delta.audio.transcript``; before each choice's finish chunk its audio follows,
        base64 in pieces, in the chosen style (named in those pieces); the final usage chunk counts the style's
        model call too."""
        texts: dict[int, list[str]] = {}
        header = self._audio_header()
        try:
            async for chunk in chunks:
                if chunk is keepalive:
                    yield chunk
                    continue
                if not chunk.get("choices"):
                    if chunk.get("usage") and (await chosen).usage:
                        chunk = {**chunk, "usage": {**chunk["usage"],
                                                    **add_usage(chunk, {"usage": (await chosen).usage})}}
                    yield chunk
                    continue
                choice = chunk["choices"][0]
                index, delta = choice.get("index", 0), choice.get("delta") or {}
                if delta.get("content"):
                    texts.setdefault(index, []).append(delta["content"])
                    delta["audio"] = {"id": header["id"], "transcript": delta.pop("content")}
                if choice.get("finish_reason") is not None and texts.get(index):
                    style = (await chosen).style
                    data = await self._speak("".join(texts[index]), output, style)
                    for start in range(0, len(data), _AUDIO_DATA_PIECE):
                        yield {**chunk, "choices": [{"index": index, "delta": {"audio": {
                            **header, "data": data[start:start + _AUDIO_DATA_PIECE], **_style_fields(style)}},
                            "finish_reason": None}]}
                yield chunk
        finally:
            chosen.cancel()
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _speak(self, text: str, output: AudioOutput, style: SpeechStyle) -> str:
        assert self.synthesiser is not None, "plan() refuses audio output without a speech model"
        pieces, _ = await self.synthesiser.speak(SpeechRequest(model=self.synthesiser.name, input=text[:4096],
                                                               voice=output.voice,
                                                               response_format=output.audio_format,
                                                               emotion=style.emotion, pitch=style.pitch))
        return base64.b64encode(b"".join([piece async for piece in pieces])).decode()

    @staticmethod
    def _audio_header() -> dict[str, Any]:
        return {"id": f"audio_{os.urandom(12).hex()}", "expires_at": int(time.time()) + AUDIO_EXPIRY_S}


def _style_fields(style: SpeechStyle) -> dict[str, str]:
    """How ``message.audio`` names the style it was spoken in."""
    return {"emotion": style.emotion, "pitch": style.pitch}


def has_audio_input(request: ChatCompletionRequest) -> bool:
    return any(isinstance(m.content, list) and any(part.type == "input_audio" for part in m.content)
               for m in request.messages)

