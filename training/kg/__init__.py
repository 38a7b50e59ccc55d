"""Knowledge-graph completion with LLM re-ranking (KICGPT): WordNet names, the graph and its demonstration
pools, the retriever, the link-prediction run."""

from pathlib import Path

PROMPTS_FILE = Path(__file__).parent / "prompts" / "wn18rr.yaml"  # the default --prompts of kg link-predict
