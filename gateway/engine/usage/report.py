"""Spend read back from the store: by day, key and model, in US dollars to the cent (``llm-gateway usage``, /ui)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from gateway.engine.usage.schema import requests
from gateway.engine.usage.store import UsageStore


@dataclass(frozen=True)
class SpendLine:
    day: str  # YYYY-MM-DD (UTC)
    key: str  # the API key's name, "-" for requests without one
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def spend_by_day(store: UsageStore, since: datetime | None = None) -> list[SpendLine]:
    """One line per (UTC day, key name, answering model), oldest day first."""
    day = func.date(requests.c.created_at)
    query = (select(day.label("day"), requests.c.key_name, requests.c.model, func.count().label("n"),
                    func.sum(requests.c.prompt_tokens), func.sum(requests.c.completion_tokens),
                    func.coalesce(func.sum(requests.c.cost_usd), 0.0))
             .group_by(day, requests.c.key_name, requests.c.model)
             .order_by(day, requests.c.key_name, requests.c.model))
    if since is not None:
        query = query.where(requests.c.created_at >= since)
    store.ensure_schema()
    with store.engine.connect() as connection:
        return [SpendLine(str(d), k or "-", m, int(n), int(p or 0), int(c or 0), float(usd))
                for d, k, m, n, p, c, usd in connection.execute(query)]


def cents(usd: float) -> str:
    """US dollars to the cent: ``10.40``."""
    return f"{usd:.2f}"


def format_spend(lines: list[SpendLine]) -> str:
    """The spend table (one line per day, key and model), each key's total, and the grand total."""
    header = ("day", "key", "model", "requests", "prompt_tokens", "completion_tokens", "usd")
    rows = [(line.day, line.key, line.model, str(line.requests), str(line.prompt_tokens),
             str(line.completion_tokens), cents(line.cost_usd)) for line in lines]
    by_key: dict[str, list[SpendLine]] = {}
    for line in lines:
        by_key.setdefault(line.key, []).append(line)
    totals = [("total", key, "*", str(sum(x.requests for x in group)), str(sum(x.prompt_tokens for x in group)),
               str(sum(x.completion_tokens for x in group)), cents(sum(x.cost_usd for x in group)))
              for key, group in sorted(by_key.items())]
    totals.append(("total", "*", "*", str(sum(x.requests for x in lines)), str(sum(x.prompt_tokens for x in lines)),
                   str(sum(x.completion_tokens for x in lines)), cents(sum(x.cost_usd for x in lines))))
    table = [header, *rows, *totals]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = {3, 4, 5, 6}
    return "\n".join("  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                               for i, cell in enumerate(row)).rstrip() for row in table)
