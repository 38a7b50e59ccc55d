"""Router checkpoints: a directory that loads and routes without any training code.

    router.json          format, router kind (``routerdc`` or ``pareto``), LLM names in order, encoder spec and
                         its probe vectors, head shape, decision settings, best single LLM, training config
                         and validation figures
    router.safetensors   routerdc: the heads (``head<i>.``), the LLM embeddings, the cluster prior;
                         pareto: the LORPMAN head (``pareto.``), the cluster prior, the price per LLM
    encoder/             the fine-tuned encoder (finetune mode only; a sentence-transformers directory)

Format ``routerdc/1`` (one head, no prior, no probe) still loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from routers.clusters import ClusterPrior
from routers.encoders import TextEncoder, build_encoder, probe_mismatch
from routers.pareto import ParetoHead, ParetoRouter
from routers.routerdc import Decision, RouterDCModel, RouterDCRouter

CHECKPOINT_FORMAT = "routerdc/2"
READABLE_FORMATS = ("routerdc/1", CHECKPOINT_FORMAT)
METADATA_FILE = "router.json"
WEIGHTS_FILE = "router.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory cannot be used; the message says why and what to do."""


def save_router(directory: Path | str, router: RouterDCRouter | ParetoRouter, encoder_spec: str | None = None,
                metadata: dict[str, Any] | None = None) -> Path:
    """Write ``router`` (its encoder named ``encoder_spec``, default its own spec) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    document: dict[str, Any] = {**router.metadata, **(metadata or {}), "format": CHECKPOINT_FORMAT,
                                "llm_names": list(router.llm_names), "encoder": encoder_spec or router.encoder.spec,
                                "encoder_probe": np.round(router.encoder.probe(), 6).tolist()}
    prior = router.cluster_prior if isinstance(router, RouterDCRouter) else router.quality
    if prior is not None:
        tensors.update(prior.tensors())
    document["clusters"] = prior.names if prior is not None else None
    if isinstance(router, ParetoRouter):
        tensors.update(_numpy_state("pareto.", router.head))
        tensors["pareto.cost_per_query"] = np.ascontiguousarray(router.cost_per_query, dtype=np.float64)
        document.update(router="pareto", head=router.head.config,
                        default_preference=[float(a) for a in router.default_preference],
                        single_best=None if router.single_best is None else [int(i) for i in router.single_best],
                        min_familiarity=router.min_familiarity)
    else:
        for index, head in enumerate(router.heads):
            tensors.update(_numpy_state(f"head{index}.", head))
        document.update(router="routerdc", head=router.heads[0].shape, heads=len(router.heads),
                        decision=router.decision.to_dict())
    save_numpy(tensors, str(directory / WEIGHTS_FILE))
    (directory / METADATA_FILE).write_text(json.dumps(document, indent=2, ensure_ascii=False))
    return directory


def _numpy_state(prefix: str, module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {f"{prefix}{name}": tensor.detach().contiguous().cpu().numpy()
            for name, tensor in module.state_dict().items()}


def read_metadata(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / METADATA_FILE
    try:
        metadata: dict[str, Any] = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"{directory} is not a router checkpoint: cannot read {METADATA_FILE} "
                              f"({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if metadata.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format {metadata.get('format')!r}; this version reads "
                              f"{', '.join(READABLE_FORMATS)}")
    return metadata


def load_router(directory: Path | str, *, encoder: TextEncoder | None = None, device: str = "cpu",
                cache_dir: Path | None = None) -> RouterDCRouter | ParetoRouter:
    """Load a checkpoint directory. ``encoder`` may be passed to share one already loaded; it must map the
    probe texts where the checkpoint's own encoder did, or the load fails naming both."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    kind = metadata.get("router", "routerdc")
    loader = CHECKPOINT_KINDS.get(kind)
    if loader is None:
        raise CheckpointError(f"{directory}: unknown router kind {kind!r}; this version reads "
                              f"{', '.join(CHECKPOINT_KINDS)}")
    encoder = encoder or build_encoder(metadata["encoder"], base_dir=directory, device=device, cache_dir=cache_dir)
    check_encoder(directory, metadata, encoder)
    return loader(directory, metadata, encoder)


