"""The in-process causal LM (``backend: local``, ``task: generate``) on transformers: the backend, generation off
the event loop, structured output, the embedded SmolLM2 and MoTE experts."""
