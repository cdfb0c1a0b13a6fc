"""Static pictures of results (PNG), for people who would rather look than read a CSV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distiller._runtime import atomic_path


def curves_png(path: Path | str, x: Sequence[float], panels: dict[str, Sequence[float]], title: str) -> None:
    """One panel per named series, stacked, sharing the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], panels.items(), strict=True):
        ax.plot(x, values, linewidth=1)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
