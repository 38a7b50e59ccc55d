"""Structured output for in-process models: ``response_format`` and forced tool calls as grammars.

A request's ``response_format`` (``json_object``, ``json_schema``) or a ``tool_choice`` that forces a call
(``"required"``, or one named function) becomes an llguidance grammar; the local generator's ``GrammarMask``
then makes every sampled token keep the output inside it, so the answer parses and validates every time (as
long as ``max_tokens`` leaves room to finish it). JSON is generated compact (no free whitespace): a small model
left free to indent can wander in whitespace until it runs out of tokens.

Objects are closed to their declared properties (``closed_objects``): JSON Schema lets any other key through
unless ``additionalProperties`` says otherwise, and a small model given that freedom invents keys until
``max_tokens`` runs out. A schema that sets ``additionalProperties`` (or ``unevaluatedProperties``) keeps its own
choice. This is the default of vLLM's grammar backend (xgrammar's strict mode) too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.core.errors import InvalidRequestError

_JSON_OPTIONS = {"whitespace_flexible": False}


@dataclass(frozen=True)
class OutputConstraint:
    """What the generation must produce: JSON text, or one call of a function in ``tools``."""

    kind: Literal["json", "tool_call"]
    grammar: str
    param: str  # the request field it came from, for error messages
    function: str | None = None  # a named tool_choice: the output is this function's arguments


def output_constraint(request_fields: dict[str, Any], model: str) -> OutputConstraint | None:
    """The constraint a chat request asks for (None: free text); a 400 naming the field for what cannot be done."""
    tools = request_fields.get("tools") or []
    tool_choice = request_fields.get("tool_choice")
    functions = _functions(tools) if tools else {}
    if tools and tool_choice in (None, "auto"):
        raise InvalidRequestError(
            f"tool_choice 'auto' is not supported by model '{model}' (a local model whose chat template has no tool "
            "format): send tool_choice 'required', a named function ({\"type\": \"function\", \"function\": "
            "{\"name\": ...}}) or 'none'", param="tool_choice", code="unsupported_parameter")
    if tool_choice not in (None, "none", "auto"):
        if not tools:
            raise InvalidRequestError("tool_choice needs 'tools'", param="tool_choice")
        return _tool_constraint(tool_choice, functions)
    response_format = request_fields.get("response_format")
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or response_format.get("type") not in ("text", "json_object",
                                                                                     "json_schema"):
        raise InvalidRequestError("response_format.type must be 'text', 'json_object' or 'json_schema'",
                                  param="response_format")
    if response_format["type"] == "text":
        return None
    if response_format["type"] == "json_object":
        return OutputConstraint("json", _json_grammar({"type": "object"}, "response_format"), "response_format")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidRequestError("response_format.json_schema needs a 'name' and a 'schema'",
                                  param="response_format.json_schema")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise InvalidRequestError("response_format.json_schema.schema must be a JSON Schema object",
                                  param="response_format.json_schema.schema")
    param = "response_format.json_schema.schema"
    return OutputConstraint("json", _json_grammar(schema, param), param)


def _functions(tools: Any) -> dict[str, dict[str, Any]]:
    """Function name → its parameters' JSON Schema, checked."""
    if not isinstance(tools, list):
        raise InvalidRequestError("tools must be a list of function tools", param="tools")
    functions: dict[str, dict[str, Any]] = {}
    for position, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidRequestError("each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                                      param=f"tools.{position}")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise InvalidRequestError("function parameters must be a JSON Schema object",
                                      param=f"tools.{position}.function.parameters")
        functions[function["name"]] = parameters
    return functions


def _tool_constraint(tool_choice: Any, functions: dict[str, dict[str, Any]]) -> OutputConstraint:
    if tool_choice == "required":
        # One object naming the function and holding its arguments; any of the tools.
        options = [{"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
                    "required": ["name", "arguments"], "additionalProperties": False}
                   for name, parameters in functions.items()]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return OutputConstraint("tool_call", _json_grammar(schema, "tools"), "tools")
    name = ((tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, dict)
            and tool_choice.get("type") == "function" else None)
    if name is None:
        raise InvalidRequestError("tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                                  "\"function\": {\"name\": ...}}", param="tool_choice")
    if name not in functions:
        raise InvalidRequestError(f"tool_choice names '{name}', which is not in tools", param="tool_choice")
    return OutputConstraint("tool_call", _json_grammar(functions[name], "tools"), "tools", function=name)


# Keywords whose value is one subschema, or a list of subschemas, or a map of names to subschemas.
_ONE_SCHEMA = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems", "items")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def closed_objects(schema: Any, in_all_of: bool = False) -> Any:
    """``schema`` with every object that declares ``properties`` (and says nothing of ``additionalProperties``
    or ``unevaluatedProperties``) closed to them: ``additionalProperties: false``. A bare ``{"type": "object"}``
    stays open (it asks for any object), and so do the members of an ``allOf``, where closing each to its own
    properties would reject the properties of the others."""
    if not isinstance(schema, dict):
        return schema
    closed = dict(schema)
    for keyword in _SCHEMA_MAPS:
        if isinstance(closed.get(keyword), dict):
            closed[keyword] = {name: closed_objects(sub) for name, sub in closed[keyword].items()}
    for keyword in _SCHEMA_LISTS:
        if isinstance(closed.get(keyword), list):
            closed[keyword] = [closed_objects(sub) for sub in closed[keyword]]
    for keyword in _ONE_SCHEMA:
        if isinstance(closed.get(keyword), dict):
            closed[keyword] = closed_objects(closed[keyword])
    if isinstance(closed.get("allOf"), list):
        closed["allOf"] = [closed_objects(sub, in_all_of=True) for sub in closed["allOf"]]
    if isinstance(closed.get("additionalProperties"), dict):
        closed["additionalProperties"] = closed_objects(closed["additionalProperties"])
    if ("properties" in closed and not in_all_of and "additionalProperties" not in closed
            and "unevaluatedProperties" not in closed):
        closed["additionalProperties"] = False
    return closed


def _json_grammar(schema: dict[str, Any], param: str) -> str:
    import llguidance

    try:
        return llguidance.LLMatcher.grammar_from_json_schema(closed_objects(schema), defaults=_JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidRequestError(f"the JSON schema cannot be used: {exc}", param=param) from None


def tool_call_of(constraint: OutputConstraint, text: str) -> dict[str, Any] | None:
    """The OpenAI ``tool_calls`` entry a constrained generation produced (None when it did not finish)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if constraint.function is not None:
        name, arguments = constraint.function, value
    elif isinstance(value, dict) and "name" in value:
        name, arguments = value["name"], value.get("arguments", {})
    else:
        return None
    return {"id": f"call_{os.urandom(12).hex()}", "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}


def tools_prompt(request_fields: dict[str, Any], constraint: OutputConstraint | None) -> str | None:
    """A system-prompt note describing the function(s) to call, for chat templates without a tool format."""
    if constraint is None or constraint.kind != "tool_call":
        return None
    described = [tool["function"] for tool in request_fields.get("tools") or []
                 if constraint.function is None or tool["function"]["name"] == constraint.function]
    lines = [f"- {f['name']}: {f.get('description') or ''} parameters: "
             f"{orjson.dumps(f.get('parameters') or {}).decode()}" for f in described]
    answer = ("the arguments of the call as a JSON object" if constraint.function is not None
              else 'a JSON object {"name": <function>, "arguments": {...}}')
    return "Call one of these functions to answer:\n" + "\n".join(lines) + f"\nReply with {answer}."
