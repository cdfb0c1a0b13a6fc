"""scikit-learn's embedded 8x8 digits: 1797 images, values 0..16, no test split of its own (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

from distiller.core.params import DataParams
from distiller.data.sources.raw import RawDataset


def load(p: DataParams, root: Path) -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return RawDataset(
        train_images=images,
        train_labels=labels,
        test_images=None,
        test_labels=None,
        classes=tuple(str(c) for c in bunch.target_names),
        pixel_scale="value / 16",
        license="cc-by-4.0",
    )
