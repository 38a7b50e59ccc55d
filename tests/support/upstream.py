"""A scripted OpenAI-compatible upstream (a stand-in for a vLLM server) that records what it receives.

Each request is answered by ``upstream.responder(body) -> Reply``; the default answers
``"<name>: <last user text>"``. Every call is recorded with its body, headers, timing and, when the
gateway closes the connection early, the moment it did.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.support.servers import ServerThread


@dataclass
class Reply:
    text: str = ""
    status: int = 200
    error_message: str = "scripted failure"
    delay_s: float = 0.0  # before answering (non-stream) / before the first chunk (stream)
    chunks: list[str] | None = None  # stream: these deltas (default: the text split in words)
    chunk_delay_s: float = 0.0
    hang: bool = False  # never answer (until the client goes away)
    endless: bool = False  # stream: keep sending chunks until the client goes away
    die_after_chunks: int | None = None  # stream: drop the connection after this many chunks
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the response body
    raw_sse: str | None = None  # stream: send exactly this body (to test the gateway's SSE parsing)


@dataclass
class Call:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    started: float
    finished: float | None = None
    disconnected: float | None = None
    chunks_sent: int = 0

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.body.get("messages", [])):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                return "\n".join(p.get("text", "") for p in content or [] if p.get("type") == "text")
        return str(self.body.get("prompt", ""))

    @property
    def has_image(self) -> bool:
        return any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
                   for m in self.body.get("messages", []))


class ScriptedUpstream:
    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.calls: list[Call] = []
        self.responder: Callable[[dict[str, Any]], Reply] = self.echo
        self.healthy = True
        # GET /metrics: None answers 404 (not a vLLM); set vLLM's gauges as Prometheus text, or delay it
        self.metrics_text: str | None = None
        self.metrics_delay_s = 0.0
        self._lock = threading.Lock()
        self.app = self._build_app()
        self.server = ServerThread(self.app)

    # ---- lifecycle
    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"

    def start(self) -> ScriptedUpstream:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> ScriptedUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- scripting
    def echo(self, body: dict[str, Any]) -> Reply:
        call = Call("", body, {}, 0)
        return Reply(text=f"{self.name}: {call.last_user_text}")

    def set_vllm_load(self, running: float, waiting: float, kv_cache: float = 0.0) -> None:
        """Answer GET /metrics as vLLM does, with these gauges."""
        self.metrics_text = "".join(
            f"# TYPE vllm:{name} gauge\nvllm:{name}{{model_name=\"{self.name}\"}} {value}\n"
            for name, value in (("num_requests_running", running), ("num_requests_waiting", waiting),
                                ("kv_cache_usage_perc", kv_cache)))

    def wait_for_calls(self, count: int, timeout_s: float = 10.0) -> list[Call]:
        deadline = time.monotonic() + timeout_s
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.calls

    # ---- the app
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> Response:
            if not self.healthy:
                return JSONResponse({"error": {"message": "down"}}, status_code=503)
            return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model"}]})

        @app.get("/health")
        async def health() -> Response:
            return Response(status_code=200 if self.healthy else 503)

        @app.get("/metrics")
        async def metrics() -> Response:
            await asyncio.sleep(self.metrics_delay_s)
            if self.metrics_text is None:
                return Response(status_code=404)
            return Response(self.metrics_text, media_type="text/plain; version=0.0.4")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._handle(request, "chat")

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._handle(request, "completions")

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Response:
            """A 3-dimensional embedding per input: (length of the text, index, 1); the call is recorded."""
            body = json.loads(await request.body())
            with self._lock:
                self.calls.append(Call(request.url.path, body, dict(request.headers), time.monotonic()))
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": [float(len(str(text))), float(i), 1.0]}
                    for i, text in enumerate(inputs)]
            return JSONResponse({"object": "list", "data": data, "model": body["model"],
                                 "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})

        @app.post("/v1/rerank")
        async def rerank(request: Request) -> Response:
            """vLLM's re-rank shape; a document's score is the share of the query's words it contains."""
            body = json.loads(await request.body())
            with self._lock:
                self.calls.append(Call(request.url.path, body, dict(request.headers), time.monotonic()))
            words = set(body["query"].lower().split())
            scores = [len(words & set(str(d).lower().split())) / len(words) for d in body["documents"]]
            order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.get("top_n") or len(scores)]
            return JSONResponse({"id": "rerank-scripted", "model": body["model"], "usage": {"total_tokens": 7},
                                 "results": [{"index": i, "relevance_score": scores[i],
                                              "document": {"text": body["documents"][i]}} for i in order]})

        @app.post("/v1/audio/transcriptions")
        async def transcriptions(request: Request) -> Response:
            """Records the form (the file as its size and first bytes); answers "<name> heard <n> bytes"."""
            form = await request.form()
            upload = form["file"]
            audio = await upload.read()  # type: ignore[union-attr]
            fields = {k: v for k, v in form.multi_items() if k != "file"}
            with self._lock:
                self.calls.append(Call(request.url.path, {**fields, "file_bytes": audio, "filename": upload.filename},  # type: ignore[union-attr]
                                       dict(request.headers), time.monotonic()))
            return JSONResponse({"text": f"{self.name} heard {len(audio)} bytes"})

        @app.post("/v1/audio/speech")
        async def speech(request: Request) -> Response:
            """Records the body; answers fake MP3 bytes (an ID3 tag and the input), streamed in two pieces."""
            body = json.loads(await request.body())
            with self._lock:
                self.calls.append(Call(request.url.path, body, dict(request.headers), time.monotonic()))

            async def pieces() -> AsyncIterator[bytes]:
                yield b"ID3"
                yield body["input"].encode()

            return StreamingResponse(pieces(), media_type="audio/mpeg")

        @app.post("/v1/responses")
        async def responses(request: Request) -> Response:
            """A native Responses API (as vLLM serves it): answers "<name> native: <input>"; streams word by word."""
            body = json.loads(await request.body())
            with self._lock:
                self.calls.append(Call(request.url.path, body, dict(request.headers), time.monotonic()))
            text = f"{self.name} native: {body['input'] if isinstance(body['input'], str) else '...'}"
            message = {"type": "message", "id": "msg_up", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": []}]}
            words = len(text.split())
            response = {"id": "resp_up", "object": "response", "created_at": int(time.time()), "status": "completed",
                        "model": body["model"], "output": [message],
                        "usage": {"input_tokens": 3, "output_tokens": words, "total_tokens": 3 + words}}
            if not body.get("stream"):
                return JSONResponse(response)

            def events() -> Iterator[str]:
                started = {"type": "response.created",
                           "response": {**response, "status": "in_progress", "output": [], "usage": None}}
                yield f"event: response.created\ndata: {json.dumps(started)}\n\n"
                for word in text.split(" "):
                    delta = {"type": "response.output_text.delta", "item_id": "msg_up", "output_index": 0,
                             "content_index": 0, "delta": word + " "}
                    yield f"event: response.output_text.delta\ndata: {json.dumps(delta)}\n\n"
                done = {"type": "response.completed", "response": response}
                yield f"event: response.completed\ndata: {json.dumps(done)}\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        @app.post("/v1/messages")
        async def messages(request: Request) -> Response:
            """A native Anthropic Messages API (as vLLM serves it): answers "<name> native: <last user text>"."""
            body = json.loads(await request.body())
            with self._lock:
                self.calls.append(Call(request.url.path, body, dict(request.headers), time.monotonic()))
            last = body["messages"][-1]["content"]
            text = f"{self.name} native: {last if isinstance(last, str) else '...'}"
            usage = {"input_tokens": 7, "output_tokens": len(text.split())}
            message = {"id": "msg_up", "type": "message", "role": "assistant", "model": body["model"],
                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                       "stop_sequence": None, "usage": usage}
            if not body.get("stream"):
                return JSONResponse(message)

            def events() -> Iterator[str]:
                def event(kind: str, **fields: Any) -> str:
                    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n"
                yield event("message_start", message={**message, "content": [], "stop_reason": None,
                                                      "usage": {"input_tokens": 7, "output_tokens": 0}})
                yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
                for word in text.split(" "):
                    yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": word + " "})
                yield event("content_block_stop", index=0)
                yield event("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None}, usage=usage)
                yield event("message_stop")

            return StreamingResponse(events(), media_type="text/event-stream")

        return app

    async def _handle(self, request: Request, endpoint: str) -> Response:
        body = json.loads(await request.body())
        call = Call(request.url.path, body, dict(request.headers), time.monotonic())
        with self._lock:
            self.calls.append(call)
        reply = self.responder(body)
        if reply.hang:
            while not await request.is_disconnected():
                await asyncio.sleep(0.02)
            call.disconnected = time.monotonic()
            return Response(status_code=499)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status >= 400:
            call.finished = time.monotonic()
            return JSONResponse({"error": {"message": reply.error_message, "type": "server_error", "code": None}},
                                status_code=reply.status)
        if body.get("stream") and reply.raw_sse is not None:
            return Response(reply.raw_sse, media_type="text/event-stream")
        if body.get("stream"):
            return StreamingResponse(self._stream(call, endpoint, body, reply), media_type="text/event-stream")
        call.finished = time.monotonic()
        return JSONResponse(self._response(endpoint, body, reply))

    def _usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        prompt = len(json.dumps(body.get("messages", body.get("prompt", ""))).split())
        completion = max(1, len(text.split()))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _response(self, endpoint: str, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        choice: dict[str, Any]
        if endpoint == "chat":  # the fields OpenAI's schema requires, as vLLM sends them
            choice = {"index": 0, "message": {"role": "assistant", "content": reply.text, "refusal": None},
                      "logprobs": None, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": "stop"}
        return {"id": f"up-{uuid.uuid4().hex[:8]}", "object": "chat.completion" if endpoint == "chat" else
                "text_completion", "created": int(time.time()), "model": body.get("model"), "choices": [choice],
                "usage": self._usage(body, reply.text), **reply.extra}

    async def _stream(self, call: Call, endpoint: str, body: dict[str, Any], reply: Reply) -> AsyncIterator[str]:
        chunks = reply.chunks if reply.chunks is not None else [w + " " for w in reply.text.split()]
        cid = f"up-{uuid.uuid4().hex[:8]}"

        continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        sent: list[str] = []

        def event(delta: str | None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
            if delta:
                sent.append(delta)
            if usage is None and continuous:  # vLLM: the cumulative usage so far, on every chunk
                data = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": body.get("model"), "usage": self._usage(body, "".join(sent)),
                        "choices": [{"index": 0, "delta": {} if delta is None else {"content": delta},
                                     "finish_reason": finish}]}
                return f"data: {json.dumps(data)}\n\n"
            if usage is not None:
                choices: list[dict[str, Any]] = []
            elif endpoint == "chat":
                choices = [{"index": 0, "delta": {} if delta is None else {"content": delta}, "finish_reason": finish}]
            else:
                choices = [{"index": 0, "text": delta or "", "finish_reason": finish}]
            data = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": body.get("model"), "choices": choices, **({"usage": usage} if usage else {})}
            return f"data: {json.dumps(data)}\n\n"

        try:
            index = 0
            while True:
                if reply.endless:
                    delta = f"tick{index} "
                elif index < len(chunks):
                    delta = chunks[index]
                else:
                    break
                if reply.die_after_chunks is not None and index >= reply.die_after_chunks:
                    raise ConnectionAbortedError("scripted drop")
                yield event(delta)
                call.chunks_sent += 1
                index += 1
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
            yield event(None, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield event(None, usage=self._usage(body, "".join(chunks)))
            yield "data: [DONE]\n\n"
            call.finished = time.monotonic()
        except (asyncio.CancelledError, GeneratorExit):
            call.disconnected = time.monotonic()
            raise
