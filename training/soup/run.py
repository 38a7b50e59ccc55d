"""``llm-gateway train soup``: members, MEHL-Soup, the baselines, the report, the merged model."""

from __future__ import annotations

import json
import logging
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.models import resolve_model_path
from training.preference_data import load_preference_pairs, split_pairs
from training.soup.mehl import BatchRecord, SoupSettings, steps_per_batch, train_soup, uses_bf16, with_base
from training.soup.members import Delta, Member, MemberStore, find_member, lora_delta
from training.soup.objective import Example, attach_reference, evaluate, loss, tokenize_pairs

logger = logging.getLogger(__name__)

PEFT_METHODS = ("ties", "dare_linear", "svd")
NEW_LORA_RANK = 16


@dataclass
class SoupRun:
    base: str
    members: list[Path]
    data: Path
    out: Path
    settings: SoupSettings = field(default_factory=SoupSettings)
    max_examples: int = 120  # the split the coefficients are fitted on ("validation" in the paper)
    test_examples: int = 80  # held out from everything
    max_length: int = 256
    baselines: tuple[str, ...] = ("greedy", "peft")  # and "new-lora", asked for: it trains a LoRA
    progress: bool = True


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_soup(run: SoupRun) -> dict[str, Any]:
    """Fit the soup, judge it beside the baselines, write ``run.out``; the model runs under the settings'
    precision throughout (every entry of the report judged alike), the saved model is fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bf16(run.settings.precision)):
        return _run(run)


def _run(run: SoupRun) -> dict[str, Any]:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    members = [find_member(path) for path in run.members]
    if len(members) < 2:
        raise ValueError("a soup needs at least two --members")
    if len({m.name for m in members}) != len(members):
        members = [Member(f"{i}-{m.name}", m.path, m.kind) for i, m in enumerate(members)]
    model_path = resolve_model_path(run.base)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval().requires_grad_(False)  # only the coefficients learn
    base = dict(model.named_parameters())

    pairs, report = load_preference_pairs(run.data)
    rest, test_pairs = split_pairs(pairs, min(run.test_examples, len(pairs) // 3), run.settings.seed)
    fit = tokenize_pairs(rest[: run.max_examples], tokenizer, run.max_length)
    test = tokenize_pairs(test_pairs, tokenizer, run.max_length)
    if not fit or not test:
        raise ValueError(f"{run.data}: no pair fits --max-length {run.max_length} ({report})")
    settings = run.settings
    if settings.objective == "dpo":
        attach_reference(model, base, fit + test)

    def judged(weights: dict[str, torch.Tensor], on_test: bool = True) -> dict[str, float]:
        result = {f"fit_{k}": v for k, v in evaluate(model, weights, fit, settings.objective, settings.beta).items()}
        if on_test:
            result |= {f"test_{k}": v for k, v in evaluate(model, weights, test, settings.objective,
                                                          settings.beta).items()}
        return result

    store = MemberStore(members, {name: p.detach() for name, p in base.items()})
    timings: dict[str, float] = {}
    results: dict[str, Any] = {"base": judged(base)}
    tick = time.monotonic()
    results["members"] = {}
    for index, member in enumerate(members):  # one at a time
        results["members"][member.name] = judged(with_base(base, store.load(index)))
    timings["members_eval"] = round(time.monotonic() - tick, 1)
    rss = {"after_member_evals": _peak_rss_mb()}

    tick = time.monotonic()
    loads_before, store.peak_alive = store.loads, 0
    total = steps_per_batch(len(fit), settings) * -(-len(members) // settings.model_batch)
    with tqdm(total=total, desc="soup", disable=not run.progress) as bar:
        soup, records = train_soup(model, base, store, fit, settings, bar.update)
    timings["soup_train"] = round(time.monotonic() - tick, 1)
    rss["after_soup"] = _peak_rss_mb()
    results["soup"] = judged(with_base(base, soup))
    soup_loads, soup_peak = store.loads - loads_before, store.peak_alive

    tick = time.monotonic()
    results["uniform"] = judged(with_base(base, _uniform(store)))
    timings["uniform"] = round(time.monotonic() - tick, 1)
    ranked = sorted(results["members"], key=lambda n: results["members"][n]["fit_nll"])
    results["best_single"] = {"name": ranked[0], **results["members"][ranked[0]]}
    if "greedy" in run.baselines:
        tick = time.monotonic()
        results["greedy"] = _greedy(store, ranked, judged, base)
        timings["greedy"] = round(time.monotonic() - tick, 1)
    if "peft" in run.baselines:
        tick = time.monotonic()
        results.update(_peft_merges(model_path, members, base, judged))
        timings["peft_merges"] = round(time.monotonic() - tick, 1)
    if "new-lora" in run.baselines:
        tick = time.monotonic()
        delta, trainable = _new_lora(model, base, fit, settings)
        results["new_lora"] = judged(with_base(base, delta)) | {"rank": NEW_LORA_RANK,
                                                                "trainable_parameters": trainable}
        timings["new_lora"] = round(time.monotonic() - tick, 1)
    rss["end"] = _peak_rss_mb()

    run.out.mkdir(parents=True, exist_ok=True)
    _save_merged(model, tokenizer, base, soup, run.out / "model")
    with (run.out / "metrics.jsonl").open("w") as handle:
        for number, record in enumerate(records):
            for step, value in enumerate(record.losses):
                handle.write(json.dumps({"model_batch": number, "step": step, "loss": value}) + "\n")
    summary = {
        **results,
        "settings": asdict(settings) | {"max_examples": run.max_examples, "test_examples": run.test_examples,
                                        "max_length": run.max_length},
        "data": {"fit_examples": len(fit), "test_examples": len(test), "conversion": str(report)},
        "member_count": len(members), "member_kinds": sorted({m.kind for m in members}),
        "member_loads_during_soup": soup_loads, "peak_members_held": soup_peak,
        "peak_rss_mb": rss, "seconds": timings | {"total": round(time.monotonic() - started, 1)},
        "coefficients": [asdict(record) for record in records],
    }
    (run.out / "report.json").write_text(json.dumps(summary, indent=1))
    _plot(records, results, run.out / "soup.png")
    return summary


def _uniform(store: MemberStore) -> Delta:
    total: Delta = {}
    for index in range(len(store.members)):
        for name, tensor in store.load(index).items():
            total[name] = total[name] + tensor if name in total else tensor.clone()
    return {name: tensor / len(store.members) for name, tensor in total.items()}


def _greedy(store: MemberStore, ranked: list[str], judged: Any, base: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Greedy soup (Wortsman et al.): members best first, each kept only if the average improves validation."""
    names = [m.name for m in store.members]
    total = dict(store.load(names.index(ranked[0])))
    kept = [ranked[0]]
    best = judged(with_base(base, total), on_test=False)["fit_nll"]
    for name in ranked[1:]:
        delta = store.load(names.index(name))
        trial = {n: (total.get(n, torch.zeros_like(t)) + t) for n, t in delta.items()}
        trial |= {n: t for n, t in total.items() if n not in delta}
        score = judged(with_base(base, {n: t / (len(kept) + 1) for n, t in trial.items()}), on_test=False)["fit_nll"]
        if score < best:
            total, best = trial, score
            kept.append(name)
    return {"members": kept, **judged(with_base(base, {n: t / len(kept) for n, t in total.items()}))}


