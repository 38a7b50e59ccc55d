"""Routers: given a query, the candidate models ranked with their scores (no HTTP in here)."""

from routers.base import Candidate, Router
from routers.registry import ROUTERS, RouterOptions, build_router
from routers.routerdc import RouterDCRouter, load_routerdc

__all__ = ["ROUTERS", "Candidate", "Router", "RouterDCRouter", "RouterOptions", "build_router", "load_routerdc"]
