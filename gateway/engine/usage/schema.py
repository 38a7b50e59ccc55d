"""The store's tables (SQLAlchemy Core). A change here goes with a new Alembic revision in ``migrations/versions``
(``alembic revision`` with ``script_location`` pointing there); the store migrates to the head when it starts."""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

requests = Table(
    "requests", metadata,
    # The row's own id (written at most once, whatever retries): time first, so inserts append to the index.
    Column("id", String(32), primary_key=True),
    Column("request_id", String(128), nullable=False, index=True),  # x-request-id, the client's when it sent one
    Column("created_at", DateTime, nullable=False),  # UTC, when the request was admitted
    Column("key_name", String(200)),  # the API key's configured name; null without keys
    Column("endpoint", String(32), nullable=False),  # chat, completions, responses, messages, embeddings, ...
    Column("model_asked", String(200), nullable=False),
    Column("model", String(200), nullable=False),  # the configured model that answered
    Column("replica", String(200)),  # the endpoint of a model with endpoints:
    Column("status", Integer, nullable=False),  # the HTTP status the client saw (499: it left)
    Column("error_code", String(64)),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer),  # of the prompt tokens, when the upstream reports them
    Column("reasoning_tokens", Integer),  # of the completion tokens, when the upstream reports them
    Column("cost_usd", Float),  # null: the model has no configured price
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),  # streams: time to the first chunk
    Column("stages", JSON(none_as_null=True)),  # {stage: verdict} of the safety stages that ran (None: SQL NULL)
    Column("route", JSON(none_as_null=True)),  # routed requests: the top candidates and their scores
    Column("query", Text),  # routed requests: the text the router read (usage_queries: routed)
    Index("ix_requests_key_name_created_at", "key_name", "created_at"),  # a key's spend in a period
)

feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False, index=True),
    Column("key_name", String(200)),
    Column("score", Float, nullable=False),  # 0 (bad) to 1 (good)
    Column("comment", Text),
    Column("created_at", DateTime, nullable=False),
)
