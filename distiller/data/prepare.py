"""The download stage's library: a source's images split, resized and preprocessed into a `Prepared` set.

`prepare` loads a source (`distiller.data.sources`), resizes it when `data.resolution` asks, splits it when it has no
test split, and fits the preprocessing on the training images: per-channel normalisation, or MTT's ZCA whitening.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from distiller.core.errors import DistillerError
from distiller.core.params import DataParams
from distiller.core.runtime import generator
from distiller.data import sources
from distiller.data.prepared import Prepared, content_hash, transform


def stratified_split(
    labels: torch.Tensor, test_fraction: float, seed: int, name: str = "split"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) indices holding out round(test_fraction * n_c) images of every class c."""
    g = generator(seed, name)
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
    images = resize(raw.train_images, p.resolution)
    if raw.test_images is None:
        train_idx, test_idx = stratified_split(raw.train_labels, p.test_fraction, p.split_seed)
        train_x, train_y = images[train_idx], raw.train_labels[train_idx]
        test_x, test_y = images[test_idx], raw.train_labels[test_idx]
    else:
        assert raw.test_labels is not None
        train_x, train_y = images, raw.train_labels
        test_x, test_y = resize(raw.test_images, p.resolution), raw.test_labels
        test_idx = torch.zeros(0, dtype=torch.int64)
    held_out = "test"
    if p.validation > 0:  # tuning: score on images carved out of the training set, never on the test split
        keep, val = stratified_split(train_y, p.validation, p.split_seed, "validation")
        train_x, train_y, test_x, test_y, test_idx = train_x[keep], train_y[keep], train_x[val], train_y[val], val
        held_out = "validation"
    _check_split(raw.classes, train_y, test_y, p, ours=raw.test_images is None or held_out == "validation")
    zca: dict[str, torch.Tensor] = {}
    if p.preprocess == "zca":
        mean, std = torch.zeros(train_x.shape[1]), torch.ones(train_x.shape[1])
        zca = fit_zca(train_x, p.zca_eps)
    else:
        mean = train_x.mean(dim=(0, 2, 3))
        std = train_x.std(dim=(0, 2, 3))
    tensors = {
        "train_images": transform(train_x, mean, std, zca).contiguous(),
        "train_labels": train_y.contiguous(),
        "test_images": transform(test_x, mean, std, zca).contiguous(),
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
        content_hash=content_hash(tensors, raw.classes),
        zca_eps=p.zca_eps if zca else 0.0,
        held_out=held_out,
        **tensors,
    )


def _check_split(
    classes: tuple[str, ...], train_y: torch.Tensor, test_y: torch.Tensor, p: DataParams, ours: bool
) -> None:
    """Every class has training images (to distill from and train experts on); the test split has images, of every
    class when the split is ours (stratified), so that a tiny source is refused here rather than later."""
    checks = [("train", train_y)] + ([("test", test_y)] if ours else [])
    for split, labels in checks:
        counts = torch.bincount(labels, minlength=len(classes))
        empty = [classes[c] for c in range(len(classes)) if counts[c] == 0]
        if empty:
            more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
            fix = "add images, or change data.test_fraction" if ours else "add images"
            raise DistillerError(f"data.source {p.source}: class '{empty[0]}'{more} has no {split} image ({fix})")
    if len(test_y) == 0:
        raise DistillerError(f"data.source {p.source}: the test split is empty")


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Sources that come as tensors (digits, torchvision's) resized to `resolution` square (bilinear, antialiased)."""
    if not resolution or tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True).clamp(0, 1)


def fit_zca(images: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """MTT's ZCA: kornia's `ZCAWhitening(eps, compute_inv=True)` fitted on the training images in [0, 1], flattened
    to D = C*H*W. kornia centres by the mean vector and scales the covariance's eigenvectors by 1 / sqrt(S + eps);
    the inverse multiplies by sqrt(S + eps). Returns the Prepared fields zca_mean (1, D), zca_matrix and zca_inverse
    (D, D)."""
    from kornia.enhance import ZCAWhitening

    zca = ZCAWhitening(eps=eps, compute_inv=True).fit(images)
    return {"zca_mean": zca.mean_vector, "zca_matrix": zca.transform_matrix, "zca_inverse": zca.transform_inv}
