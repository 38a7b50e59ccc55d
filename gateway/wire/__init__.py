"""What the APIs say on the wire: request models (validated) and response/chunk builders of the OpenAI API
(chat, completions, embeddings), the Responses API, re-ranking and audio; and the pipeline-stage interface, the
one seam through which ``safety`` plugs into the server."""
