"""OpenAI-compatible LLM gateway: HTTP API, config, backends, pipeline wiring, metrics, CLI."""
