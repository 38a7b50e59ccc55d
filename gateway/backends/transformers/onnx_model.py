"""Local models as ONNX Runtime graphs that decode from quantized weights (the ``onnx`` engine's model files).

ONNX Runtime GenAI's model builder writes the graph from a transformers directory: the embedding, fused QKV,
GroupQueryAttention with its rotary embedding and a KV cache the caller owns, SkipSimplifiedLayerNormalization and
``MatMulNBits`` weight-only quantized linear layers, whose CPU kernels read 4 or 8 bits a weight. transformers reads
every fp32 weight through ~300 Python-dispatched operators a token.

**The embedded model keeps its own quantization.** The builder's 4-bit weights would be a second quantization of
the GGUF's already quantized values: for SmolLM2-135M that costs 21% perplexity on held-out text (15.13 -> 18.31).
So the GGUF's own blocks replace them (:func:`use_gguf_weights`), value for value:

- **Q4_1** (the linear layers): a block of 32 weights is ``d * q + m`` with ``q`` in 0..15. ``MatMulNBits``' symmetric
  4-bit format is ``d * (q - 8)``, so each block also has a constant ``c = m + 8 d``, and
  ``W x = Σ_blocks d Σ (q - 8) x  +  Σ_blocks c · (Σ_block x)``: the second term is a small dense ``MatMul`` of the
  input's block sums (18 or 48 of them) by ``c``, added to the 4-bit product.
- **Q8_0** (the tied embedding and LM head: ``d * q``, ``q`` an int8): ``GatherBlockQuantized`` reads it as
  8-bit blocks (stored as ``q + 128``, its default zero point) for the embedding. ``MatMulNBits`` has no
  fp32-activation fast path for 8 bits (400 µs where 4 bits take 26), so the LM head splits each byte
  ``q + 128 = 16 h + l`` into two 4-bit products: ``d q = 16 d (h - 8) + d (l - 8) + 8 d``, with the same offset.

**Activations stay fp32** (``accuracy_level`` 1), so the graph computes what the transformers model computes, up
to float rounding: on held-out HH-RLHF text the perplexity is 15.132 for both, and 20 of 20 greedy 64-token answers
are token-identical. Level 4 (int8 activations, as llama.cpp computes Q4_1 weights against Q8_1 activations) is
~1.5x faster at 8 streams, but gives 15.25 and 8 of 20, and answers "What is the capital of France?" with
"L'Étoile, la Marsebeau, ..." instead of "The capital of France is Paris." (llama.cpp itself answers "L'Étoile,
la Cité, ..."). A prompt's logits are bit-identical whether it goes through in one piece or in chunks; a decoding
row's differ by float rounding (~5e-5) between a pass of one row (a matrix-vector kernel) and of several (the
kernels dequantize blocks for a matrix product), so a greedy answer can change with the traffic beside it only where
two tokens tie to that precision, as on vLLM.

A model given by ``path`` has no GGUF to take blocks from: it is built with the builder's 8-bit weights
(``MatMulNBits`` 8-bit, ``accuracy_level`` 4), which cost SmolLM2-135M 0.2% perplexity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Bumped when the files written here change, so a cache from an older release is rebuilt instead of misread.
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
BLOCK = 32  # weights per quantization block: GGUF's Q4_1 and Q8_0, and MatMulNBits' block_size here
ACCURACY_LEVEL = 1  # MatMulNBits computes with fp32 activations (see the module docstring)


@dataclass(frozen=True)
class OnnxModelSpec:
    """What the decoder needs to know of a built graph (from the transformers config it was built from)."""

    directory: Path
    layers: int
    kv_heads: int
    head_size: int
    vocab_size: int
    context_length: int

    @property
    def path(self) -> Path:
        return self.directory / MODEL_FILE

    @classmethod
    def read(cls, directory: Path) -> OnnxModelSpec:
        config = json.loads((directory / "config.json").read_text())
        text = config.get("text_config", config)
        heads = text["num_attention_heads"]
        return cls(directory, layers=text["num_hidden_layers"], kv_heads=text.get("num_key_value_heads", heads),
                   head_size=text.get("head_dim") or text["hidden_size"] // heads, vocab_size=text["vocab_size"],
                   context_length=text.get("max_position_embeddings", 2048))


def onnx_model_dir(hf_dir: Path, cache_dir: Path, gguf: Path | None = None) -> Path:
    """An ONNX model of the transformers directory ``hf_dir``, built once into ``cache_dir``: with the blocks of the
    GGUF file ``gguf`` (the file ``hf_dir`` was converted from), else with 8-bit weights. A built model is found by
    the names alone: the GGUF file is read only to build it."""
    key = hashlib.sha256(f"{FORMAT_VERSION}:{hf_dir.resolve()}:{gguf.name if gguf else ''}".encode()).hexdigest()
    target = cache_dir / "onnx" / f"{hf_dir.name}-{'gguf' if gguf else 'int8'}-{key[:16]}"
    if (target / MODEL_FILE).exists():
        return target
    if gguf is not None and not gguf.exists():
        raise FileNotFoundError(f"building the ONNX model of {hf_dir} needs the GGUF file {gguf}")
    staging = target.parent / f".{target.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("building the ONNX model of %s once into %s (~15 s)", hf_dir, target)
    build_with_builder(hf_dir, staging, precision="int4" if gguf else "int8", scratch=cache_dir / "onnx" / ".hf")
    if gguf is not None:
        use_gguf_weights(staging, gguf)
    for name in ("config.json", "generation_config.json"):
        if (hf_dir / name).exists():
            shutil.copy(hf_dir / name, staging / name)
    try:  # rename: concurrent first builds never see a half-written model
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_with_builder(hf_dir: Path, out: Path, precision: str, scratch: Path) -> None:
    """Run ONNX Runtime GenAI's model builder (in a child process: it loads the fp32 model with transformers, whose
    memory should not stay with the gateway)."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(scratch)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not (out / MODEL_FILE).exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"ONNX Runtime GenAI's model builder failed on {hf_dir} (exit {done.returncode}):\n{tail}")


