"""What every source loader returns: raw images in [0, 1] with labels and class names."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RawDataset:
    """Images as float32 in [0, 1], shape (N, C, H, W); `test_*` is None for sources without a test split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    classes: tuple[str, ...]
    pixel_scale: str  # how raw values map to [0, 1], e.g. "value / 16"
    license: str


def unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    x = x.unsqueeze(-1) if x.ndim == 3 else x
    return x.permute(0, 3, 1, 2).float().div(255).contiguous()


def reason(e: BaseException, last: bool = False) -> str:
    """The first (or last) non-blank line of an exception's message: torchvision and datasets errors span lines, and
    the CLI prints errors as one line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(e).__name__
