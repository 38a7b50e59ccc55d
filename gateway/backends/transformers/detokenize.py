"""Token ids to streamed text: incremental detokenization, cut at the first stop sequence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers.decoders import DecodeStream


class IncrementalText:
    """Turns token ids into text deltas (incrementally, through ``tokenizers``' ``DecodeStream``: decoding
    the whole sequence again for every token is quadratic), cutting at the first stop sequence.

    Text that could be the start of a stop sequence is held back until it is decided.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], skip_special_tokens: bool = True) -> None:
        self._tokenizer, self._stop = tokenizer, [s for s in stop if s]
        self._skip_special = skip_special_tokens
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens) if backend is not None else None
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def _extend(self, ids: list[int]) -> str:
        if self._stream is None:  # a slow tokenizer: decode everything again
            self._ids.extend(ids)
            self._text = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip_special)
            return self._text
        assert self._backend is not None  # the stream is made only with a backend tokenizer
        for token in ids:
            piece = self._stream.step(self._backend, token)
            if piece:
                self._text += piece
        return self._text

    def add(self, ids: list[int]) -> str:
        text = self._extend(ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return ""
        if not self._stop:
            return self._take(text, len(text))
        longest = max(len(s) for s in self._stop)
        start = max(0, self._emitted - longest + 1)
        hits = [pos for pos in (text.find(s, start) for s in self._stop) if pos >= 0]
        if hits:
            self.stopped = True
            return self._take(text, min(hits))
        return self._take(text, len(text) - self._undecided_suffix(text))

    def flush(self) -> str:
        if self.stopped:
            return ""
        return self._take(self._text, None)

    def _undecided_suffix(self, text: str) -> int:
        for size in range(min(len(text), max(len(s) for s in self._stop) - 1), 0, -1):
            if any(s.startswith(text[-size:]) for s in self._stop):
                return size
        return 0

    def _take(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        if end <= self._emitted:
            return ""
        delta, self._emitted = text[self._emitted:end], end
        return delta