# ---- the GGUF's own blocks ------------------------------------------------------------------------------------------

_LAYER_WEIGHTS = {"o_proj": ("attn_output",), "gate_proj": ("ffn_gate",), "up_proj": ("ffn_up",),
                  "down_proj": ("ffn_down",), "qkv_proj": ("attn_q", "attn_k", "attn_v")}


def use_gguf_weights(model_dir: Path, gguf_path: Path) -> None:
    """Replace the builder's re-quantized weights in ``model_dir`` by the GGUF file's own Q4_1 and Q8_0 blocks
    (see the module docstring), and set every product to fp32 activations."""
    import numpy as np
    import onnx
    from gguf import GGUFReader
    from onnx import helper, numpy_helper

    reader = GGUFReader(str(gguf_path))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    heads = int(_field(reader, "llama.attention.head_count"))
    kv_heads = int(_field(reader, "llama.attention.head_count_kv"))
    model = onnx.load(str(model_dir / MODEL_FILE))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}

    def constant(name: str, array: Any) -> str:
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        if name in initializers:
            initializers[name].CopyFrom(tensor)
        else:
            graph.initializer.append(tensor)
            initializers[name] = graph.initializer[-1]
        return name

    block_sums: dict[str, str] = {}
    nodes: list[Any] = []

    def block_sum(x: str, k: int) -> str:
        """The input's sums over each block of 32 features: x @ S with S [K, K/32] of ones."""
        if x not in block_sums:
            ones = np.kron(np.eye(k // BLOCK, dtype=np.float32), np.ones((BLOCK, 1), dtype=np.float32))
            block_sums[x] = f"{x}/block_sums"
            nodes.append(helper.make_node("MatMul", [x, constant(f"block_ones.{k}", ones)], [block_sums[x]],
                                          name=f"{x}/block_sums"))
        return block_sums[x]

    def with_offset(product: str, x: str, offsets: Any, out: str, name: str) -> None:
        """out = product + block_sums(x) @ offsets.T (offsets: [N, K/32], each block's constant)."""
        k = offsets.shape[1] * BLOCK
        nodes.append(helper.make_node("MatMul", [block_sum(x, k), constant(f"{name}.offsets", offsets.T)],
                                      [f"{out}/offset"], name=f"{name}/offset"))
        nodes.append(helper.make_node("Add", [product, f"{out}/offset"], [out], name=f"{name}/add_offset"))

    found = {"layers": 0, "lm_head": False, "embedding": False}
    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.name.startswith("/model/layers."):
            layer, projection = _layer_projection(node.name)
            parts = [_q4_1(tensors[f"blk.{layer}.{w}.weight"], heads if w == "attn_q" else
                           kv_heads if w == "attn_k" else None) for w in _LAYER_WEIGHTS[projection]]
            q, d, m = (np.concatenate([part[i] for part in parts]) for i in range(3))
            constant(node.input[1], _pack4(q))
            constant(node.input[2], d.reshape(-1))
            _set_attribute(node, "accuracy_level", ACCURACY_LEVEL)
            out = node.output[0]
            node.output[0] = f"{out}/q4"
            nodes.append(node)
            with_offset(f"{out}/q4", node.input[0], m + 8 * d, out, node.name)
            found["layers"] += 1
        elif node.op_type == "MatMulNBits" and node.name == "/lm_head/MatMul_Q4":
            q8, d8 = _q8_0(tensors["token_embd.weight"])
            unsigned = (q8.astype(np.int16) + 128).astype(np.uint8)
            x, out = node.input[0], node.output[0]
            for part, values, scale in (("high", unsigned >> 4, 16 * d8), ("low", unsigned & 0xF, d8)):
                nodes.append(helper.make_node(
                    "MatMulNBits", [x, constant(f"lm_head.{part}.q4", _pack4(values)),
                                    constant(f"lm_head.{part}.scales", scale.reshape(-1))],
                    [f"{out}/{part}"], name=f"/lm_head/{part}", domain="com.microsoft", K=q8.shape[1] * BLOCK,
                    N=q8.shape[0], bits=4, block_size=BLOCK, accuracy_level=ACCURACY_LEVEL))
            nodes.append(helper.make_node("Add", [f"{out}/high", f"{out}/low"], [f"{out}/q4"], name="/lm_head/add"))
            with_offset(f"{out}/q4", x, 8 * d8, out, "/lm_head")
            found["lm_head"] = True
        elif node.op_type == "GatherBlockQuantized":
            q8, d8 = _q8_0(tensors["token_embd.weight"])
            node.input[0] = constant("embedding.q8", (q8.astype(np.int16) + 128).astype(np.uint8).reshape(len(q8), -1))
            node.input[2] = constant("embedding.scales", d8)
            _set_attribute(node, "bits", 8)
            nodes.append(node)
            found["embedding"] = True
        else:
            nodes.append(node)
    layers = int(_field(reader, "llama.block_count"))
    if not (found["layers"] == 5 * layers and found["lm_head"] and found["embedding"]):
        raise RuntimeError(f"the model builder's graph is not the one expected (found {found}); pin "
                           "onnxruntime-genai to the release this was written for")
    # The builder fed the embedding from the LM head's 4-bit weight through a Reshape, now unused.
    used = {name for node in nodes for name in node.input}
    nodes = [n for n in nodes if n.op_type != "Reshape" or any(o in used for o in n.output)]
    used = {name for node in nodes for name in node.input}
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    (model_dir / f"{MODEL_FILE}.data").unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(model, str(model_dir / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{MODEL_FILE}.data")


def _field(reader: Any, key: str) -> Any:
    field = reader.fields[key]
    return field.parts[field.data[0]][0]


def _layer_projection(node_name: str) -> tuple[int, str]:
    """(layer, projection) of a builder node name such as ``/model/layers.3/attn/qkv_proj/MatMul_Q4``."""
    parts = node_name.split("/")
    return int(parts[2].split(".")[1]), parts[4]


def _q4_1(tensor: Any, heads: int | None) -> tuple[Any, Any, Any]:
    """(q [N, K/32, 32], d [N, K/32], m [N, K/32]) of a Q4_1 tensor, rows in transformers' order: llama.cpp's
    converter interleaves the rotary halves of each head of q and k (``heads``), undone here."""
    import numpy as np

    if tensor.tensor_type.name != "Q4_1":
        raise RuntimeError(f"{tensor.name} is {tensor.tensor_type.name}, not Q4_1")
    blocks = np.asarray(tensor.data).reshape(tensor.data.shape[0], -1, 20)  # fp16 d, fp16 m, 16 bytes of nibbles
    d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    nibbles = blocks[:, :, 4:]
    q = np.concatenate([nibbles & 0xF, nibbles >> 4], axis=2)  # low nibbles are weights 0-15, high ones 16-31
    if heads:
        q, d, m = (_unpermute_rows(a, heads) for a in (q, d, m))
    return q, d, m


def _q8_0(tensor: Any) -> tuple[Any, Any]:
    """(q [N, K/32, 32] int8, d [N, K/32]) of a Q8_0 tensor."""
    import numpy as np

    if tensor.tensor_type.name != "Q8_0":
        raise RuntimeError(f"{tensor.name} is {tensor.tensor_type.name}, not Q8_0")
    blocks = np.asarray(tensor.data).reshape(tensor.data.shape[0], -1, 34)  # fp16 d, 32 int8
    d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    return blocks[:, :, 2:].copy().view(np.int8), d


def _unpermute_rows(rows: Any, heads: int) -> Any:
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(shape)


def _pack4(q: Any) -> Any:
    """MatMulNBits' 4-bit layout: two consecutive weights a byte, the first in the low nibble."""
    import numpy as np

    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _set_attribute(node: Any, name: str, value: int) -> None:
    for attribute in node.attribute:
        if attribute.name == name:
            attribute.i = value
            return
    raise RuntimeError(f"{node.name} has no attribute {name}")
