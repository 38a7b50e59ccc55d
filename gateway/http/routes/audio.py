"""``/v1/audio``: transcriptions and translations (multipart upload), speech (streamed audio)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.responses import Response, StreamingResponse

from gateway.core.errors import InvalidRequestError
from gateway.engine.accounting import CLIENT_CLOSED_REQUEST
from gateway.engine.runtime import Gateway
from gateway.http.deps import (
    ERROR_RESPONSES,
    ClientDisconnected,
    FastJSONResponse,
    GatewayDep,
    body_schema,
    cancel_on_disconnect,
    read_json_request,
    request_context,
    v1_router,
)
from gateway.wire.audio import (
    MAX_AUDIO_BYTES,
    TRANSCRIPT_FORMATS,
    SpeechRequest,
    TranscriptionRequest,
    UpstreamAudioReply,
    check_size,
)

v1 = v1_router()


# ---- audio ---------------------------------------------------------------------------------------------

_TRANSCRIPTION_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "model"],
    "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                   "language": {"type": "string"}, "prompt": {"type": "string"},
                   "response_format": {"type": "string", "enum": list(TRANSCRIPT_FORMATS)},
                   "temperature": {"type": "number"},
                   "timestamp_granularities[]": {"type": "array", "items": {"type": "string",
                                                                            "enum": ["word", "segment"]}}}}}}}}
_AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES, 200: {"description": "The transcript (JSON, or text in the requested format)",
                             "content": {"application/json": {"schema": {"type": "object"}},
                                         "text/plain": {"schema": {"type": "string"}}}}}
_FORM_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
                "timestamp_granularities"}


@v1.post("/audio/transcriptions", responses=_AUDIO_RESPONSES, openapi_extra=_TRANSCRIPTION_FORM)
async def create_transcription(request: Request, gateway: GatewayDep) -> Response:
    """Speech to text (multipart: ``file``, ``model``, ``language``, ``prompt``, ``response_format``, ...)."""
    return await _transcription(request, gateway, "transcribe")


@v1.post("/audio/translations", responses=_AUDIO_RESPONSES, openapi_extra=_TRANSCRIPTION_FORM)
async def create_translation(request: Request, gateway: GatewayDep) -> Response:
    """Speech to English text."""
    return await _transcription(request, gateway, "translate")


async def _transcription(request: Request, gateway: Gateway, task: str) -> Response:
    parsed = await read_transcription_form(request)
    request.state.log.update(model=parsed.model)
    try:
        result = await cancel_on_disconnect(request.receive, gateway.transcribe(request_context(request), parsed, task))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(result, UpstreamAudioReply):
        return Response(result.content, media_type=result.media_type)
    body, media_type = result.render(parsed.response_format, "transcribe" if task == "transcribe" else "translate")
    return FastJSONResponse(body) if isinstance(body, dict) else Response(body, media_type=media_type)


async def read_transcription_form(request: Request) -> TranscriptionRequest:
    """The multipart form of a transcription; every problem is a 400 naming the field."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequestError("expected a multipart/form-data body with 'file' and 'model'", param="file")
    try:
        form = await request.form(max_files=1, max_fields=64)
    except (MultiPartException, ValueError, KeyError) as exc:
        raise InvalidRequestError(f"the multipart body cannot be read: {exc}", param="file") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequestError("'file' is a required property (an audio file)", param="file")
    raw = await upload.read(MAX_AUDIO_BYTES + 1)
    check_size(raw, "file")

    def text(name: str) -> str | None:
        value = form.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequestError(f"'{name}' must be a text field", param=name)
        return value

    model = text("model")
    if not model:
        raise InvalidRequestError("'model' is a required property", param="model")
    response_format = text("response_format") or "json"
    if response_format not in TRANSCRIPT_FORMATS:
        raise InvalidRequestError(f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}",
                                  param="response_format")
    try:
        temperature = float(text("temperature") or 0)
    except ValueError:
        temperature = -1
    if not 0 <= temperature <= 1:
        raise InvalidRequestError("temperature must be a number from 0 to 1", param="temperature")
    granularities = [g for name in ("timestamp_granularities[]", "timestamp_granularities") for g in form.getlist(name)]
    if any(g not in ("word", "segment") for g in granularities):
        raise InvalidRequestError("timestamp_granularities must be 'word' and/or 'segment'",
                                  param="timestamp_granularities")
    if granularities and response_format != "verbose_json":
        raise InvalidRequestError("timestamp_granularities needs response_format 'verbose_json'",
                                  param="timestamp_granularities")
    others = {name: value for name, value in form.multi_items() if name not in _FORM_FIELDS}
    if any(not isinstance(value, str) for value in others.values()):
        raise InvalidRequestError("only one file may be sent, as 'file'", param="file")
    return TranscriptionRequest(model=model, audio=raw, filename=upload.filename or "audio",
                                language=text("language"), prompt=text("prompt"), response_format=response_format,
                                temperature=temperature, timestamp_granularities=[str(g) for g in granularities],
                                other_fields=others)  # type: ignore[arg-type]


@v1.post("/audio/speech", responses={**ERROR_RESPONSES, 200: {"description": "The audio file, streamed",
                                                              "content": {"audio/mpeg": {}}}},
         openapi_extra=body_schema(SpeechRequest))
async def create_speech(request: Request, gateway: GatewayDep) -> Response:
    """Text to speech: the audio file (``response_format``: mp3, opus, aac, flac, wav, pcm), streamed."""
    parsed = await read_json_request(request, SpeechRequest)
    request.state.log.update(model=parsed.model)
    try:
        pieces, media_type = await cancel_on_disconnect(request.receive,
                                                        gateway.speak(request_context(request), parsed))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return StreamingResponse(pieces, media_type=media_type)
