"""The synthetic set: images, labels (hard, and soft when learned), the lr to train with, and its file.

Images are stored class-major in the space of the prepared data (normalised, or ZCA-whitened): image `c * ipc + j`
is the j-th image of class c, so "the first k images per class" is well defined. A Boost-DD set also records its
nested `budgets`: the first b images of every class form the budget-b subset, for each b in budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distiller.core.errors import DistillerError
from distiller.core.files import load_safetensors, save_safetensors, sha256_tensors
from distiller.data.prepared import Prepared

FORMAT = "distiller.synthetic"
FORMAT_VERSION = "2"  # 2: one sealed metadata entry


@dataclass(frozen=True)
class SyntheticSet:
    images: torch.Tensor  # (classes * ipc, C, H, W), class-major, preprocessed like the real data
    labels: torch.Tensor  # (classes * ipc,) int64 hard labels
    lr: float | None  # learned student lr (MTT); None when the method learns none
    ipc: int
    soft_labels: torch.Tensor | None = None  # (classes * ipc, classes) learned label distributions, or None
    budgets: tuple[int, ...] = ()  # nested budgets (Boost-DD); () means just (ipc,)

    @property
    def num_classes(self) -> int:
        return len(self.labels) // self.ipc

    @property
    def targets(self) -> torch.Tensor:
        """What a network trains against: the soft labels when learned, else the hard ones."""
        return self.soft_labels if self.soft_labels is not None else self.labels

    def tensors(self) -> dict[str, torch.Tensor]:
        """images, labels and (when learned) soft_labels, as stored in files and checkpoints."""
        out = {"images": self.images, "labels": self.labels}
        return out if self.soft_labels is None else {**out, "soft_labels": self.soft_labels}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], lr: float | None, ipc: int) -> SyntheticSet:
        return cls(tensors["images"], tensors["labels"], lr, ipc, tensors.get("soft_labels"))

    def prefix(self, k: int) -> SyntheticSet:
        """The first k images of every class (class-major), with their labels."""
        if not 1 <= k <= self.ipc:
            raise ValueError(f"prefix {k} outside 1 .. {self.ipc}")
        idx = (torch.arange(self.num_classes)[:, None] * self.ipc + torch.arange(k)[None, :]).flatten()
        idx = idx.to(self.images.device)
        soft = self.soft_labels[idx] if self.soft_labels is not None else None
        return SyntheticSet(
            self.images[idx], self.labels[idx], self.lr, k, soft, tuple(b for b in self.budgets if b <= k)
        )


def real_subset(data: Prepared, ipc: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random training images of every class, class-major (real initialisation and the random baseline)."""
    labels_cpu = data.train_labels.cpu()
    chosen = []
    for c in range(data.num_classes):
        idx = torch.nonzero(labels_cpu == c).flatten()
        if len(idx) < ipc:
            raise DistillerError(
                f"distill.ipc {ipc} exceeds the {len(idx)} training images of class '{data.classes[c]}'"
            )
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:ipc]])
    order = torch.cat(chosen).to(data.train_images.device)
    return data.train_images[order].clone(), data.train_labels[order].clone()


def class_major_labels(num_classes: int, ipc: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(ipc)


def initial_images(data: Prepared, ipc: int, init: str, gen: torch.Generator, unit_norm: bool = False) -> torch.Tensor:
    """Class-major starting images on the CPU: `ipc` random real ones per class, or N(0, 1) pixels (rescaled to unit
    L2 norm per image with `unit_norm`, RaT-BPTT's default)."""
    if init == "real":
        return real_subset(data, ipc, gen)[0].cpu()
    c, h, w = data.image_shape
    x = torch.randn(data.num_classes * ipc, c, h, w, generator=gen)
    return x / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1) if unit_norm else x


def save(syn: SyntheticSet, path: Path | str, provenance: dict[str, object]) -> None:
    meta = {"lr": syn.lr, "ipc": syn.ipc, "budgets": list(syn.budgets or (syn.ipc,)), "provenance": provenance}
    save_safetensors(path, syn.tensors(), FORMAT, FORMAT_VERSION, meta)


def load(path: Path | str, data: Prepared | None = None) -> tuple[SyntheticSet, dict[str, object]]:
    """A synthetic set and its provenance, verified: format, version and seal (the lr, ipc and budgets are sealed
    with the tensors), then what the seal cannot vouch for (`_check`), and with `data` that it fits those data."""
    tensors, meta = load_safetensors(path, FORMAT, FORMAT_VERSION, "synthetic set", "re-run `distiller distill`")
    syn = _check(tensors, meta, path)
    if data is not None and (syn.images.shape[1:] != data.image_shape or syn.num_classes != data.num_classes):
        raise DistillerError(
            f"{path}: {syn.num_classes} classes of {tuple(syn.images.shape[1:])} images do not fit the prepared "
            f"data ({data.num_classes} classes of {data.image_shape}); re-run distill"
        )
    return syn, meta["provenance"]


def _check(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path | str) -> SyntheticSet:
    """A set distiller could have written: an ipc, a positive lr or none, increasing budgets up to ipc, class-major
    labels, finite pixels and label distributions of matching shapes."""
    images, labels, soft = tensors.get("images"), tensors.get("labels"), tensors.get("soft_labels")
    ipc, lr, budgets = meta.get("ipc"), meta.get("lr"), meta.get("budgets")
    if images is None or labels is None or not isinstance(ipc, int) or ipc < 1 or len(labels) % ipc:
        raise DistillerError(f"{path}: not a synthetic set (images, labels or ipc missing or inconsistent)")
    k = len(labels) // ipc
    if (
        images.ndim != 4
        or len(images) != len(labels)
        or not torch.equal(labels, class_major_labels(k, ipc))
        or (soft is not None and soft.shape != (len(labels), k))
    ):
        raise DistillerError(f"{path}: the images, labels and soft labels do not agree ({ipc} per class)")
    if not all(bool(torch.isfinite(t).all()) for t in (images, *([soft] if soft is not None else []))):
        raise DistillerError(f"{path}: the synthetic set holds NaN or infinite values; re-run distill")
    good_lr = lr is None or (isinstance(lr, float) and math.isfinite(lr) and lr > 0)
    steps = budgets if isinstance(budgets, list) and all(isinstance(b, int) and b >= 1 for b in budgets) else []
    if not good_lr or not steps or steps != sorted(set(steps)) or steps[-1] != ipc:
        raise DistillerError(f"{path}: its learned lr ({lr!r}) or budgets ({budgets!r}) are not valid")
    return SyntheticSet(images, labels, lr, ipc, soft, tuple(steps))


def content_hash(syn: SyntheticSet) -> str:
    """What an evaluation of the set depends on: its tensors and its lr (the metrics name the set they describe)."""
    return sha256_tensors(*syn.tensors().values(), torch.tensor([syn.lr or 0.0], dtype=torch.float64))
