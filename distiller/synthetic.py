"""The synthetic set: images, labels (hard, and soft when learned), the lr to train with, and its file.

Images are stored class-major in the space of the prepared data (normalised, or ZCA-whitened): image `c * ipc + j`
is the j-th image of class c, so "the first k images per class" is well defined. A Boost-DD set also records its
nested `budgets`: the first b images of every class form the budget-b subset, for each b in budgets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from distiller.errors import DistillerError
from distiller.files import load_safetensors, save_safetensors
from distiller.prepared import Prepared

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


def load(path: Path | str) -> tuple[SyntheticSet, dict[str, object]]:
    """A synthetic set and its provenance, verified (format, version, seal: the lr, ipc and budgets are sealed with
    the tensors)."""
    tensors, meta = load_safetensors(path, FORMAT, FORMAT_VERSION, "synthetic set", "re-run `distiller distill`")
    if "images" not in tensors or "labels" not in tensors:
        raise DistillerError(f"{path}: synthetic set lacks images or labels")
    syn = SyntheticSet.from_tensors(tensors, meta["lr"], meta["ipc"])
    return dataclasses.replace(syn, budgets=tuple(meta["budgets"])), meta["provenance"]
