"""The prepared tensor file every later stage reads, and the preprocessing fitted on the training set.

`prepare` loads a source (`distiller.sources`), resizes it when `data.resolution` asks, splits it when it has no test
split, and preprocesses it with training-set statistics: per-channel normalisation, or MTT's ZCA whitening
(methods.md 1.3). The fitted transform travels inside `Prepared` and its content hash into every downstream artifact,
so the data are fitted once and reused everywhere. The file format is safetensors (no pickle) with JSON metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from distiller import sources
from distiller._runtime import DistillerError, generator, load_safetensors, save_safetensors, sha256_tensors
from distiller.params import DataParams

FORMAT = "distiller.prepared"
FORMAT_VERSION = "1"


def _empty() -> torch.Tensor:
    return torch.zeros(0)


@dataclass(frozen=True)
class Prepared:
    """Preprocessed train/test tensors plus what is needed to redo (and undo) the preprocessing elsewhere.

    Preprocessing maps pixels x in [0, 1] to (x - mean) / std per channel, then, when ZCA is on, flattens to D = C*H*W
    and whitens: z = (x - zca_mean) @ zca_matrix. With ZCA, mean and std are 0 and 1 (MTT whitens raw pixels).
    """

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


def prepare(p: DataParams, root: Path | str = ".") -> Prepared:
    """Load `p.source` (relative paths start at the project `root`), split it and fit the preprocessing on the
    training images."""
    raw = sources.load(p, root)
    images = _resize(raw.train_images, p.resolution)
    if raw.test_images is None:
        train_idx, test_idx = stratified_split(raw.train_labels, p.test_fraction, p.split_seed)
        train_x, train_y = images[train_idx], raw.train_labels[train_idx]
        test_x, test_y = images[test_idx], raw.train_labels[test_idx]
    else:
        assert raw.test_labels is not None
        train_x, train_y = images, raw.train_labels
        test_x, test_y = _resize(raw.test_images, p.resolution), raw.test_labels
        test_idx = torch.zeros(0, dtype=torch.int64)
    zca: dict[str, torch.Tensor] = {}
    if p.preprocess == "zca":
        mean, std = torch.zeros(train_x.shape[1]), torch.ones(train_x.shape[1])
        zca = fit_zca(train_x, p.zca_eps)
    else:
        mean = train_x.mean(dim=(0, 2, 3))
        std = train_x.std(dim=(0, 2, 3))
    tensors = {
        "train_images": _forward(train_x, mean, std, zca).contiguous(),
        "train_labels": train_y.contiguous(),
        "test_images": _forward(test_x, mean, std, zca).contiguous(),
        "test_labels": test_y.contiguous(),
        "mean": mean,
        "std": std,
        "test_indices": test_idx,
        **zca,
    }
    return Prepared(
        source=p.source,
        classes=raw.classes,
        pixel_scale=raw.pixel_scale,
        license=raw.license,
        content_hash=_content_hash(tensors, raw.classes),
        zca_eps=p.zca_eps if zca else 0.0,
        **tensors,
    )


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Sources that come as tensors (digits, torchvision's) resized to `resolution` square (bilinear, antialiased)."""
    if not resolution or tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------------------
# preprocessing


def fit_zca(images: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """MTT's ZCA (methods.md 1.3): kornia's `ZCAWhitening(eps, compute_inv=True)` fitted on the training images in
    [0, 1], flattened to D = C*H*W. kornia centres by the mean vector and scales the covariance's eigenvectors by
    1 / sqrt(S + eps); the inverse multiplies by sqrt(S + eps). Returns the Prepared fields zca_mean (1, D),
    zca_matrix and zca_inverse (D, D)."""
    from kornia.enhance import ZCAWhitening

    zca = ZCAWhitening(eps=eps, compute_inv=True).fit(images)
    return {"zca_mean": zca.mean_vector, "zca_matrix": zca.transform_matrix, "zca_inverse": zca.transform_inv}


def _forward(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, zca: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pixels in [0, 1], (N, C, H, W) -> the prepared space: per-channel normalisation, then ZCA when fitted."""
    x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    if zca:
        x = (x.flatten(1) - zca["zca_mean"]).mm(zca["zca_matrix"]).reshape(x.shape)  # kornia's linear_transform
    return x


def preprocess(images: torch.Tensor, data: Prepared) -> torch.Tensor:
    """Real pixels in [0, 1], (N, C, H, W), into the prepared space of `data` (as its train and test images)."""
    zca = {"zca_mean": data.zca_mean, "zca_matrix": data.zca_matrix} if data.preprocess == "zca" else {}
    return _forward(images, data.mean, data.std, zca)


def to_unit(images: torch.Tensor, data: Prepared) -> torch.Tensor:
    """Prepared-space images (N, C, H, W) back to pixels in [0, 1], on the CPU: undo ZCA with its inverse, then the
    normalisation; clipped, since distilled pixels may leave the range. For grids and previews."""
    x = images.detach().cpu()
    if data.preprocess == "zca":
        x = (x.flatten(1).mm(data.zca_inverse) + data.zca_mean).reshape(x.shape)  # (N, D) -> (N, C, H, W)
    x = x * data.std.view(1, -1, 1, 1) + data.mean.view(1, -1, 1, 1)
    return x.clamp(0, 1)


def _content_hash(tensors: dict[str, torch.Tensor], classes: tuple[str, ...]) -> str:
    names = sorted(tensors)
    return sha256_tensors(*(tensors[n] for n in names), torch.tensor(list(json.dumps(classes).encode())))


# ---------------------------------------------------------------------------------------------------------------------
# file format

_TENSORS = ("train_images", "train_labels", "test_images", "test_labels", "mean", "std", "test_indices")
_ZCA = ("zca_mean", "zca_matrix", "zca_inverse")  # stored (and hashed) only when ZCA is on


def save_prepared(data: Prepared, path: Path | str) -> None:
    meta = {
        "source": data.source,
        "classes": json.dumps(list(data.classes)),
        "pixel_scale": data.pixel_scale,
        "license": data.license,
        "content_hash": data.content_hash,
    }
    names = _TENSORS + (_ZCA if data.preprocess == "zca" else ())
    if data.preprocess == "zca":
        meta["zca_eps"] = repr(data.zca_eps)
    save_safetensors(path, {k: getattr(data, k) for k in names}, FORMAT, FORMAT_VERSION, meta)


def load_prepared(path: Path | str) -> Prepared:
    """Load and verify a prepared file: format, version, and that the content hash still matches the tensors."""
    tensors, meta = load_safetensors(path, FORMAT, FORMAT_VERSION, "prepared data", "run `distiller download` first")
    names = _TENSORS + (_ZCA if any(k in tensors for k in _ZCA) else ())
    missing = [k for k in names if k not in tensors]
    if missing:
        raise DistillerError(f"{path}: missing tensors {missing}")
    classes = tuple(json.loads(meta["classes"]))
    if _content_hash({k: tensors[k] for k in names}, classes) != meta.get("content_hash"):
        raise DistillerError(f"{path}: content hash mismatch (file corrupted or edited); re-run download")
    return Prepared(
        source=meta["source"],
        classes=classes,
        pixel_scale=meta["pixel_scale"],
        license=meta["license"],
        content_hash=meta["content_hash"],
        zca_eps=float(meta.get("zca_eps", 0.0)),
        **{k: tensors[k] for k in names},
    )
