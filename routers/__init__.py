"""Routers: given a query, the candidate models ranked with their scores (no HTTP, no training code in here).

Heavy parts (torch, sentence-transformers) load on first use, so importing the interface stays cheap.
Routers built from training data by name (knn, routerdc, ...) are in ``training.router_registry``.
"""

from __future__ import annotations

from typing import Any

from routers.base import Candidate, Router

__all__ = ["Candidate", "Router", "RouterDCRouter", "load_router"]

_LAZY = {"RouterDCRouter": "routers.routerdc", "load_router": "routers.checkpoint"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'routers' has no attribute {name!r}")