def _peft_merges(model_path: Path, members: list[Member], base: dict[str, torch.Tensor], judged: Any
                 ) -> dict[str, Any]:
    """PEFT's ``add_weighted_adapter`` over every member (LoRA members only)."""
    if any(m.kind != "lora" for m in members):
        return {f"peft_{method}": {"skipped": "members are not all LoRA adapters"} for method in PEFT_METHODS}
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    carrier = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(carrier, str(members[0].path), adapter_name="m0")
    for index, member in enumerate(members[1:], start=1):
        peft_model.load_adapter(str(member.path), adapter_name=f"m{index}")
    adapters = [f"m{i}" for i in range(len(members))]
    options = {"ties": {"weights": [1.0] * len(members), "density": 0.5},
               "dare_linear": {"weights": [1 / len(members)] * len(members), "density": 0.5},
               "svd": {"weights": [1 / len(members)] * len(members)}}
    results = {}
    for method in PEFT_METHODS:
        try:
            peft_model.add_weighted_adapter(adapters, adapter_name=method, combination_type=method, **options[method])
            with tempfile.TemporaryDirectory() as saved:
                peft_model.save_pretrained(saved, selected_adapters=[method])
                results[f"peft_{method}"] = judged(with_base(base, lora_delta(Path(saved) / method, base)))
        except (ValueError, RuntimeError) as exc:  # e.g. a method that needs equal ranks
            results[f"peft_{method}"] = {"skipped": str(exc)[:300]}
    return results


