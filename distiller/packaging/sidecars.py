"""A packaged folder's sidecars and pictures, checked against the card that describes them (for `validate`).

The preprocessing sidecar is what a consumer puts real test images through, and the split sidecar says which images
those are: each must be the file distiller wrote (its format and seal) and say what the card says. Normalisation: a
mean and a positive std per channel, equal to the card's (which rounds them to 8 decimals). ZCA: a mean of C*H*W
values, a matrix and its inverse of that side, with the card's eps. Split: the card's tensor, `count` distinct
non-negative indices. The source is one distiller reads, and the test split fits it (`fits_source`, which
`reproduce` calls again with the source loaded): a source with a test split of its own is tested on all of it
(`count` its size), one without on indices below its size; `validate` knows the sizes of the named sources
(`distiller.data.catalog.SIZES`). A picture the card shows (or the package stage copies) must be a readable image.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from distiller.core.errors import DistillerError
from distiller.core.files import load_safetensors
from distiller.data.catalog import CARD as NAMED_SOURCES
from distiller.data.catalog import SIZES
from distiller.packaging.contract import Contract

FORMATS = {"normalize": "distiller.normalization", "zca": "distiller.zca"}


def _load(staged: Path, path: Path, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    try:
        return load_safetensors(staged, fmt, "1", "sidecar")
    except DistillerError as e:
        raise DistillerError(f"{path}: sidecar missing or unreadable ({str(e).split(': ', 1)[-1]})") from None


def check(staged: Path, folder: Path, contract: Contract) -> None:
    """Every sidecar of `contract` in the staged copy `staged` of `folder` (errors name the folder's file)."""
    _preprocessing(staged, folder, contract)
    split, name = contract.source.test_split, contract.source.name
    if name not in NAMED_SOURCES and not name.startswith(("hf:", "imagefolder:")):
        known = ", ".join([*NAMED_SOURCES, "hf:<repo_id>[:<config>]", "imagefolder:<path>"])
        raise DistillerError(
            f"{folder / 'README.md'}: distiller.source.name '{name}' is no source distiller reads ({known})"
        )
    idx = split_indices(staged, folder, contract) if split.kind == "indices" else None
    if name in SIZES:
        fits_source(contract, folder, idx, *SIZES[name])


def _preprocessing(staged: Path, folder: Path, contract: Contract) -> None:
    pre, arch = contract.preprocessing, contract.protocol.architecture
    c, h, w = arch.input_shape
    path = folder / pre.file
    tensors, meta = _load(staged / pre.file, path, FORMATS.get(pre.kind, pre.kind))
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise DistillerError(f"{path}: the sidecar holds NaN or infinite values")
    if pre.kind == "zca":
        d = c * h * w
        shapes = {k: tuple(t.shape) for k, t in tensors.items()}
        if shapes != {"mean": (1, d), "matrix": (d, d), "inverse": (d, d)} or meta.get("eps") != pre.eps:
            raise DistillerError(f"{path}: not the ZCA transform the card describes (C*H*W = {d}, eps {pre.eps})")
    else:
        for name, claimed in (("mean", pre.mean), ("std", pre.std)):
            t = tensors.get(name)
            if t is None or tuple(t.shape) != (c,) or claimed is None or len(claimed) != c:
                raise DistillerError(f"{path}: no {name} of {c} channel(s) as the card describes")
            if not all(math.isclose(float(a), b, abs_tol=1e-8) for a, b in zip(t, claimed, strict=True)):
                raise DistillerError(f"{path}: its {name} {t.tolist()} is not the card's {list(claimed)}")
        if not bool((tensors["std"] > 0).all()):
            raise DistillerError(f"{path}: a std of 0 or less")


def split_indices(staged: Path, folder: Path, contract: Contract) -> torch.Tensor:
    """The split sidecar's test indices: the card's tensor, `count` distinct non-negative indices."""
    split = contract.source.test_split
    path = folder / str(split.file)
    tensors, _ = _load(staged / str(split.file), path, "distiller.split")
    idx = tensors.get(split.tensor or "")
    if idx is None or idx.dtype != torch.int64 or idx.ndim != 1 or len(idx) != split.count:
        raise DistillerError(f"{path}: no tensor '{split.tensor}' of {split.count} indices as the card says")
    if len(idx) and (int(idx.min()) < 0 or len(torch.unique(idx)) != len(idx)):
        raise DistillerError(f"{path}: the test indices are not distinct non-negative indices")
    return idx


def fits_source(contract: Contract, folder: Path, idx: torch.Tensor | None, images: int, test: int | None) -> None:
    """The card's test split fits a source of `images` training images whose own test split holds `test` (None:
    it has none); `idx` are the split sidecar's indices (kind indices)."""
    split, name = contract.source.test_split, contract.source.name
    where = f"{folder / 'README.md'}: distiller.source.test_split"
    if split.kind == "canonical" and test is None:
        raise DistillerError(f"{where} is its canonical test split, but {name} has none (its cards name indices)")
    if split.kind == "canonical" and split.count != test:
        raise DistillerError(f"{where}.count is {split.count}, but {name}'s test split holds {test} images")
    if split.kind == "indices" and test is not None:
        raise DistillerError(f"{where} is indices into the training images, but {name} has a test split of its own")
    if idx is not None and len(idx) and int(idx.max()) >= images:
        raise DistillerError(
            f"{folder / str(split.file)}: test index {int(idx.max())} is beyond {name}'s {images} images"
        )


def check_picture(path: Path, fix: str) -> None:
    """A picture (the card's grid or budget plot): a regular file holding an image PIL can read, of a sane size."""
    if path.is_symlink() or not path.is_file():
        raise DistillerError(f"{path}: missing or not a regular file; {fix}")
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DistillerError(f"{path}: not a readable image ({type(e).__name__}); {fix}") from None
