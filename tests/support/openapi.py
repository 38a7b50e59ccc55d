"""Validation against OpenAI's published response schemas (``tests/data/openai-openapi``: extracted from the
openai/openai-openapi document, MIT-licensed, with the commit in ``schemas.json``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "openai-openapi" / "schemas.json"


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schemas = json.loads(SCHEMAS.read_text())["schemas"]
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                            "components": {"schemas": schemas}})


def openapi_errors(instance: Any, name: str) -> list[str]:
    """What in ``instance`` breaks the OpenAPI schema ``name`` (empty: it conforms)."""
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in _validator(name).iter_errors(instance)]


def assert_conforms(instance: Any, name: str) -> None:
    errors = openapi_errors(instance, name)
    assert not errors, f"{name}: " + "; ".join(errors[:5])


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON ``data:`` payloads of a server-sent-events body, ``[DONE]`` left out."""
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: ") and line[6:].strip() != "[DONE]":
            events.append(json.loads(line[6:]))
    return events


@functools.cache
def _event_schemas() -> dict[str, str]:
    """Responses stream event type -> the name of its schema (the members of ``ResponseStreamEvent``)."""
    schemas = json.loads(SCHEMAS.read_text())["schemas"]
    named: dict[str, str] = {}
    for member in schemas["ResponseStreamEvent"]["anyOf"]:
        name = member["$ref"].rsplit("/", 1)[-1]
        kind = schemas[name].get("properties", {}).get("type", {})
        for value in kind.get("enum", []) + ([kind["const"]] if "const" in kind else []):
            named[value] = name
    return named


def assert_event_conforms(event: dict[str, Any]) -> None:
    """A Responses stream event against the schema of its own type (clearer failures than the union's)."""
    name = _event_schemas().get(event.get("type"))  # type: ignore[arg-type]
    assert name is not None, f"'{event.get('type')}' is not a Responses stream event type"
    assert_conforms(event, name)