def _new_lora(model: torch.nn.Module, base: dict[str, torch.Tensor], fit: list[Example], settings: SoupSettings,
              rank: int = NEW_LORA_RANK, learning_rate: float = 5e-4) -> tuple[Delta, int]:
    """One new LoRA trained on the same fitting split with the same objective and epochs, at the members' learning
    rate; returned as its dense delta, to be judged as the members are. Trained in fp32 whatever the soup's
    precision: its first updates are far below bf16's resolution of the layer outputs they add to, and vanish
    there (measured: under bf16 autocast the new LoRA judged exactly as the base)."""
    import copy

    from peft import LoraConfig, get_peft_model

    from training.soup.objective import batches

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=learning_rate)
    peft_model.train()
    with torch.autocast("cpu", enabled=False):
        for epoch in range(settings.epochs):
            for batch in batches(fit, settings.batch_size, shuffle_seed=settings.seed * 1000 + epoch):
                value = loss(peft_model, {}, batch, settings.objective, settings.beta)
                optimiser.zero_grad()
                value.backward()
                optimiser.step()
    merged = dict(peft_model.merge_and_unload().named_parameters())
    with torch.no_grad():
        delta = {name: merged[name].detach() - tensor for name, tensor in base.items()
                 if not torch.equal(merged[name], tensor)}
    return delta, sum(p.numel() for p in trainable)


@torch.no_grad()
def _save_merged(model: torch.nn.Module, tokenizer: Any, base: dict[str, torch.Tensor], soup: Delta,
                 out: Path) -> None:
    """The base with the soup applied: a model directory the local backend and vLLM load."""
    for name, delta in soup.items():
        base[name].add_(delta)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name, delta in soup.items():  # the in-memory base stays the base
        base[name].sub_(delta)


def _plot(records: list[BatchRecord], results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    rows = [(f"b{i}: {member}", row) for i, r in enumerate(records) for member, row in zip(r.members, r.coefficients,
                                                                                             strict=True)]
    width = max(len(row) for _, row in rows)
    grid = np.full((len(rows), width), np.nan)
    for i, (_, row) in enumerate(rows):
        grid[i, : len(row)] = row
    limit = np.nanmax(np.abs(grid)) or 1.0
    image = left.imshow(grid, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest")
    left.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
    left.set_xlabel(f"block ({width} per model batch)")
    left.set_title("coefficients X (member × block; 0 = the centre)")
    fig.colorbar(image, ax=left)
    losses = [value for r in records for value in r.losses]
    right.plot(losses, label="fitting loss per step", color="tab:blue")
    for name, colour in (("soup", "tab:green"), ("uniform", "tab:orange"), ("best_single", "tab:red")):
        right.axhline(results[name]["fit_nll"], color=colour, linestyle="--", label=f"{name} fit NLL")
    right.set_xlabel("step (model batches one after another)")
    right.set_title("objective on the fitting split")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
