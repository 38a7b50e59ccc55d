"""Fast router encoders against their reference (the packaged MiniLM run by torch), and checkpoints that refuse
an encoder they were not trained on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from routers.checkpoint import CheckpointError, load_router
from routers.encoders import TextEncoder, build_encoder, default_cache_dir

pytestmark = pytest.mark.slow

# Six questions, each with the one passage that answers it: a good encoder ranks that passage first.
PAIRS = [
    ("How many clips did Natalia sell in April and May altogether?",
     "Natalia sold 48 clips in April and half as many in May, 72 in all."),
    ("Write a Python function that reverses a string.", "def reverse(s):\n    return s[::-1]"),
    ("What is the capital city of France?", "Paris is the capital and largest city of France."),
    ("Which gas do plants absorb during photosynthesis?", "Plants take in carbon dioxide and release oxygen."),
    ("Who wrote the play Romeo and Juliet?", "Romeo and Juliet is a tragedy written by William Shakespeare."),
    ("What causes the seasons on Earth?", "The tilt of Earth's axis makes the seasons as it orbits the Sun."),
]


def _matches(encoder: TextEncoder) -> np.ndarray:
    """For each question, the passage it is most similar to."""
    questions = encoder.encode([q for q, _ in PAIRS])
    passages = encoder.encode([p for _, p in PAIRS])
    return (questions @ passages.T).argmax(axis=1)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def reference() -> TextEncoder:
    return build_encoder("minilm")


def test_onnx_fp32_reproduces_torch(reference):
    onnx = build_encoder("onnx:minilm")
    cosine = (onnx.probe() * reference.probe()).sum(axis=1)
    assert cosine.min() > 0.9999  # the same network: only float rounding differs
    assert np.array_equal(_matches(onnx), _matches(reference))


def test_onnx_int8_and_static_keep_the_reference_ranking(reference):
    expected = _matches(reference)
    assert np.array_equal(expected, np.arange(len(PAIRS)))  # the reference gets every pair right
    int8 = build_encoder("onnx-int8:minilm")
    assert (int8.probe() * reference.probe()).sum(axis=1).min() > 0.9  # measured 0.92-0.98
    assert np.array_equal(_matches(int8), expected)
    static = build_encoder("static:minilm")
    assert static.dim == 256 and not static.batches_help and reference.batches_help
    # A bag of distilled token vectors: at least 5 of the 6 pairs as the reference has them.
    assert (_matches(static) == expected).sum() >= 5


def test_static_distillation_is_cached_and_deterministic():
    first = build_encoder("static:minilm")
    assert (default_cache_dir() / "encoders" / "static-minilm-256" / "config.json").exists()
    again = build_encoder("static:minilm")
    assert np.array_equal(first.probe(), again.probe())
    empty = first.encode(["", "   "])
    assert np.array_equal(empty, np.zeros_like(empty))  # no token, no direction (and no NaN)


@pytest.mark.parametrize("spec", ["minilm", "onnx-int8:minilm"])
def test_tail_encoders_read_the_end_of_a_long_prompt(spec):
    """A few-shot prompt longer than the encoder's 256 tokens: the question comes last."""
    demonstrations = "\n\n".join(f"{q}\nAnswer: {p}" for q, p in PAIRS) * 3
    prompts = [f"{demonstrations}\n\n{question}\nAnswer:" for question in ("What is the capital of France?",
                                                                          "Write a function that sorts a list.")]
    head_encoder, tail_encoder = build_encoder(spec), build_encoder(f"tail:{spec}")
    head, tail = head_encoder.encode(prompts), tail_encoder.encode(prompts)
    assert np.allclose(head[0], head[1], atol=1e-5)  # both cut before their question
    assert float(tail[0] @ tail[1]) < 0.99
    short = [q for q, _ in PAIRS]  # short texts: nothing cut, the same vectors
    assert np.allclose(tail_encoder.encode(short), head_encoder.encode(short), atol=1e-5)
    assert tail_encoder.spec == f"tail:{spec}"


def test_unknown_encoder_specs_are_clear(tmp_path):
    with pytest.raises(ValueError, match="tail: needs a tokenised encoder"):
        build_encoder("tail:static:minilm")
    with pytest.raises(ValueError, match="unknown encoder 'magic'.*static:minilm"):
        build_encoder("magic")
    with pytest.raises(ValueError, match="not a local transformers"):
        build_encoder(f"static:{tmp_path}")


class _Rotated(TextEncoder):
    """Claims to be the checkpoint's encoder, with its width, but maps texts elsewhere."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner, self.spec, self.dim = inner, inner.spec, inner.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.roll(self.inner.encode(texts), 7, axis=1)


def test_a_checkpoint_refuses_another_encoder(router_checkpoint):
    with pytest.raises(CheckpointError, match=r"trained on encoder 'static:minilm' \(256-d.*'minilm' gives 384-d"):
        load_router(router_checkpoint, encoder=build_encoder("minilm"))
    with pytest.raises(CheckpointError, match="maps the probe texts elsewhere"):
        load_router(router_checkpoint, encoder=_Rotated(build_encoder("static:minilm")))
    assert load_router(router_checkpoint, encoder=build_encoder("static:minilm")).llm_names


def test_a_checkpoint_loads_and_routes_without_the_trainers(router_checkpoint):
    """routers must not need training/: a gateway image could ship without it."""
    script = f"""
import sys
class NoTrainers:
    def find_spec(self, name, path=None, target=None):
        if name == "training" or name.startswith("training."):
            raise ImportError("training/ is absent")
sys.meta_path.insert(0, NoTrainers())
from routers import load_router
router = load_router({str(router_checkpoint)!r})
print(router.score(["What is 2 + 3?"]).argmax())
assert not any(m == "training" or m.startswith("training.") for m in sys.modules)
"""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().isdigit()
