"""The prepared tensor file every stage after `download` reads, and the preprocessing it carries.

Preprocessing maps pixels x in [0, 1] to (x - mean) / std per channel, then, when ZCA is on, flattens to D = C*H*W
and whitens: z = (x - zca_mean) @ zca_matrix (docs/methods.md, "Data"). The fitted transform travels inside
`Prepared` and its content hash into every downstream artifact, so the data are fitted once and reused everywhere.
The file format is safetensors (no pickle) with JSON metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distiller.core.errors import DistillerError
from distiller.core.files import load_safetensors, save_safetensors, sha256_tensors
from distiller.core.params import DataParams

FORMAT = "distiller.prepared"
FORMAT_VERSION = "2"  # 2: one sealed metadata entry


def _empty() -> torch.Tensor:
    return torch.zeros(0)


@dataclass(frozen=True)
class Prepared:
    """Preprocessed train/test tensors plus what is needed to redo (and undo) the preprocessing elsewhere.

    With ZCA, mean and std are 0 and 1 (MTT whitens raw pixels)."""

    source: str
    classes: tuple[str, ...]
    train_images: torch.Tensor  # (N, C, H, W) float32, preprocessed
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor  # (C,) applied to pixels in [0, 1]
    std: torch.Tensor  # (C,)
    test_indices: torch.Tensor  # (n_test,) into the source's own order; empty when the source has a test split
    pixel_scale: str
    license: str
    content_hash: str
    zca_mean: torch.Tensor = field(default_factory=_empty)  # (1, D) training mean; empty when preprocess is normalize
    zca_matrix: torch.Tensor = field(default_factory=_empty)  # (D, D) U (S + eps)^-1/2 U^T (kornia's ZCAWhitening)
    zca_inverse: torch.Tensor = field(default_factory=_empty)  # (D, D) U (S + eps)^1/2 U^T: x = z @ inverse + mean
    zca_eps: float = 0.0
    held_out: str = "test"  # what test_* hold: the test split, or a validation split carved out of train (tuning)

    @property
    def preprocess(self) -> str:
        return "zca" if self.zca_matrix.numel() else "normalize"

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


def transform(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, zca: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pixels in [0, 1], (N, C, H, W) -> the prepared space: per-channel normalisation, then ZCA when fitted."""
    x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    if zca:
        x = (x.flatten(1) - zca["zca_mean"]).mm(zca["zca_matrix"]).reshape(x.shape)  # kornia's linear_transform
    return x


def preprocess(images: torch.Tensor, data: Prepared) -> torch.Tensor:
    """Real pixels in [0, 1], (N, C, H, W), into the prepared space of `data` (as its train and test images)."""
    zca = {"zca_mean": data.zca_mean, "zca_matrix": data.zca_matrix} if data.preprocess == "zca" else {}
    return transform(images, data.mean, data.std, zca)


def to_unit(images: torch.Tensor, data: Prepared) -> torch.Tensor:
    """Prepared-space images (N, C, H, W) back to pixels in [0, 1], on the CPU: undo ZCA with its inverse, then the
    normalisation; clipped, since distilled pixels may leave the range. For grids and previews."""
    x = images.detach().cpu()
    if data.preprocess == "zca":
        x = (x.flatten(1).mm(data.zca_inverse) + data.zca_mean).reshape(x.shape)  # (N, D) -> (N, C, H, W)
    x = x * data.std.view(1, -1, 1, 1) + data.mean.view(1, -1, 1, 1)
    return x.clamp(0, 1)


