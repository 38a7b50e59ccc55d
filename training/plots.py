"""Training curves as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(history: Sequence[dict[str, Any]], keys: Sequence[str], path: Path, title: str,
                step_key: str = "step") -> Path:
    """One panel per key present in ``history`` (a list of logged dicts), against ``step_key``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in row for row in history)]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(4.5 * max(1, len(present)), 3.4), squeeze=False)
    for ax, key in zip(axes[0], present, strict=False):
        points = [(row[step_key], row[key]) for row in history if key in row and step_key in row]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 60 else None)
        ax.set_title(key)
        ax.set_xlabel(step_key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
