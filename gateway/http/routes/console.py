"""The web console at ``/ui``: static pages shipped in the package (``gateway/http/static``), and the JSON they
read under ``/ui/api`` — behind the same API keys as ``/v1`` (the pages themselves hold no data)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from gateway.core.errors import HTTPStatusError
from gateway.engine.budgets import current_period
from gateway.engine.runtime import Gateway
from gateway.engine.usage.report import spend_by_day
from gateway.engine.usage.store import StoreUnavailable, utc_now
from gateway.http.deps import GatewayDep, authenticate

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "static"
REPORTS_DIR = "reports"  # of a router checkpoint: `router eval` / `router front` JSON (and PNG) reports
MASK = "•••"
# Everything the console loads comes from this origin: nothing is fetched from the internet at run time.
SECURITY_HEADERS = {"content-security-policy": "default-src 'self'; img-src 'self' data: blob:; "
                                               "style-src 'self' 'unsafe-inline'; object-src 'none'; "
                                               "frame-ancestors 'none'",
                    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}

pages = APIRouter(include_in_schema=False)
console_api = APIRouter(prefix="/ui/api", dependencies=[Depends(authenticate)], include_in_schema=False)


def console_assets() -> StaticFiles:
    return StaticFiles(directory=CONSOLE_DIR)


@pages.get("/ui")
@pages.get("/ui/")
async def console_page() -> Response:
    return FileResponse(CONSOLE_DIR / "index.html", headers={**SECURITY_HEADERS, "cache-control": "no-cache"})


@console_api.get("/stats")
async def stats(gateway: GatewayDep) -> dict[str, Any]:
    """Every metric as totals since start (the page derives rates from successive polls), plus each key's
    limits."""
    snapshot = gateway.metrics.snapshot()
    # Circuit states as this process's breakers see them (the gauge only has series once a state changed).
    snapshot["circuits"] |= {name: breaker.state for name, breaker in gateway.service.breakers.items()}
    return {"time": time.time(), "uptime_s": round(time.time() - gateway.started_at, 1),
            "draining": gateway.draining, **snapshot,
            "key_limits": {k.name: {"requests_per_minute": k.requests_per_minute,
                                    "tokens_per_minute": k.tokens_per_minute} for k in gateway.config.auth.api_keys}}


@console_api.get("/config")
async def config(gateway: GatewayDep) -> dict[str, Any]:
    """The configuration in effect with secrets masked, and each model's readiness."""
    settings = masked_config(gateway)
    models = await gateway.pool.readiness()
    return {"models": settings["models"], "router": settings["router"], "settings": settings,
            "readiness": {"status": "draining" if gateway.draining else
                          "ready" if all(m["ready"] for m in models.values()) else "not_ready", "models": models}}


def masked_config(gateway: Gateway) -> dict[str, Any]:
    settings = gateway.config.model_dump(mode="json")
    for model in settings["models"]:
        if model.get("api_key"):
            model["api_key"] = MASK
    for key in settings["auth"]["api_keys"]:
        if key.get("key"):
            key["key"] = MASK
        if key.get("key_sha256"):
            key["key_sha256"] = key["key_sha256"][:8] + "…"
    if settings["limits"].get("redis_url"):
        settings["limits"]["redis_url"] = re.sub(r"//([^@/]*)@", f"//{MASK}@", settings["limits"]["redis_url"])
    if isinstance(settings.get("usage_store"), str):
        settings["usage_store"] = re.sub(r"//([^@/]*)@", f"//{MASK}@", settings["usage_store"])
    return settings


USAGE_DAYS = 31  # what the console's spend table shows


@console_api.get("/usage")
async def usage(gateway: GatewayDep) -> dict[str, Any]:
    """Spend from the usage store: by day, key and model over the last month, and each budget's period so far."""
    store = gateway.store
    if store is None:
        return {"store": None, "lines": [], "budgets": {}}

    def read() -> dict[str, Any]:
        since = utc_now() - timedelta(days=USAGE_DAYS)
        lines = [asdict(line) for line in spend_by_day(store, since)]
        budgets = {}
        for key in gateway.config.auth.api_keys:
            if key.budget_usd is not None:
                period = current_period(key.budget_period)
                budgets[key.name] = {"budget_usd": key.budget_usd, "period": key.budget_period,
                                     "spent_usd": round(store.spent(key.name, period.start), 6),
                                     "resets_at": None if period.end is None else f"{period.end:%Y-%m-%dT%H:%M:%SZ}"}
        return {"store": store.engine.dialect.name, "lines": lines, "budgets": budgets}

    try:
        return await asyncio.to_thread(read)
    except (StoreUnavailable, SQLAlchemyError, OSError) as exc:
        raise HTTPStatusError(f"the usage store is unavailable: {str(exc).splitlines()[0][:200]}",
                              status_code=503) from None


@console_api.get("/router")
async def router_reports(gateway: GatewayDep) -> dict[str, Any]:
    """The routed model's checkpoint, its LLM → model map, and the reports kept next to it."""
    routed = gateway.service.routed
    if routed is None:
        return {"configured": False}
    checkpoint = Path(routed.config.checkpoint)
    reports = []
    for path in sorted((checkpoint / REPORTS_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        image = path.with_suffix(".png")
        reports.append({"name": path.stem, "data": data, "image": image.name if image.exists() else None})
    return {"configured": True, "model_name": routed.name, "checkpoint": str(checkpoint),
            "kind": type(routed.router).__name__, "model_map": dict(zip(routed.router.llm_names, routed.models,
                                                                         strict=True)),
            "reports": reports}


@console_api.get("/router/files/{name}")
async def router_report_image(name: str, gateway: GatewayDep) -> Response:
    routed = gateway.service.routed
    path = Path(routed.config.checkpoint) / REPORTS_DIR / name if routed is not None else None
    if path is None or Path(name).name != name or path.suffix != ".png" or not path.is_file():
        raise HTTPStatusError(f"no report image '{name}'", status_code=404)
    return FileResponse(path, media_type="image/png")