def to_pixels(images: torch.Tensor, data: Prepared) -> torch.Tensor:
    """Undo the preprocessing and quantise for viewing: uint8 (N, H, W, C). Lossy; previews only."""
    return (to_unit(images, data) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def content_hash(tensors: dict[str, torch.Tensor], classes: tuple[str, ...]) -> str:
    names = sorted(tensors)
    return sha256_tensors(*(tensors[n] for n in names), torch.tensor(list(json.dumps(classes).encode())))


_TENSORS = ("train_images", "train_labels", "test_images", "test_labels", "mean", "std", "test_indices")
_ZCA = ("zca_mean", "zca_matrix", "zca_inverse")  # stored (and hashed) only when ZCA is on


def save_prepared(data: Prepared, path: Path | str) -> None:
    meta: dict[str, object] = {
        "source": data.source,
        "classes": list(data.classes),
        "pixel_scale": data.pixel_scale,
        "license": data.license,
        "content_hash": data.content_hash,
    }
    names = _TENSORS + (_ZCA if data.preprocess == "zca" else ())
    if data.preprocess == "zca":
        meta["zca_eps"] = data.zca_eps
    if data.held_out != "test":
        meta["held_out"] = data.held_out
    save_safetensors(path, {k: getattr(data, k) for k in names}, FORMAT, FORMAT_VERSION, meta)


def load_prepared(path: Path | str, expect: DataParams | None = None) -> Prepared:
    """Load a prepared file, verified (format, version, seal: `files.load_safetensors`); with `expect`, refused
    unless it was prepared as those params say (source, preprocessing, resolution)."""
    data = _load(path)
    if expect is not None:
        side = data.image_shape[1] if data.image_shape[1] == data.image_shape[2] else -1
        if (
            data.source != expect.source
            or data.preprocess != expect.preprocess
            or (expect.resolution and side != expect.resolution)
            or (data.preprocess == "zca" and data.zca_eps != expect.zca_eps)
            or (data.held_out == "validation") != (expect.validation > 0)
        ):
            raise DistillerError(
                f"{path}: prepared from {data.source} ({data.preprocess}, {data.image_shape}), not as data params say "
                f"({expect.source}, {expect.preprocess}); re-run `distiller download`"
            )
    return data


def _load(path: Path | str) -> Prepared:
    tensors, meta = load_safetensors(path, FORMAT, FORMAT_VERSION, "prepared data", "re-run `distiller download`")
    names = _TENSORS + (_ZCA if any(k in tensors for k in _ZCA) else ())
    missing = [k for k in names if k not in tensors]
    if missing:
        raise DistillerError(f"{path}: missing tensors {missing}")
    problem = _meta_problem(meta) or _tensor_problem(tensors, meta["classes"])
    if problem is None and meta["content_hash"] != content_hash({k: tensors[k] for k in names}, tuple(meta["classes"])):
        problem = "its content_hash is not that of its tensors and classes"
    if problem is not None:  # a seal vouches for no value: a file forged with its seal recomputed gets here
        raise DistillerError(f"{path}: not prepared data distiller writes ({problem}); re-run `distiller download`")
    return Prepared(
        source=meta["source"],
        classes=tuple(meta["classes"]),
        pixel_scale=meta["pixel_scale"],
        license=meta["license"],
        content_hash=meta["content_hash"],
        zca_eps=float(meta.get("zca_eps", 0.0)),
        held_out=str(meta.get("held_out", "test")),
        **{k: tensors[k] for k in names},
    )


def _meta_problem(meta: dict[str, object]) -> str | None:
    """What is wrong with a prepared file's metadata, or None."""
    texts = [k for k in ("source", "pixel_scale", "license", "content_hash") if not isinstance(meta.get(k), str)]
    classes = meta.get("classes")
    eps = meta.get("zca_eps", 0.0)
    if texts:
        return f"{texts[0]} is not a string"
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        return "classes must be a non-empty list of class names"
    if len(set(classes)) != len(classes):
        return "classes names a class twice"
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        return "zca_eps must be a finite number >= 0"
    if meta.get("held_out", "test") not in ("test", "validation"):
        return "held_out must be test or validation"
    return None


def _tensor_problem(t: dict[str, torch.Tensor], classes: list[str]) -> str | None:
    """What is wrong with a prepared file's tensors (types, shapes, finite values, labels of its classes), or None."""
    x, y, tx, ty = t["train_images"], t["train_labels"], t["test_images"], t["test_labels"]
    if x.dtype != torch.float32 or x.ndim != 4 or tx.dtype != torch.float32 or tx.shape[1:] != x.shape[1:]:
        return "images must be float32 (N, C, H, W), train and test of one shape"
    if y.dtype != torch.int64 or ty.dtype != torch.int64 or y.shape != x.shape[:1] or ty.shape != tx.shape[:1]:
        return "labels must be int64, one per image"
    if not len(y) or not len(ty) or any(bool(((v < 0) | (v >= len(classes))).any()) for v in (y, ty)):
        return f"labels must lie in 0 .. {len(classes) - 1}, one per class of classes, with images in both splits"
    if t["test_indices"].dtype != torch.int64 or t["test_indices"].ndim != 1:
        return "test_indices must be int64 indices"
    if int(torch.bincount(y, minlength=len(classes)).min()) == 0:
        return "a class of classes has no training image"
    if t["mean"].shape != x.shape[1:2] or t["std"].shape != x.shape[1:2] or not bool((t["std"] > 0).all()):
        return "mean and std must hold one value per channel, std > 0"
    d = x[0].numel()
    shapes = {"zca_mean": (1, d), "zca_matrix": (d, d), "zca_inverse": (d, d)}
    if any(tuple(t[k].shape) != shape for k, shape in shapes.items() if k in t):
        return f"the ZCA tensors must be (1, {d}) and ({d}, {d})"
    bad = next((k for k, v in t.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    return f"{bad} holds NaN or infinite values" if bad else None
