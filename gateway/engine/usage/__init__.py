"""The usage store: one row per request (who, which model, tokens, cost, timing, verdicts) and the feedback on it,
in SQLite or PostgreSQL, written off the request path (``store.py``), with its schema migrated by Alembic
(``schema.py``, ``migrations/``), priced from the configured prices (``costs.py``) and read back as spend reports
(``report.py``)."""

from gateway.engine.usage.costs import UsageCounts, request_cost
from gateway.engine.usage.store import UsageStore, store_url

__all__ = ["UsageCounts", "UsageStore", "request_cost", "store_url"]
