"""The FastAPI app factory: wires the routes (``http/routes/``, one module per endpoint family), middleware, error
handlers and the gateway's life cycle."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.config import GatewayConfig, Settings
from gateway.core.errors import GatewayError, HTTPStatusError, InternalError, InvalidRequestError, error_response
from gateway.engine.runtime import Gateway
from gateway.http.deps import BODY_SCHEMAS, PostEndpoint
from gateway.http.middleware import REQUEST_ID_HEADER, BodySizeLimitMiddleware, RequestContextMiddleware
from gateway.http.routes import audio, feedback, ops, rerank
from gateway.http.routes.anthropic import ANTHROPIC_ENDPOINTS
from gateway.http.routes.console import console_api, console_assets, pages
from gateway.http.routes.openai import OPENAI_ENDPOINTS
from gateway.http.routes.openai import v1 as openai_v1
from gateway.wire.audio import MAX_AUDIO_BYTES

logger = logging.getLogger(__name__)


MAX_AUDIO_UPLOAD_BYTES = MAX_AUDIO_BYTES + 1024 * 1024  # a 25 MB file plus its multipart framing
# The POST endpoints that are plain ASGI apps (the hot path, see ``GatewayApp``), each with its OpenAPI operation.
POST_ENDPOINTS: dict[str, PostEndpoint] = {**OPENAI_ENDPOINTS, **ANTHROPIC_ENDPOINTS}


def create_app(config: GatewayConfig | None = None, *, cache_dir: Path | None = None) -> FastAPI:
    config = config or GatewayConfig()
    gateway = Gateway(config, cache_dir or Settings().cache_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        # What start-up built lives as long as the process: out of the collector's way, a full collection on
        # the hot path no longer walks it (measured: streaming relay 44k -> 59k chunks/s on one core).
        gc.freeze()
        try:
            yield
        finally:
            await gateway.aclose()

    # FastAPI's native OpenTelemetry looks up the global providers on every request (measured: ~4% of a
    # proxied request's CPU); the gateway's own metrics are Prometheus.
    app = GatewayApp(title="llm-gateway", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="OpenAI-compatible gateway with learned routing and safety stages")
    app.state.gateway = gateway
    app.router.routes.extend(Route(path, endpoint, methods=["POST"]) for path, endpoint in POST_ENDPOINTS.items())
    for routes in (audio.v1, rerank.v1, feedback.v1, openai_v1, rerank.router, ops.router):
        app.include_router(routes)
    app.include_router(pages)
    app.include_router(console_api)
    app.mount("/ui/assets", console_assets(), name="console-assets")
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.limits.max_body_bytes,
                       upload_max_bytes=max(config.limits.max_body_bytes, MAX_AUDIO_UPLOAD_BYTES))
    app.add_middleware(RequestContextMiddleware)
    _install_error_handlers(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            for path, endpoint in POST_ENDPOINTS.items():
                document.setdefault("paths", {})[path] = {"post": endpoint.openapi_operation()}
            document.setdefault("components", {}).setdefault("schemas", {}).update(BODY_SCHEMAS)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the OpenAI shape; unexpected ones are logged and never show a stack trace."""

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")) or None
        return error_response(InvalidRequestError(f"invalid value for '{param}': {first.get('msg')}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = HTTPStatusError(str(exc.detail), status_code=exc.status_code)
        return error_response(error, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request.scope, exc)

    del on_gateway_error, on_validation_error, on_http_error, on_unexpected



def _internal_error(scope: Scope, exc: Exception) -> JSONResponse:
    """An unexpected failure: logged with its request id, answered as a 500 without a stack trace (sent from
    outside the request-id middleware, so the id header is set here)."""
    request_id = scope.get("state", {}).get("request_id")
    logger.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id}})
    return error_response(InternalError(f"the gateway hit an internal error; the request id is in the "
                                        f"{REQUEST_ID_HEADER} header"),
                          headers={REQUEST_ID_HEADER: request_id} if request_id else None)


class GatewayApp(FastAPI):
    """FastAPI, with a short way to the OpenAI POST endpoints (the hot path): the gateway's own middleware, then
    the endpoint, without the framework's error and exception middleware, exit stacks and route matching
    (12.5% of a proxied request's py-spy samples, plus their send wrappers). Every other request takes FastAPI's
    whole stack."""

    def build_middleware_stack(self) -> ASGIApp:
        handlers: dict[str, ASGIApp] = {}
        for path, endpoint in POST_ENDPOINTS.items():
            handler: ASGIApp = endpoint
            for cls, args, kwargs in reversed(self.user_middleware):
                handler = cls(handler, *args, **kwargs)
            handlers[path] = handler
        return _OpenAIFastPath(super().build_middleware_stack(), handlers)


class _OpenAIFastPath:
    def __init__(self, stack: ASGIApp, handlers: dict[str, ASGIApp]) -> None:
        self.stack, self.handlers = stack, handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.stack(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await handler(scope, receive, tracking_send)
        except Exception as exc:  # what FastAPI's error middleware would do: a 500 if nothing was sent yet
            if started:
                raise
            await _internal_error(scope, exc)(scope, receive, send)
