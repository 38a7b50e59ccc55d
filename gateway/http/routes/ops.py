"""Operations: ``/health`` (liveness), ``/ready`` (readiness, 503 while loading or draining), ``/metrics``
(Prometheus, loopback only unless allowed)."""

from __future__ import annotations

import ipaddress
import time

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from gateway.core.errors import HTTPStatusError
from gateway.http.deps import (
    GatewayDep,
)

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "Not ready yet"}})
async def ready(gateway: GatewayDep) -> JSONResponse:
    """Readiness: every local model loaded and every upstream reachable; not ready while draining (SIGTERM
    received), so load balancers stop sending new requests before the process goes."""
    models = await gateway.pool.readiness()
    is_ready = all(entry["ready"] for entry in models.values()) and not gateway.draining
    status = "draining" if gateway.draining else "ready" if is_ready else "not_ready"
    return JSONResponse({"status": status, "models": models, "uptime_s": round(time.time() - gateway.started_at, 1)},
                        status_code=200 if is_ready else 503)


@router.get("/metrics", responses={403: {"description": "Not from loopback"}})
async def metrics(request: Request, gateway: GatewayDep) -> Response:
    """Prometheus text format; only to loopback clients unless ``server.metrics_allow_remote``."""
    client = request.client.host if request.client else ""
    if not gateway.config.server.metrics_allow_remote and not _is_loopback(client):
        raise HTTPStatusError("/metrics is served to loopback clients only (server.metrics_allow_remote)",
                              status_code=403)
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
