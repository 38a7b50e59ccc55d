"""The usage store: rows are queued by the request path and written by one thread in batches.

The request path only appends a dict to a queue (``record``). A writer thread takes up to ``batch_rows`` at a time
and inserts them in one transaction, each row under its own id with "on conflict do nothing", so a batch retried
after an ambiguous failure is written once. While the database is down or slow the rows wait in the queue (the
writer retries with a growing pause, counted in ``gateway_usage_store_errors_total``); past ``max_buffered`` rows
new ones are dropped and counted (``gateway_usage_rows_dropped_total``): a store outage never fails a request.

Reads (spend of a key, a request's row, reports) are plain blocking calls: the engine runs them in a thread.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from gateway.core.metrics import GatewayMetrics
from gateway.engine.usage.schema import feedback, requests

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


_COLUMNS = [column.name for column in requests.columns]
_JSON_COLUMNS = frozenset({"stages", "route"})


def _postgres_json(value: Any) -> Any:
    from psycopg.types.json import Json

    return Json(value)


class StoreUnavailable(Exception):
    """The usage store could not be read or written."""


def store_url(url: str | None, cache_dir: Path) -> str:
    """The SQLAlchemy URL for a configured ``usage_store`` (``None``: a SQLite file in the cache dir)."""
    if url is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{cache_dir / 'usage.sqlite3'}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]  # psycopg 3, not SQLAlchemy's default psycopg2
    return url


def create_store_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL: readers do not block the writer (and several workers can share the file).
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                         connect_args={"connect_timeout": 5})


def migrate(engine: Engine) -> None:
    """Bring the schema to Alembic's head (a no-op when it is there)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # replicas starting together migrate one at a time
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7301977)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class EmptyStore(StoreUnavailable):
    """The store has no schema yet: no gateway has written to it."""


def check_revision(engine: Engine) -> None:
    """The store is at this code's schema (Alembic's head), without changing it."""
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        raise EmptyStore("the usage store has no schema yet (no gateway has written to it)")
    if current != head:
        raise StoreUnavailable(f"the usage store's schema is at revision {current}, this version reads {head}: "
                               "start this version's gateway on it once (it migrates), or use the matching CLI")


