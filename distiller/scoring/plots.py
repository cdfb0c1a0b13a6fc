"""Static pictures (PNG) for people who would rather look than read a table: image grids and curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from distiller.core.files import atomic_path
from distiller.data.prepared import Prepared, to_pixels


def grid_png(images: torch.Tensor, ipc: int, data: Prepared, path: Path | str) -> None:
    """One row per class, its name on the left; small images are upscaled (nearest) to at least 48 px."""
    pixels, classes = to_pixels(images, data), data.classes  # (N, H, W, C)
    n, h, w, c = pixels.shape
    zoom = max(1, -(-48 // max(h, w)))
    cell_h, cell_w, pad = h * zoom, w * zoom, 2
    label_w = 8 + 7 * max(len(name) for name in classes)
    rows = n // ipc
    canvas = Image.new("RGB", (label_w + ipc * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        row, col = divmod(i, ipc)
        arr = pixels[i].numpy()
        tile = Image.fromarray(arr[:, :, 0], "L") if c == 1 else Image.fromarray(arr, "RGB")
        tile = tile.resize((cell_w, cell_h), Image.Resampling.NEAREST).convert("RGB")
        canvas.paste(tile, (label_w + pad + col * (cell_w + pad), pad + row * (cell_h + pad)))
    for row in range(rows):
        draw.text((4, pad + row * (cell_h + pad) + cell_h // 2 - 5), classes[row], fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def curves_png(path: Path | str, x: Sequence[float], panels: Mapping[str, Sequence[float]], title: str) -> None:
    """One panel per named series, stacked, sharing the x axis."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], panels.items(), strict=True):
        ax.plot(x, values, linewidth=1)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def runs_png(
    path: Path | str, runs: Mapping[str, tuple[Sequence[float], Sequence[float]]], ylabel: str, title: str
) -> None:
    """One line per named run (x, y), on one axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, (x, y) in runs.items():
        ax.plot(x, y, linewidth=1, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def budgets_png(path: Path | str, per_budget: dict[str, dict[str, dict]], curves: Sequence[str], title: str) -> None:
    """Test accuracy (mean +- std, %) against images per class, one line per curve."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for curve in curves:
        pts = [(int(b), row[curve]) for b, row in per_budget.items() if curve in row]
        xs = [b for b, _ in pts]
        ax.errorbar(
            xs,
            [100 * r["mean"] for _, r in pts],
            yerr=[100 * r["std"] for _, r in pts],
            marker="o",
            capsize=3,
            linewidth=1,
            label=curve.replace("_", " "),
        )
    ax.set_xscale("log")
    ax.set_xticks([int(b) for b in per_budget], [str(b) for b in per_budget])
    ax.set_xlabel("images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path | str) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