def _load_pareto(directory: Path, metadata: dict[str, Any], encoder: TextEncoder) -> ParetoRouter:
    tensors = load_numpy(str(directory / WEIGHTS_FILE))
    config = metadata["head"]
    head = ParetoHead(int(config["input_dim"]), int(config["num_llms"]), hidden_dim=int(config["hidden_dim"]),
                      rank=int(config["rank"]), scale=float(config["scale"]), objectives=int(config["objectives"]),
                      dropout=float(config["dropout"]))
    head.load_state_dict({key[len("pareto."):]: torch.from_numpy(value) for key, value in tensors.items()
                          if key.startswith("pareto.") and key != "pareto.cost_per_query"})
    prior = ClusterPrior.from_tensors(metadata["clusters"], tensors) if metadata.get("clusters") else None
    return ParetoRouter(encoder, head, metadata["llm_names"], cost_per_query=tensors["pareto.cost_per_query"],
                        quality=prior, default_preference=metadata.get("default_preference", (1.0, 0.0)),
                        single_best=metadata.get("single_best"), min_familiarity=metadata.get("min_familiarity", -1.0),
                        metadata=metadata)


def check_encoder(directory: Path, metadata: dict[str, Any], encoder: TextEncoder) -> None:
    trained_on = metadata["encoder"]
    shape = metadata.get("head") or {"input_dim": metadata.get("input_dim")}  # routerdc/1 kept it at the top
    if encoder.dim != int(shape["input_dim"]):
        raise CheckpointError(f"{directory}: the checkpoint was trained on encoder '{trained_on}' "
                              f"({shape['input_dim']}-d vectors); encoder '{encoder.spec}' gives {encoder.dim}-d "
                              "vectors. Use the encoder it was trained with, or retrain the router on this one.")
    probe = metadata.get("encoder_probe")
    worst = probe_mismatch(encoder, probe) if probe is not None else None
    if worst is not None:
        raise CheckpointError(f"{directory}: the checkpoint was trained on encoder '{trained_on}', but encoder "
                              f"'{encoder.spec}' maps the probe texts elsewhere (cosine {worst:.3f}; it must be "
                              "at least 0.99). Use the encoder it was trained with, or retrain the router on "
                              "this one.")


def _load_routerdc(directory: Path, metadata: dict[str, Any], encoder: TextEncoder) -> RouterDCRouter:
    tensors = load_numpy(str(directory / WEIGHTS_FILE))
    names = metadata["llm_names"]
    if metadata["format"] == "routerdc/1":  # one head, keys without a prefix
        tensors = {f"head0.{key}": value for key, value in tensors.items()}
        metadata = {**metadata, "head": {k: metadata[k] for k in ("input_dim", "hidden_dim", "temperature")}}
    heads = []
    if int(metadata.get("head", {}).get("experts", 1)) > 1 and "head0.cluster_expert" not in tensors:
        raise CheckpointError(f"{directory}: a MoCE checkpoint from before the experts were cluster-conditional (a "
                              "dense mixture); train it again with this version")
    for index in range(int(metadata.get("heads", 1))):
        head = RouterDCModel.from_shape(metadata["head"], len(names))
        prefix = f"head{index}."
        head.load_state_dict({key[len(prefix):]: torch.from_numpy(value) for key, value in tensors.items()
                              if key.startswith(prefix)})
        heads.append(head)
    prior = ClusterPrior.from_tensors(metadata["clusters"], tensors) if metadata.get("clusters") else None
    decision = Decision(**metadata["decision"]) if metadata.get("decision") else Decision()
    return RouterDCRouter(encoder, heads, names, metadata, cluster_prior=prior, decision=decision)


# Router kinds by the ``router`` field of router.json: a new kind adds its loader here (and its branch in
# ``save_router``).
CHECKPOINT_KINDS: dict[str, Callable[[Path, dict[str, Any], TextEncoder], RouterDCRouter | ParetoRouter]] = {
    "routerdc": _load_routerdc,
    "pareto": _load_pareto,
}
