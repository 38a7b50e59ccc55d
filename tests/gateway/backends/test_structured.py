"""Grammars for in-process structured output (``gateway/backends/transformers/structured.py``): objects are
closed to their declared properties unless the schema says otherwise, checked with llguidance's own matcher."""

from __future__ import annotations

import llguidance
import pytest

from gateway.backends.transformers.structured import _json_grammar, closed_objects

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}


def _accepts(schema: dict, text: str) -> bool:
    """Whether the grammar built for ``schema`` accepts ``text`` whole (llguidance's byte-level matcher)."""
    tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))
    matcher = llguidance.LLMatcher(tokenizer, _json_grammar(schema, "test"))
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


class _ByteTokenizer:
    """One token per byte, 256 of them, plus an end-of-sequence token."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"</s>"]

    def __call__(self, text: str) -> list[int]:
        return list(text.encode())


def test_an_object_with_properties_is_closed_to_them() -> None:
    assert closed_objects(CITY) == {**CITY, "additionalProperties": False}
    assert _accepts(CITY, '{"city":"Paris"}')
    assert not _accepts(CITY, '{"city":"Paris","properties":{"temperature":1}}')


def test_nested_objects_are_closed_too_and_the_input_is_left_alone() -> None:
    schema = {"type": "object", "properties": {"where": CITY, "stops": {"type": "array", "items": CITY}},
              "$defs": {"place": CITY}, "anyOf": [{"properties": {"a": {}}}]}
    closed = closed_objects(schema)
    assert closed["properties"]["where"]["additionalProperties"] is False
    assert closed["properties"]["stops"]["items"]["additionalProperties"] is False
    assert closed["$defs"]["place"]["additionalProperties"] is False
    assert closed["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in schema and "additionalProperties" not in CITY  # no mutation


@pytest.mark.parametrize("open_schema", [{**CITY, "additionalProperties": True},
                                         {**CITY, "additionalProperties": {"type": "number"}}])
def test_a_schema_that_says_what_other_keys_may_do_keeps_its_choice(open_schema: dict) -> None:
    assert closed_objects(open_schema) == open_schema
    assert _accepts(open_schema, '{"city":"Paris","extra":1}')
    # unevaluatedProperties is the schema's own say too (llguidance then decides what it allows)
    assert closed_objects({**CITY, "unevaluatedProperties": True}) == {**CITY, "unevaluatedProperties": True}


def test_a_bare_object_and_the_members_of_all_of_stay_open() -> None:
    assert closed_objects({"type": "object"}) == {"type": "object"}
    assert _accepts({"type": "object"}, '{"anything":1}')
    merged = {"allOf": [CITY, {"type": "object", "properties": {"country": {"type": "string"}}}]}
    assert all("additionalProperties" not in member for member in closed_objects(merged)["allOf"])
