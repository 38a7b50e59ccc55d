"""Backend for any OpenAI-compatible HTTP server, first of all vLLM (``vllm serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import httpx
from httpx_sse import EventSource, SSEError

from gateway.backends.base import Backend, Request
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.protocol import Endpoint

_PATHS: dict[str, str] = {"chat": "chat/completions", "completions": "completions"}


class OpenAIHTTPBackend(Backend):
    """Forwards requests to ``base_url``, renaming the model and passing every other field through.

    One pooled ``httpx.AsyncClient`` per upstream; ``connect_timeout_s`` bounds connecting and
    ``timeout_s`` the whole request, streamed ones included. Streams are relayed event by event.
    """

    _client: httpx.AsyncClient
    _aborted = False

    async def start(self) -> None:
        headers = {}
        key = self.config.upstream_api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        base_url = self.config.base_url or ""
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s),
            limits=httpx.Limits(max_connections=self.config.max_connections,
                                max_keepalive_connections=self.config.max_connections),
        )
        root = base_url.rstrip("/")
        self._health_url = (root[: -len("/v1")] if root.endswith("/v1") else root) + "/health"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def abort(self) -> None:
        self._aborted = True
        await self._client.aclose()  # in-flight requests fail at once; vLLM sees the connections close

    async def check_ready(self) -> tuple[bool, str]:
        """vLLM's ``GET /health`` next to ``/v1``; servers without it (404) are asked ``GET /v1/models``."""
        timeout = min(5.0, self.config.timeout_s)
        try:
            response = await self._client.get(self._health_url, timeout=timeout)
            if response.status_code in (404, 405):
                response = await self._client.get("models", timeout=timeout)
        except httpx.HTTPError as exc:
            return False, f"upstream unreachable: {type(exc).__name__}"
        if response.status_code != 200:
            return False, f"upstream answered {response.status_code}"
        return True, "ok"

    async def complete(self, endpoint: Endpoint, request: Request) -> dict[str, Any]:
        body = request.upstream_body(self.config.served_model)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await self._client.post(_PATHS[endpoint], json=body)
                if response.status_code >= 400:
                    self._raise_for_status(response.status_code, response.content, response.headers)
                data = response.json()
        except (httpx.HTTPError, TimeoutError, json.JSONDecodeError) as exc:
            self._raise_transport_error(exc)
        data["model"] = self.name
        return data

    async def stream(self, endpoint: Endpoint, request: Request) -> AsyncIterator[dict[str, Any]]:
        body = request.upstream_body(self.config.served_model)
        # Always ask for usage: token metrics and per-key limits count it; the caller drops the usage
        # chunk when the client did not ask for it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        deadline = asyncio.get_running_loop().time() + self.config.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(
                    self._client.build_request("POST", _PATHS[endpoint], json=body), stream=True)
        except (httpx.HTTPError, TimeoutError) as exc:
            self._raise_transport_error(exc)
        try:
            if response.status_code >= 400:
                async with asyncio.timeout_at(deadline):
                    content = await response.aread()
                self._raise_for_status(response.status_code, content, response.headers)
            events = EventSource(response).aiter_sse()
            while True:
                # The deadline covers only the wait for the next event: never wrap a `yield` in a timeout.
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(events, None)
                except (httpx.HTTPError, TimeoutError, SSEError) as exc:
                    self._raise_transport_error(exc)
                if event is None or event.data.strip() == "[DONE]":
                    await _drain(response)
                    return
                if not event.data:  # a comment or an empty event
                    continue
                chunk = json.loads(event.data)
                if event.event == "error" or (isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk):
                    raise UpstreamError(f"upstream '{self.name}' failed mid-stream: {_message_of(chunk)}")
                chunk["model"] = self.name
                yield chunk
        except json.JSONDecodeError as exc:
            raise UpstreamError(f"upstream '{self.name}' sent an unreadable stream event: {exc}") from exc
        finally:
            await response.aclose()

    def _raise_transport_error(self, exc: BaseException) -> NoReturn:
        """Translate httpx/timeout failures, most specific first."""
        if isinstance(exc, GatewayError):
            raise exc
        if self._aborted:
            raise UpstreamUnavailableError("the gateway is shutting down; the request was ended before it "
                                           "completed", code="shutting_down") from exc
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            raise UpstreamUnavailableError(f"upstream '{self.name}' is unreachable: {exc or type(exc).__name__}"
                                           ) from exc
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            raise UpstreamTimeoutError(
                f"upstream '{self.name}' did not answer within {self.config.timeout_s:g} s") from exc
        if isinstance(exc, json.JSONDecodeError):
            raise UpstreamError(f"upstream '{self.name}' returned invalid JSON") from exc
        raise UpstreamError(f"upstream '{self.name}' connection failed: {type(exc).__name__}: {exc}") from exc

    def _raise_for_status(self, status: int, content: bytes, headers: httpx.Headers) -> NoReturn:
        message = f"upstream '{self.name}' answered {status}: {_message_of(_json_or_text(content))}"
        if status in (400, 413, 422):
            # The request itself is at fault (too long a prompt, bad vLLM parameter): the client's error.
            raise InvalidRequestError(message)
        if status == 429:
            raise RateLimitError(message, retry_after_s=_float_or(headers.get("retry-after"), 1.0))
        if status == 503:
            raise UpstreamUnavailableError(message, upstream_status=status)
        if status == 504:
            raise UpstreamTimeoutError(message, upstream_status=status)
        raise UpstreamError(message, upstream_status=status)


async def _drain(response: httpx.Response, timeout_s: float = 0.5) -> None:
    """Read what follows ``[DONE]`` (normally just the end of the chunked body) so the connection goes back
    to the pool instead of being closed; an upstream that keeps it open is given up on quickly."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError, RuntimeError):
        async with asyncio.timeout(timeout_s):
            async for _ in response.aiter_bytes():
                pass


def _json_or_text(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
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
        return json.dumps(payload)[:1000]
    return str(payload).strip()[:1000] or "(empty body)"


def _float_or(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default
