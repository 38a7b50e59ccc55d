"""The log writer: JSON lines written in batches by one thread, what is queued written on stop, a broken
record or a closed stream never stopping it."""

from __future__ import annotations

import io
import json
import logging
import queue
import time

from gateway.core.logs import FLUSH_INTERVAL_S, BatchedLineWriter, JsonFormatter, _RecordQueueHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _writer_and_logger(name: str) -> tuple[BatchedLineWriter, logging.Logger, CountingStream]:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    stream = CountingStream()
    logger = logging.getLogger(name)
    logger.handlers[:] = [_RecordQueueHandler(records)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return BatchedLineWriter(records, JsonFormatter(), stream), logger, stream


def test_records_are_written_as_json_lines_in_one_write_per_batch():
    writer, logger, stream = _writer_and_logger("test.batched")
    writer.start()
    try:
        for i in range(5):
            logger.info("request", extra={"fields": {"status": 200, "n": i}})
        deadline = time.monotonic() + 10 * FLUSH_INTERVAL_S + 2
        while stream.getvalue().count("\n") < 5 and time.monotonic() < deadline:
            time.sleep(FLUSH_INTERVAL_S / 2)
    finally:
        writer.stop()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["n"] for entry in entries] == [0, 1, 2, 3, 4]
    assert {entry["msg"] for entry in entries} == {"request"} and entries[0]["logger"] == "test.batched"
    assert stream.writes < 5  # batched: fewer writes than lines (the five were logged well within one interval)


def test_stop_writes_what_is_queued_and_a_broken_record_does_not_stop_the_rest():
    writer, logger, stream = _writer_and_logger("test.stop")
    logger.info("first")
    logger.info("broken %d", "not a number")  # fails only when formatted, in the writer
    logger.info("last")
    writer.stop()  # never started: stop still writes the queue
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["msg"] for entry in entries] == ["first", "unformattable log record from test.stop", "last"]
    assert entries[1]["level"] == "error"


def test_a_closed_stream_drops_lines_without_stopping_the_writer():
    writer, logger, stream = _writer_and_logger("test.closed")
    stream.close()
    writer.start()
    logger.info("lost")
    time.sleep(3 * FLUSH_INTERVAL_S)
    assert writer._thread.is_alive() and writer.records.empty()  # drained, not piling up
    writer.stop()
