"""Extract the response schemas the conformance tests validate against from OpenAI's OpenAPI document.

    git clone https://github.com/openai/openai-openapi
    python tests/data/openai-openapi/extract.py openai-openapi/openapi.json COMMIT \\
        > tests/data/openai-openapi/schemas.json

Keeps the named root schemas and every schema they reference (transitively), without descriptions, examples
and vendor keys (``x-...``), so the file is small enough to keep in the repository. The document is MIT-licensed
(``LICENSE`` beside this file, from the same commit).
"""

from __future__ import annotations

import json
import sys
from typing import Any

ROOTS = ["CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
         "CreateEmbeddingResponse", "Response", "ResponseStreamEvent", "ErrorResponse", "ListModelsResponse",
         "Model"]
DROPPED = {"description", "example", "examples", "title", "deprecated"}
NAMED = {"properties", "patternProperties", "$defs", "definitions"}


def _strip(value: Any) -> Any:
    """A schema without its annotations, in plain JSON Schema: the document is OpenAPI 3.1 but still writes
    OpenAPI 3.0's ``nullable: true`` in places (112 of them), which JSON Schema ignores; those become
    ``anyOf: [<schema>, {"type": "null"}]``. The names in ``properties`` are data, kept whatever they are."""
    if isinstance(value, dict):
        schema = {key: ({name: _strip(sub) for name, sub in item.items()} if key in NAMED else _strip(item))
                  for key, item in value.items() if key not in DROPPED and not key.startswith("x-")
                  and key != "nullable"}
        return {"anyOf": [schema, {"type": "null"}]} if value.get("nullable") is True else schema
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"].rsplit("/", 1)[-1]} if isinstance(value.get("$ref"), str) else set()
        return found.union(*(_refs(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_refs(item) for item in value))
    return set()


def main() -> None:
    document = json.load(open(sys.argv[1]))
    schemas = document["components"]["schemas"]
    kept: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept[name] = _strip(schemas[name])
        todo.extend(_refs(kept[name]) - kept.keys())
    json.dump({"source": f"openai/openai-openapi {sys.argv[2]} openapi.json (info.version "
                         f"{document['info']['version']})", "schemas": dict(sorted(kept.items()))},
              sys.stdout, indent=None, separators=(",", ":"), sort_keys=False)


if __name__ == "__main__":
    main()
