from __future__ import annotations

from pathlib import Path

import pytest

HH_RLHF_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "hh_rlhf_sample.jsonl.gz"


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A 2-layer, randomly initialised Llama over the embedded SmolLM2 tokenizer: fast trainer tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gateway.backends.transformers.embedded import embedded_model_dir
    from gateway.core.config import Settings

    directory = tmp_path_factory.mktemp("tiny-lm")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(Settings().cache_dir))
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
