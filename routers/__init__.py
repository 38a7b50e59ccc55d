"""Routers: given a query, the candidate models ranked with their scores (no HTTP in here).

Heavy parts (torch, sentence-transformers) load on first use, so importing the interface stays cheap.
"""

from __future__ import annotations

from typing import Any

from routers.base import Candidate, Router

__all__ = ["ROUTERS", "Candidate", "Router", "RouterDCRouter", "RouterOptions", "build_router", "load_routerdc"]

_LAZY = {"ROUTERS": "routers.registry", "RouterOptions": "routers.registry", "build_router": "routers.registry",
         "RouterDCRouter": "routers.routerdc", "load_routerdc": "routers.routerdc"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'routers' has no attribute {name!r}")
