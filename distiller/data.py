"""Source datasets and the prepared tensor file every later stage reads.

A *source* (registered by name) yields raw images in [0, 1] with labels and class names. `prepare` splits it when it
has no test split, normalises per channel with training-set statistics, and returns a `Prepared` whose content hash
travels into every downstream artifact. The file format is safetensors (no pickle) with JSON metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from distiller._runtime import DistillerError, generator, load_safetensors, save_safetensors, sha256_tensors
from distiller.params import DataParams

FORMAT = "distiller.prepared"
FORMAT_VERSION = "1"


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


@dataclass(frozen=True)
class Prepared:
    """Normalised train/test tensors plus what is needed to redo the normalisation elsewhere."""

    source: str
    classes: tuple[str, ...]
    train_images: torch.Tensor  # (N, C, H, W) float32, normalised
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor  # (C,) applied to pixels in [0, 1]
    std: torch.Tensor  # (C,)
    test_indices: torch.Tensor  # (n_test,) into the source's own order; empty when the source has a test split
    pixel_scale: str
    license: str
    content_hash: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device) -> Prepared:
        moved = {k: getattr(self, k).to(device) for k in ("train_images", "train_labels", "test_images", "test_labels")}
        return Prepared(**{**self.__dict__, **moved})


# ---------------------------------------------------------------------------------------------------------------------
# registry

SourceLoader = Callable[[DataParams], RawDataset]
SOURCES: dict[str, SourceLoader] = {}


def register(name: str) -> Callable[[SourceLoader], SourceLoader]:
    def deco(fn: SourceLoader) -> SourceLoader:
        SOURCES[name] = fn
        return fn

    return deco


@register("digits")
def _digits(p: DataParams) -> RawDataset:
    """scikit-learn's embedded 8x8 digits: 1797 images, values 0..16, no test split of its own."""
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


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) indices holding out round(test_fraction * n_c) images of every class c."""
    g = generator(seed, "split")
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(test_fraction * len(idx))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def prepare(p: DataParams) -> Prepared:
    if p.source not in SOURCES:
        raise DistillerError(f"data.source: unknown source '{p.source}'; known: {', '.join(sorted(SOURCES))}")
    raw = SOURCES[p.source](p)
    if raw.test_images is None:
        train_idx, test_idx = stratified_split(raw.train_labels, p.test_fraction, p.split_seed)
        train_x, train_y = raw.train_images[train_idx], raw.train_labels[train_idx]
        test_x, test_y = raw.train_images[test_idx], raw.train_labels[test_idx]
    else:
        assert raw.test_labels is not None
        train_x, train_y, test_x, test_y = raw.train_images, raw.train_labels, raw.test_images, raw.test_labels
        test_idx = torch.zeros(0, dtype=torch.int64)
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3))
    norm = lambda x: (x - mean[None, :, None, None]) / std[None, :, None, None]
    tensors = {
        "train_images": norm(train_x).contiguous(),
        "train_labels": train_y.contiguous(),
        "test_images": norm(test_x).contiguous(),
        "test_labels": test_y.contiguous(),
        "mean": mean,
        "std": std,
        "test_indices": test_idx,
    }
    return Prepared(
        source=p.source,
        classes=raw.classes,
        pixel_scale=raw.pixel_scale,
        license=raw.license,
        content_hash=_content_hash(tensors, raw.classes),
        **tensors,
    )


def _content_hash(tensors: dict[str, torch.Tensor], classes: tuple[str, ...]) -> str:
    names = sorted(tensors)
    return sha256_tensors(*(tensors[n] for n in names), torch.tensor(list(json.dumps(classes).encode())))


# ---------------------------------------------------------------------------------------------------------------------
# file format

_TENSORS = ("train_images", "train_labels", "test_images", "test_labels", "mean", "std", "test_indices")


def save_prepared(data: Prepared, path: Path | str) -> None:
    meta = {
        "source": data.source,
        "classes": json.dumps(list(data.classes)),
        "pixel_scale": data.pixel_scale,
        "license": data.license,
        "content_hash": data.content_hash,
    }
    save_safetensors(path, {k: getattr(data, k) for k in _TENSORS}, FORMAT, FORMAT_VERSION, meta)


def load_prepared(path: Path | str) -> Prepared:
    """Load and verify a prepared file: format, version, and that the content hash still matches the tensors."""
    tensors, meta = load_safetensors(path, FORMAT, FORMAT_VERSION, "prepared data", "run `distiller download` first")
    missing = [k for k in _TENSORS if k not in tensors]
    if missing:
        raise DistillerError(f"{path}: missing tensors {missing}")
    classes = tuple(json.loads(meta["classes"]))
    if _content_hash({k: tensors[k] for k in _TENSORS}, classes) != meta.get("content_hash"):
        raise DistillerError(f"{path}: content hash mismatch (file corrupted or edited); re-run download")
    return Prepared(
        source=meta["source"],
        classes=classes,
        pixel_scale=meta["pixel_scale"],
        license=meta["license"],
        content_hash=meta["content_hash"],
        **{k: tensors[k] for k in _TENSORS},
    )
