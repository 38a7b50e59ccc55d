"""Which replica of a model takes a request (``endpoints:`` with ``balance:``): an order over the replicas, best
first; the replica set tries them in that order, past open circuits.

- **round-robin**: a weighted rotation (weight 2 comes up twice per cycle), blind to load.
- **least-loaded**: by estimated load, the larger of two counts: the requests this process has outstanding on the
  replica, and what the replica's vLLM reported at its last ``/metrics`` scrape (``num_requests_running`` +
  ``num_requests_waiting``: every gateway process's traffic, a few seconds old). A replica whose scrape failed is
  *unknown*, not idle: it is estimated as busy as the busiest known replica (or its own count, if higher), and
  goes after a known replica as busy. (A replica too busy to answer its /metrics in time is the usual unknown one:
  measured, estimating it at the median of the known loads sent short requests to a busy vLLM.) Ties go to the
  lower KV-cache use, then round the replicas in turn: with ``serve --workers N`` each worker counts only its
  own requests, and workers that all broke ties by the configured order would all send to the first replica.
- **prefix-affinity**: requests whose conversations share a prefix (the system prompt and first user turn, at
  most ``PREFIX_CHARS`` of them; or a prompt's start) go to the same replica, so vLLM's prefix cache serves the
  later turns. Replicas sit on a consistent-hash ring (``VIRTUAL_NODES`` points per unit of weight, blake2b:
  the same on every worker and gateway replica), so adding a replica moves only the conversations it takes over.
  The first replica clockwise from the prefix's hash whose estimated load is under ``affinity_max_load`` goes
  first (a busy one spills to the next on the ring); when all are that busy, least-loaded order. A request with
  no prefix to share is placed least-loaded.

Pure functions of the loads: the replica set (``backends/replicas.py``) keeps the counts and the scrapes.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VIRTUAL_NODES = 64  # ring points per unit of weight: shares within a few percent of the weights
PREFIX_CHARS = 4096


@dataclass
class EndpointLoad:
    """What the balancer knows about one replica."""

    outstanding: int = 0  # this process's requests on it, not yet finished
    scraped: float | None = None  # its vLLM's running + waiting requests at the last scrape (None: unknown)
    kv_cache: float | None = None  # its vLLM's KV-cache use, 0-1, at the last scrape


def estimated_loads(loads: Sequence[EndpointLoad]) -> list[float]:
    """Each replica's load as least-loaded ranks it (see the module docstring)."""
    known = [max(load.outstanding, load.scraped) for load in loads if load.scraped is not None]
    busiest = max(known) if known else 0.0
    return [float(max(load.outstanding, load.scraped)) if load.scraped is not None
            else max(float(load.outstanding), busiest) for load in loads]


def least_loaded_order(loads: Sequence[EndpointLoad], turn: int = 0) -> list[int]:
    """Replicas by estimated load; equal ones by KV-cache use, then starting at replica ``turn`` (mod count)."""
    estimates = estimated_loads(loads)
    count = len(loads)
    return sorted(range(count), key=lambda i: (estimates[i], loads[i].scraped is None, loads[i].kv_cache or 0.0,
                                               (i - turn) % count))


class RoundRobin:
    def __init__(self, weights: Sequence[int]) -> None:
        self._cycle = itertools.cycle([i for i, weight in enumerate(weights) for _ in range(weight)])
        self._count = len(weights)

    def order(self, key: str | None, loads: Sequence[EndpointLoad]) -> list[int]:
        first = next(self._cycle)
        return [(first + step) % self._count for step in range(self._count)]


class LeastLoaded:
    def __init__(self) -> None:
        self._turns = itertools.count()

    def order(self, key: str | None, loads: Sequence[EndpointLoad]) -> list[int]:
        return least_loaded_order(loads, next(self._turns))


class PrefixAffinity:
    def __init__(self, names: Sequence[str], weights: Sequence[int], max_load: int) -> None:
        points = sorted((_hash(f"{name}#{point}"), index) for index, (name, weight) in enumerate(zip(names, weights,
                                                                                                   strict=True))
                        for point in range(VIRTUAL_NODES * weight))
        self._positions = [position for position, _ in points]
        self._owners = [owner for _, owner in points]
        self._count, self.max_load = len(names), max_load
        self._turns = itertools.count()

    def ring_order(self, key: str) -> list[int]:
        """The replicas clockwise from ``key``'s place on the ring, each once."""
        start = bisect.bisect(self._positions, _hash(key))
        order: list[int] = []
        for step in range(len(self._owners)):
            owner = self._owners[(start + step) % len(self._owners)]
            if owner not in order:
                order.append(owner)
                if len(order) == self._count:
                    break
        return order

    def order(self, key: str | None, loads: Sequence[EndpointLoad]) -> list[int]:
        if key is None:
            return least_loaded_order(loads, next(self._turns))
        ring = self.ring_order(key)
        estimates = estimated_loads(loads)
        for position, index in enumerate(ring):
            if estimates[index] < self.max_load:
                return [index, *ring[:position], *ring[position + 1:]]
        return least_loaded_order(loads, next(self._turns))


Balancer = RoundRobin | LeastLoaded | PrefixAffinity


def build_balancer(balance: str, names: Sequence[str], weights: Sequence[int], max_load: int) -> Balancer:
    if balance == "round-robin":
        return RoundRobin(weights)
    if balance == "least-loaded":
        return LeastLoaded()
    return PrefixAffinity(names, weights, max_load)


def prefix_key(body: Any) -> str | None:
    """What a conversation keeps across its turns: its system messages and first user turn (chat), or the start
    of its prompt (completions), at most ``PREFIX_CHARS``; ``None`` when there is nothing to share."""
    messages = getattr(body, "messages", None)
    if messages:
        leading = []
        for message in messages:
            leading.append(f"{message.role}\x1f{message.text}")
            if message.role == "user":
                break
        return "\x1e".join(leading)[:PREFIX_CHARS] or None
    prompt = getattr(body, "prompt", None)
    if isinstance(prompt, str) and prompt:
        return prompt[:PREFIX_CHARS]
    return None


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
