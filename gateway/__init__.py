"""OpenAI-compatible LLM gateway. Rooms, lowest first: ``core`` (config, errors, metrics, logs), ``wire`` (API wire
types, the stage interface), ``backends`` (how a model answers), ``engine`` (what happens to a request), ``http``
(routes: parse, call the engine, render); ``cli`` is the ``llm-gateway`` command."""
