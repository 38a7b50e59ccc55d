"""Backend for any OpenAI-compatible HTTP server, first of all vLLM (``vllm serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Literal, NoReturn

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from gateway.backends.base import Backend, RelayedChunks, Request
from gateway.backends.sse_reader import ServerSentEvent, iter_sse_batches
from gateway.core.config import ModelConfig
from gateway.core.errors import (
    GatewayError,
    RateLimitError,
    UpstreamError,
    UpstreamRejectedRequestError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.wire.anthropic import MessagesRequest
from gateway.wire.audio import SpeechRequest, TranscriptionRequest, UpstreamAudioReply
from gateway.wire.openai import EmbeddingRequest, Endpoint, is_usage_chunk
from gateway.wire.rerank import RerankRequest
from gateway.wire.responses import ResponsesRequest

logger = logging.getLogger(__name__)

_PATHS: dict[str, str] = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings",
                          "responses": "responses", "messages": "messages", "transcribe": "audio/transcriptions",
                          "translate": "audio/translations", "speech": "audio/speech", "rerank": "rerank"}
_JSON_HEADERS = {"content-type": "application/json"}


class OpenAIHTTPBackend(Backend):
    """Forwards requests to ``base_url``, renaming the model and passing every other field through.

    One pooled aiohttp session per upstream (aiohttp rather than httpx: the client is most of a proxied
    request's CPU, and on one core aiohttp's does ~12,000 requests/s where httpx's does ~900);
    ``connect_timeout_s`` bounds connecting and ``timeout_s`` the whole request, streamed ones included.
    A stream a client reads unchanged is relayed as what each upstream read brought (``relay``).
    """

    _session: aiohttp.ClientSession
    _aborted = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._open: set[aiohttp.ClientResponse] = set()  # responses being read, closed by ``abort``

    async def start(self) -> None:
        headers = {}
        key = self.config.upstream_api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        root = (self.config.base_url or "").rstrip("/")
        self._urls = {endpoint: f"{root}/{path}" for endpoint, path in _PATHS.items()}
        self._models_url = f"{root}/models"
        server_root = root[: -len("/v1")] if root.endswith("/v1") else root
        self._health_url, self._metrics_url = f"{server_root}/health", f"{server_root}/metrics"
        # ``total`` is the whole request's deadline, streamed bodies included: aiohttp checks it on every read
        # (a read under way is interrupted; a deadline that passed while a chunk was with the client fails the
        # next read), with no timeout object per event. A wait for a free pooled connection counts towards it.
        self._session = aiohttp.ClientSession(
            headers=headers, proxy=_env_proxy_for(root),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s, sock_connect=self.config.connect_timeout_s),
            connector=aiohttp.TCPConnector(limit=self.config.max_connections, limit_per_host=0))

    async def aclose(self) -> None:
        await self._session.close()

    async def abort(self) -> None:
        self._aborted = True
        # Closing a response makes its pending read fail with a connection error (which becomes the
        # "shutting down" error); closing only the session would cancel those reads instead.
        for response in list(self._open):
            response.close()
        await self._session.close()  # vLLM sees the connections close and aborts the generations

    async def check_ready(self) -> tuple[bool, str]:
        """vLLM's ``GET /health`` next to ``/v1``; servers without it (404) are asked ``GET /v1/models``."""
        try:
            async with asyncio.timeout(min(5.0, self.config.timeout_s)):
                async with self._session.get(self._health_url) as response:
                    status = response.status
                if status in (404, 405):
                    async with self._session.get(self._models_url) as response:
                        status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"upstream unreachable: {type(exc).__name__}"
        if status != 200:
            return False, f"upstream answered {status}"
        return True, "ok"

    async def read_metrics(self, timeout_s: float) -> str | None:
        """The server's Prometheus ``/metrics`` text (vLLM's, next to ``/v1``), or ``None`` when it cannot be read."""
        try:
            async with asyncio.timeout(timeout_s), self._session.get(self._metrics_url) as response:
                if response.status != 200:
                    return None
                return await response.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        """vLLM (``--task embed``) and OpenAI serve ``/v1/embeddings``: the request goes as sent, model renamed."""
        body = {**request.model_dump(exclude_unset=True), "model": self.config.served_model}
        return await self._post("embeddings", orjson.dumps(body))

    async def rerank(self, request: RerankRequest) -> dict[str, Any]:
        """vLLM (cross-encoder and scoring models), Jina, Infinity and TEI-style servers answer ``/v1/rerank``:
        the request goes as sent, model renamed."""
        return await self._post("rerank", orjson.dumps(request.upstream_body(self.config.served_model)))

    async def complete(self, endpoint: Endpoint, request: Request) -> dict[str, Any]:
        return await self._post(endpoint, orjson.dumps(request.upstream_body(self.config.served_model)))

    async def transcribe(self, request: TranscriptionRequest, task: str) -> UpstreamAudioReply:
        """vLLM serves Whisper-style ``/v1/audio/transcriptions``: the form goes on as sent, model renamed."""
        form = aiohttp.FormData()
        form.add_field("file", request.audio, filename=request.filename or "audio",
                       content_type="application/octet-stream")
        form.add_field("model", self.config.served_model)
        fields = {"language": request.language, "prompt": request.prompt, "response_format": request.response_format,
                  "temperature": str(request.temperature), **request.other_fields}
        for name, value in fields.items():
            if value:
                form.add_field(name, value)
        for granularity in request.timestamp_granularities:
            form.add_field("timestamp_granularities[]", granularity)
        try:
            async with self._session.post(self._urls[task], data=form) as response:
                content = await response.read()
                if response.status >= 400:
                    self._raise_for_status(response.status, content, response.headers)
                return UpstreamAudioReply(content, response.headers.get("content-type", "application/json"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._raise_transport_error(exc)

    async def speak(self, request: SpeechRequest) -> tuple[AsyncIterator[bytes], str]:
        """``/v1/audio/speech`` upstream: the audio is relayed as it arrives."""
        body = {**request.model_dump(exclude_unset=True), "model": self.config.served_model}
        try:
            response = await self._session.post(self._urls["speech"], data=orjson.dumps(body), headers=_JSON_HEADERS)
            if response.status >= 400:
                content = await response.read()
                response.close()
                self._raise_for_status(response.status, content, response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._raise_transport_error(exc)
        return self._relay_bytes(response), response.headers.get("content-type", "application/octet-stream")

    async def _relay_bytes(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        self._open.add(response)
        try:
            async for piece in response.content.iter_chunked(32 * 1024):
                yield piece
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._raise_transport_error(exc)
        finally:
            self._open.discard(response)
            response.close()

    async def respond(self, request: ResponsesRequest) -> dict[str, Any]:
        return await self._post("responses", orjson.dumps(request.upstream_body(self.config.served_model)))

    def stream_responses(self, request: ResponsesRequest) -> AsyncIterator[dict[str, Any]]:
        return self._stream("responses", request.upstream_body(self.config.served_model))

    async def messages(self, request: MessagesRequest) -> dict[str, Any]:
        return await self._post("messages", orjson.dumps(request.upstream_body(self.config.served_model)))

    def stream_messages(self, request: MessagesRequest) -> AsyncIterator[dict[str, Any]]:
        return self._stream("messages", request.upstream_body(self.config.served_model))

    async def _post(self, endpoint: Endpoint | Literal["responses", "messages", "rerank"],
                    body: bytes) -> dict[str, Any]:
        try:
            async with self._session.post(self._urls[endpoint], data=body, headers=_JSON_HEADERS) as response:
                self._open.add(response)
                try:
                    content = await response.read()
                finally:
                    self._open.discard(response)
                if response.status >= 400:
                    self._raise_for_status(response.status, content, response.headers)
            data = orjson.loads(content)
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            self._raise_transport_error(exc)
        if not isinstance(data, dict):
            raise UpstreamError(f"upstream '{self.name}' returned JSON that is not an object")
        data["model"] = self.name
        return data

    def stream(self, endpoint: Endpoint, request: Request) -> AsyncIterator[dict[str, Any]]:
        return self._stream(endpoint, self._stream_body(request))

    async def relay(self, endpoint: Endpoint, request: Request) -> AsyncIterator[RelayedChunks]:
        """The chunks each upstream read brought, dumped once (model renamed) and sent in one write."""
        include_usage = request.include_usage
        async with aclosing(self._chunk_batches(endpoint, self._stream_body(request))) as batches:
            async for chunks in batches:
                frames, usage = [], None
                for chunk in chunks:
                    if is_usage_chunk(chunk):
                        usage = chunk["usage"]
                        if not include_usage:
                            continue
                    frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
                yield RelayedChunks(b"".join(frames), usage)

    def _stream_body(self, request: Request) -> dict[str, Any]:
        body = request.upstream_body(self.config.served_model)
        # Always ask for usage: token metrics and per-key limits count it; the caller drops the usage
        # chunk when the client did not ask for it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    async def _stream(self, endpoint: Endpoint | Literal["responses", "messages"],
                      body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The upstream's SSE events as dicts (chat chunks or Responses events), model renamed."""
        async with aclosing(self._chunk_batches(endpoint, body)) as batches:
            async for chunks in batches:
                for chunk in chunks:
                    yield chunk

    async def _chunk_batches(self, endpoint: Endpoint | Literal["responses", "messages"],
                             body: dict[str, Any]) -> AsyncGenerator[list[dict[str, Any]], None]:
        """``_stream``'s events in the lists that each read of the upstream completed."""
        try:
            response = await self._session.post(self._urls[endpoint], data=orjson.dumps(body), headers=_JSON_HEADERS)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._raise_transport_error(exc)
        finished = False
        self._open.add(response)
        try:
            if response.status >= 400:
                try:
                    content = await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._raise_transport_error(exc)
                self._raise_for_status(response.status, content, response.headers)
            batches = iter_sse_batches(response.content.iter_any())
            done = False
            while not done:
                try:
                    events = await anext(batches, None)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._raise_transport_error(exc)
                if events is None:
                    break
                chunks, failure = [], None
                for event in events:
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    if not event.data:  # an event without data is a keep-alive some servers send
                        continue
                    try:
                        chunks.append(self._chunk_of(event))
                    except UpstreamError as exc:  # the chunks before it still reach the client
                        failure = exc
                        break
                if chunks:
                    yield chunks
                if failure is not None:
                    raise failure
            finished = await _drain(response)
        finally:
            # A stream read to its end goes back to the pool; any other end closes the connection, which is
            # how vLLM learns to abort the generation.
            self._open.discard(response)
            if finished:
                response.release()
            else:
                response.close()

    def _chunk_of(self, event: ServerSentEvent) -> dict[str, Any]:
        """One event's chunk with the model renamed; an error event or unreadable JSON raises."""
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"upstream '{self.name}' sent an unreadable stream event: {exc}") from exc
        if event.event == "error" or (isinstance(chunk, dict) and (
                chunk.get("type") == "error" or ("error" in chunk and "choices" not in chunk))):
            raise UpstreamError(f"upstream '{self.name}' failed mid-stream: {_message_of(chunk)}")
        if isinstance(chunk.get("response"), dict):  # a Responses event carrying the response
            chunk["response"]["model"] = self.name
        elif isinstance(chunk.get("message"), dict):  # Anthropic's message_start
            chunk["message"]["model"] = self.name
        elif "type" not in chunk:  # a chat chunk (Responses and Anthropic events have a type, and no model)
            chunk["model"] = self.name
        return chunk

    def _raise_transport_error(self, exc: BaseException) -> NoReturn:
        """Translate aiohttp/timeout failures, most specific first. Messages to clients name the model, never
        the upstream's address (aiohttp's own messages carry host and port): the full error goes to the log."""
        if isinstance(exc, GatewayError):
            raise exc
        if self._aborted:
            raise UpstreamUnavailableError("the gateway is shutting down; the request was ended before it "
                                           "completed", code="shutting_down") from exc
        logger.warning("upstream %r at %s failed: %s: %s", self.name, self.config.base_url, type(exc).__name__, exc)
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            raise UpstreamUnavailableError(f"upstream '{self.name}' is unreachable ({_connect_failure(exc)})"
                                           ) from exc
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeoutError(
                f"upstream '{self.name}' did not answer within {self.config.timeout_s:g} s") from exc
        if isinstance(exc, orjson.JSONDecodeError):
            raise UpstreamError(f"upstream '{self.name}' returned invalid JSON") from exc
        raise UpstreamError(f"upstream '{self.name}' connection failed ({type(exc).__name__})") from exc

    def _raise_for_status(self, status: int, content: bytes, headers: CIMultiDictProxy[str]) -> NoReturn:
        payload = _json_or_text(content)
        if status in (400, 413, 422):
            # The request itself is at fault (too long a prompt, a bad vLLM parameter): the client's error, with
            # the upstream's status, message and param as it sent them.
            raise UpstreamRejectedRequestError(_message_of(payload), status_code=status, param=_param_of(payload))
        message = f"upstream '{self.name}' answered {status}: {_message_of(payload)}"
        if status == 429:
            raise RateLimitError(message, retry_after_s=_float_or(headers.get("retry-after"), 1.0))
        if status == 503:
            raise UpstreamUnavailableError(message, upstream_status=status)
        if status == 504:
            raise UpstreamTimeoutError(message, upstream_status=status)
        raise UpstreamError(message, upstream_status=status)


def _connect_failure(exc: BaseException) -> str:
    """What went wrong while connecting, in words that carry no address."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "TLS failed"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connecting timed out"
    return "connection refused"


async def _drain(response: aiohttp.ClientResponse, timeout_s: float = 0.5) -> bool:
    """Read what follows ``[DONE]`` (normally just the end of the chunked body) so the connection can go back
    to the pool; whether the body ended (an upstream that keeps it open is given up on quickly)."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            async for _ in response.content.iter_any():
                pass
            return True
    return False


def _env_proxy_for(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / NO_PROXY name for ``url``, read once at start (aiohttp's ``trust_env``
    reads the environment and ``~/.netrc`` on every request: measured at ~5% of a proxied request's CPU)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if not host or urllib.request.proxy_bypass(host.rsplit(":", 1)[0] if not host.endswith("]") else host):
        return None
    return urllib.request.getproxies().get(scheme.lower())


def _json_or_text(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", "replace")


def _message_of(payload: Any) -> str:
    """The human message in an upstream error payload (OpenAI, vLLM, FastAPI or plain text)."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if payload.get(key):
                return str(payload[key])[:1000]
        return orjson.dumps(payload).decode()[:1000]
    return str(payload).strip()[:1000] or "(empty body)"


def _param_of(payload: Any) -> str | None:
    error = payload.get("error") if isinstance(payload, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else None


def _float_or(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default
