"""The upstream SSE reader against the WHATWG rules, however the bytes are split."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backends.sse_reader import ServerSentEvent, iter_sse_batches


def _events(*chunks: bytes) -> list[ServerSentEvent]:
    async def source():
        for chunk in chunks:
            yield chunk

    async def collect() -> list[ServerSentEvent]:
        return [event async for events in iter_sse_batches(source()) for event in events]

    return asyncio.run(collect())


STREAM = (b"\xef\xbb\xbf: comment\n\ndata:{\"a\": 1}\n\ndata:  two spaces\r\n\r\nevent: error\rdata: x\rdata: y\r\r"
          b"id: 7\nretry: 10\ndata\n\ndata: unterminated")
EXPECTED = [ServerSentEvent('{"a": 1}'), ServerSentEvent(" two spaces"), ServerSentEvent("x\ny", "error"),
            ServerSentEvent("")]


def test_the_rules_of_the_standard():
    # BOM dropped, comments skipped, one space removed after the colon (not two), CRLF and CR line ends,
    # multi-line data joined with \n, `event` typed, a bare `data` field is an empty line of data, and the
    # last event without a blank line after it is discarded.
    assert _events(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_any_split_of_the_bytes_gives_the_same_events(size):
    assert _events(*[STREAM[i:i + size] for i in range(0, len(STREAM), size)]) == EXPECTED


def test_utf8_split_inside_a_character():
    data = "data: héllo wörld\n\n".encode()
    assert _events(*[data[i:i + 1] for i in range(len(data))]) == [ServerSentEvent("héllo wörld")]


def test_batches_are_the_events_each_read_completed():
    async def source():
        for chunk in (b"data: 1\n\ndata: 2\n\nda", b"ta: 3\n", b": ping\n\n", b"\ndata: 4\n\ndata: 5\r", b"\n\r\n"):
            yield chunk

    async def collect() -> list[list[str]]:
        return [[event.data for event in events] async for events in iter_sse_batches(source())]

    # the read that completes no event yields nothing; a CR at the end of a read waits for its LF
    assert asyncio.run(collect()) == [["1", "2"], ["3"], ["4"], ["5"]]
