"""Source datasets by name: each yields raw images in [0, 1] with labels and class names, for `data.prepare`.

- `digits`: scikit-learn's embedded 8x8 digits (no download, no test split) - `sources.digits`.
- `mnist`, `fashion-mnist`, `cifar10`, `cifar100`: torchvision's dataset classes over the original archives in
  `data.root`, every archive checked against torchvision's MD5 first - `sources.archives`.
- `hf:<repo_id>[:<config>]` and `imagefolder:<path>`: images decoded with PIL - `sources.images`.

Relative paths (`data.root`, local `hf:` and `imagefolder:` folders) are relative to the project root.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from distiller.core.config import did_you_mean
from distiller.core.errors import DistillerError
from distiller.core.params import DataParams
from distiller.data.sources import archives, digits, images
from distiller.data.sources.raw import RawDataset

SourceLoader = Callable[[DataParams, Path], RawDataset]  # (params, project root) -> images
SOURCES: dict[str, SourceLoader] = {"digits": digits.load, **{s: archives.loader(s) for s in archives.TORCHVISION}}
PREFIXED: dict[str, Callable[[str, DataParams, Path], RawDataset]] = {
    "hf:": images.load_hf,  # "hf:" -> loader(rest, params, root)
    "imagefolder:": images.load_imagefolder,
}
PREFIX_USAGE = ("hf:<repo_id>[:<config>]", "imagefolder:<path>")


def load(p: DataParams, root: Path | str = ".") -> RawDataset:
    """The raw images of `p.source`; `root` is the project root that relative paths start from."""
    for prefix, loader in PREFIXED.items():
        if p.source.startswith(prefix):
            return loader(p.source[len(prefix) :], p, Path(root))
    if p.source not in SOURCES:
        known = ", ".join([*sorted(SOURCES), *PREFIX_USAGE])
        raise DistillerError(
            f"data.source: unknown source '{p.source}'{did_you_mean(p.source, SOURCES)}; known: {known}"
        )
    return SOURCES[p.source](p, Path(root))