class UsageStore:
    """One row per request, written in batches by a thread; reads for spend, reports and feedback."""

    def __init__(self, url: str, metrics: GatewayMetrics | None = None, *, batch_rows: int = 256,
                 flush_interval_s: float = 0.2, max_buffered: int = 20_000, read_only: bool = False) -> None:
        self.url, self.read_only = url, read_only
        self.engine = create_store_engine(url)
        self._metrics = metrics
        self.batch_rows, self.flush_interval_s, self.max_buffered = batch_rows, flush_interval_s, max_buffered
        self._queue: deque[dict[str, Any]] = deque()
        # Rows ever queued and dropped (the event loop counts) and written (the writer): flush waits on them.
        self._queued = self._dropped = self._done = 0
        self._progress = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopping = False
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._statements: dict[int, str] = {}  # multi-row INSERT by row count

    @property
    def backlog(self) -> int:
        """Rows queued and not yet written."""
        return len(self._queue)

    def start(self) -> UsageStore:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_forever, name="usage-store", daemon=True)
            self._thread.start()
        return self

    def record(self, row: dict[str, Any]) -> None:
        """Queue one request's row (never blocks, never raises). Called from the event loop only: the counters it
        bumps have this one writer (the writer thread bumps ``_done``), so no lock is taken on the request path."""
        self._queued += 1
        if len(self._queue) >= self.max_buffered:
            self._dropped += 1
            if self._metrics is not None:
                self._metrics.usage_rows_dropped.inc()
            return
        self._queue.append(row)
        if len(self._queue) == self.batch_rows:  # once per batch (a growing backlog must not spin the writer)
            self._wake.set()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row queued so far is written (or dropped); False when ``timeout_s`` passed first."""
        target = self._queued
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        with self._progress:
            while self._done + self._dropped < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, 0.1))
                self._wake.set()
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout_s``), then stop the writer."""
        if self._thread is not None:
            if not self.flush(timeout_s) and self._queue:
                logger.warning("usage store: rows not written at shutdown", extra={"fields": {
                    "rows": len(self._queue)}})
            self._stopping = True
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=2)
            self._thread = None
        self.engine.dispose()

    # ---- the writer thread ----------------------------------------------------------------------------

    def _write_forever(self) -> None:
        pause = self.flush_interval_s
        failing = False
        while not self._stopping:
            if failing:  # back off whatever wakes it (flush, a full batch): only close cuts the pause short
                self._stop.wait(pause)
            else:
                self._wake.wait(pause)
            self._wake.clear()
            while self._queue and not self._stopping:
                try:
                    self._write_batch()
                except Exception as exc:  # the writer never dies: the store down, slow, or refusing
                    if self._metrics is not None:
                        self._metrics.usage_store_errors.inc()
                        self._metrics.usage_backlog.set(len(self._queue))
                    if not failing:  # one line per outage, not one per retry
                        logger.warning("usage store unavailable; rows wait in memory", extra={"fields": {
                            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                            "backlog": len(self._queue)}})
                    failing = True
                    pause = min(max(pause * 2, 0.5), 5.0)
                    break
                if failing:
                    logger.info("usage store available again", extra={"fields": {"backlog": len(self._queue)}})
                failing, pause = False, self.flush_interval_s

    def _write_batch(self) -> None:
        self.ensure_schema()
        batch = [self._queue[i] for i in range(min(len(self._queue), self.batch_rows))]
        written = len(batch)
        try:
            with self.engine.begin() as connection:
                connection.exec_driver_sql(self._insert_statement(len(batch)), tuple(self._parameters(batch)))
        except (DataError, IntegrityError) as exc:
            # A row the database refuses for its data would block every row behind it: write them one by one
            # and drop (and count) the ones refused.
            written = self._write_one_by_one(batch, exc)
        for _ in batch:
            self._queue.popleft()
        with self._progress:
            self._done += len(batch)
            self._progress.notify_all()
        if self._metrics is not None:
            self._metrics.usage_rows_written.inc(written)
            self._metrics.usage_rows_dropped.inc(len(batch) - written)
            self._metrics.usage_backlog.set(len(self._queue))

    def _write_one_by_one(self, batch: list[dict[str, Any]], first_error: Exception) -> int:
        """Rows written; the ones refused for their own data are dropped."""
        written = 0
        for row in batch:
            try:
                with self.engine.begin() as connection:
                    connection.exec_driver_sql(self._insert_statement(1), tuple(self._parameters([row])))
                written += 1
            except (DataError, IntegrityError) as exc:  # this row's own data; anything else is an outage
                logger.error("usage store refused a row; dropped", extra={"fields": {
                    "request_id": row.get("request_id"), "error": str(exc).splitlines()[0][:200]}})
        logger.warning("usage store: a batch was refused; its rows were written one by one", extra={"fields": {
            "rows": len(batch), "written": written, "error": str(first_error).splitlines()[0][:200]}})
        return written

    # The batch goes as ONE multi-row INSERT, not executemany: the driver releases the GIL around each statement
    # it runs, and on a busy core every release hands the GIL between this thread and the event loop (a context
    # switch each). Row by row that cost the proxy a third of its throughput (benchmarks/hot_path.py
    # --usage-row); one statement per batch hands it over once. The SQL is the table's plain columns, so
    # SQLAlchemy's per-row bind processing is done here: times as SQLAlchemy's SQLite DATETIME stores them,
    # JSON as JSON text (psycopg's Json on PostgreSQL).

    def _insert_statement(self, rows: int) -> str:
        statement = self._statements.get(rows)
        if statement is None:
            mark = "?" if self._sqlite else "%s"
            row = "(" + ", ".join([mark] * len(_COLUMNS)) + ")"
            statement = (f"INSERT INTO requests ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in _COLUMNS)}) VALUES "
                         + ", ".join([row] * rows) + ' ON CONFLICT ("id") DO NOTHING')
            self._statements[rows] = statement
        return statement

    def _parameters(self, batch: list[dict[str, Any]]) -> list[Any]:
        values: list[Any] = []
        sqlite = self._sqlite
        for row in batch:
            for name in _COLUMNS:
                value = row.get(name)
                if value is not None:
                    if name == "created_at" and sqlite:
                        value = value.strftime("%Y-%m-%d %H:%M:%S.%f")
                    elif name in _JSON_COLUMNS:
                        value = json.dumps(value) if sqlite else _postgres_json(value)
                values.append(value)
        return values

    # ---- reads (blocking: run them in a thread) --------------------------------------------------------

    def ensure_schema(self) -> None:
        """Migrate the schema to the head once per process (the writer does it before its first batch); a store
        opened ``read_only`` (reports) is checked instead: ``EmptyStore`` when it has no schema yet,
        ``StoreUnavailable`` when it is at another revision than this code's."""
        with self._migrate_lock:
            if self._migrated:
                return
            if self.read_only:
                check_revision(self.engine)
            else:
                migrate(self.engine)
            self._migrated = True

    def spent(self, key_name: str, since: datetime | None) -> float:
        """US dollars recorded for ``key_name`` since ``since`` (UTC; None: ever)."""
        try:
            self.ensure_schema()
            query = select(func.coalesce(func.sum(requests.c.cost_usd), 0.0)).where(requests.c.key_name == key_name)
            if since is not None:
                query = query.where(requests.c.created_at >= since)
            with self.engine.connect() as connection:
                return float(connection.execute(query).scalar_one())
        except (SQLAlchemyError, OSError, CommandError) as exc:
            raise StoreUnavailable(str(exc).splitlines()[0][:200]) from exc

    def request(self, request_id: str) -> dict[str, Any] | None:
        """The most recent row recorded under ``request_id``."""
        try:
            self.ensure_schema()
            query = select(requests).where(requests.c.request_id == request_id) \
                .order_by(requests.c.created_at.desc()).limit(1)
            with self.engine.connect() as connection:
                row = connection.execute(query).mappings().first()
            return dict(row) if row is not None else None
        except (SQLAlchemyError, OSError, CommandError) as exc:
            raise StoreUnavailable(str(exc).splitlines()[0][:200]) from exc

    def add_feedback(self, request_id: str, key_name: str | None, score: float, comment: str | None) -> int:
        """Store one piece of feedback; its id."""
        try:
            self.ensure_schema()
            with self.engine.begin() as connection:
                result = connection.execute(feedback.insert().values(
                    request_id=request_id, key_name=key_name, score=score, comment=comment,
                    created_at=utc_now()))
            return int(result.inserted_primary_key[0])  # type: ignore[index]
        except (SQLAlchemyError, OSError, CommandError) as exc:
            raise StoreUnavailable(str(exc).splitlines()[0][:200]) from exc

    def rows(self, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every request row (tests and small exports; reports aggregate in the database instead)."""
        self.ensure_schema()
        table_columns = [requests.c[name] for name in columns] if columns else [requests]
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(select(*table_columns)).mappings()]


def row_id() -> str:
    """A row's id: nanoseconds since the epoch, then 64 random bits (unique across replicas, and in time order, so
    the primary key's index grows at its end)."""
    return f"{time.time_ns():016x}{random.getrandbits(64):016x}"


def utc_now() -> datetime:
    """Naive UTC, as the store keeps times (SQLite has no time zones)."""
    return datetime.now(UTC).replace(tzinfo=None)
