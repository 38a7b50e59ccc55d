"""Knowledge-graph completion with LLM re-ranking (KICGPT): WordNet names, the graph and its demonstration
pools, the retriever, the link-prediction run."""
