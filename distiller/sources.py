"""Source datasets by name: each yields raw images in [0, 1] with labels and class names, for `data.prepare`.

- `digits`: scikit-learn's embedded 8x8 digits (no download, no test split).
- `mnist`, `fashion-mnist`, `cifar10`, `cifar100`: torchvision's dataset classes over the original archives in
  `data.root`. Every archive is checked against torchvision's MD5 before it is used, so a wrong or truncated file is
  an error naming it, never a silent re-download; online, missing archives are downloaded (and verified) by
  torchvision; offline they are placed by hand or copied in with `distiller download --from DIR`.
- `hf:<repo_id>[:<config>]`: a Hugging Face image-classification dataset (a Hub id or a local parquet, arrow or
  `save_to_disk` folder), image and label columns found from the features.
- `imagefolder:<path>`: one folder of PNG/JPEG images per class, classes sorted by folder name.

Relative paths (`data.root`, local `hf:` and `imagefolder:` folders) are relative to the project root.
"""

from __future__ import annotations

import difflib
import gzip
import pickle
import shutil
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from distiller._runtime import DistillerError, atomic_path, file_digest
from distiller.params import DataParams


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


SourceLoader = Callable[[DataParams, Path], RawDataset]  # (params, project root) -> images
SOURCES: dict[str, SourceLoader] = {}
PREFIXED: dict[str, Callable[[str, DataParams, Path], RawDataset]] = {}  # "hf:" -> loader(rest, params, root)
PREFIX_USAGE = ("hf:<repo_id>[:<config>]", "imagefolder:<path>")


def register(name: str) -> Callable[[SourceLoader], SourceLoader]:
    def deco(fn: SourceLoader) -> SourceLoader:
        SOURCES[name] = fn
        return fn

    return deco


def load(p: DataParams, root: Path | str = ".") -> RawDataset:
    """The raw images of `p.source`; `root` is the project root that relative paths start from."""
    for prefix, loader in PREFIXED.items():
        if p.source.startswith(prefix):
            return loader(p.source[len(prefix) :], p, Path(root))
    if p.source not in SOURCES:
        close = difflib.get_close_matches(p.source, list(SOURCES), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        known = ", ".join([*sorted(SOURCES), *PREFIX_USAGE])
        raise DistillerError(f"data.source: unknown source '{p.source}'{hint}; known: {known}")
    return SOURCES[p.source](p, Path(root))


def data_root(p: DataParams, root: Path | str = ".") -> Path:
    """`data.root`, where the original archives live (relative to the project root unless absolute)."""
    return Path(root) / p.root


def describe(source: str, root: Path | str = ".") -> dict[str, str]:
    """What the dataset card says about a source: its Hub id (or "original"), a title, how to get its raw images."""
    if source in CARD:
        return CARD[source]
    kind, _, rest = source.partition(":")
    if kind == "hf":
        repo, _, config = rest.partition(":")
        local = (Path(root) / repo).exists()
        return {
            "hub_id": "original" if local else repo,
            "title": repo if not local else Path(repo).name,
            "loader": f'datasets.load_dataset("{repo}"{f", {config!r}" if config else ""}): the train split '
            "(and test split when present), images in [0, 1] as value / 255",
        }
    if kind == "imagefolder":
        return {
            "hub_id": "original",
            "title": f"image folder {Path(rest).name}",
            "loader": "one folder of PNG/JPEG images per class, classes sorted by folder name, files by name; "
            "value / 255",
        }
    return {}


CARD: dict[str, dict[str, str]] = {
    "digits": {
        "hub_id": "sklearn-digits",
        "title": "scikit-learn digits (UCI ML hand-written digits, 8x8)",
        "loader": "sklearn.datasets.load_digits(): images (1797, 8, 8) with values 0..16, targets 0..9",
        "homepage": "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    },
    "mnist": {
        "hub_id": "ylecun/mnist",
        "title": "MNIST (hand-written digits, 28x28 grey)",
        "loader": "torchvision.datasets.MNIST(root, train=True/False): uint8 (N, 28, 28), value / 255",
        "homepage": "https://yann.lecun.com/exdb/mnist/",
    },
    "fashion-mnist": {
        "hub_id": "zalando-datasets/fashion_mnist",
        "title": "Fashion-MNIST (Zalando article images, 28x28 grey)",
        "loader": "torchvision.datasets.FashionMNIST(root, train=True/False): uint8 (N, 28, 28), value / 255",
        "homepage": "https://github.com/zalandoresearch/fashion-mnist",
    },
    "cifar10": {
        "hub_id": "uoft-cs/cifar10",
        "title": "CIFAR-10 (32x32 colour, 10 classes)",
        "loader": "torchvision.datasets.CIFAR10(root, train=True/False): uint8 (N, 32, 32, 3), value / 255",
        "homepage": "https://www.cs.toronto.edu/~kriz/cifar.html",
    },
    "cifar100": {
        "hub_id": "uoft-cs/cifar100",
        "title": "CIFAR-100 (32x32 colour, 100 fine classes)",
        "loader": "torchvision.datasets.CIFAR100(root, train=True/False): uint8 (N, 32, 32, 3), value / 255, "
        "fine labels",
        "homepage": "https://www.cs.toronto.edu/~kriz/cifar.html",
    },
}


# ---------------------------------------------------------------------------------------------------------------------
# digits


@register("digits")
def _digits(p: DataParams, root: Path) -> RawDataset:
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


# ---------------------------------------------------------------------------------------------------------------------
# torchvision: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100 from their original archives

# source -> (torchvision.datasets class name, license of the original data)
TORCHVISION: dict[str, tuple[str, str]] = {
    "mnist": ("MNIST", "cc-by-sa-3.0"),
    "fashion-mnist": ("FashionMNIST", "mit"),
    "cifar10": ("CIFAR10", "unknown"),
    "cifar100": ("CIFAR100", "unknown"),
}

# source -> {archive file name: MD5}, filled from torchvision's class attributes on first use (`MNIST.resources`,
# `CIFAR10.filename`/`tgz_md5`); tests put their own fake archives' checksums here.
CHECKSUMS: dict[str, dict[str, str]] = {}


def _tv_class(source: str) -> Any:
    import torchvision.datasets

    return getattr(torchvision.datasets, TORCHVISION[source][0])


def checksums(source: str) -> dict[str, str]:
    """{archive file name: MD5} that torchvision expects for `source`."""
    if source not in CHECKSUMS:
        cls = _tv_class(source)
        CHECKSUMS[source] = dict(cls.resources) if hasattr(cls, "resources") else {cls.filename: cls.tgz_md5}
    return CHECKSUMS[source]


def archive_dir(source: str, root: Path) -> Path:
    """Where torchvision looks for the archives under `data.root`: <root>/MNIST/raw/ (also FashionMNIST), or
    <root>/ itself for the CIFARs."""
    name = TORCHVISION[source][0]
    return root / name / "raw" if "MNIST" in name else root


def _reason(e: BaseException, last: bool = False) -> str:
    """The first (or last) line of an exception's message: the CLI prints errors as one line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(e).__name__


def md5(path: Path) -> str:
    return file_digest(path, "md5")


def _check(path: Path, expected: str, source: str, fix: str = "replace it with the original archive") -> None:
    got = md5(path)
    if got != expected:
        raise DistillerError(
            f"{path}: MD5 {got} is not the {expected} torchvision expects for {source} (a wrong, truncated or "
            f"corrupted file); {fix}"
        )


def import_archives(source: str, src: Path, root: Path) -> list[Path]:
    """`distiller download --from SRC`: copy the original archives of `source` from the folder `src` to where
    torchvision expects them under `root` (`data.root`). Every file is verified before anything is copied, and each
    copy is verified again before it is renamed into place, so nothing wrong or half-written lands in `root`."""
    if source not in TORCHVISION:
        raise DistillerError(f"--from applies to {', '.join(TORCHVISION)}; data.source is '{source}'")
    if not src.is_dir():
        raise DistillerError(f"--from {src}: not a directory")
    expected = checksums(source)
    missing = [name for name in expected if not (src / name).is_file()]
    if missing:
        raise DistillerError(f"{src}: missing {', '.join(missing)} (the original {source} archives, same names)")
    for name, digest in expected.items():
        _check(src / name, digest, source)
    dest = archive_dir(source, root)
    for name, digest in expected.items():
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(src / name, tmp)
            _check(tmp, digest, source)  # the file may have changed since; atomic_path drops the copy on error
    return [dest / name for name in expected]


def _extract(archive: Path, dest: Path) -> None:
    """Unpack a verified archive where torchvision reads it: one IDX file per .gz, or the CIFAR batches folder."""
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(dest, filter="data")
        else:
            with gzip.open(archive, "rb") as src, atomic_path(dest / archive.name.removesuffix(".gz")) as tmp:
                tmp.write_bytes(src.read())
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise DistillerError(f"{archive}: cannot unpack ({_reason(e)}); replace it with the original archive") from None


def _torchvision(source: str, p: DataParams, project_root: Path) -> RawDataset:
    root = data_root(p, project_root)
    folder = archive_dir(source, root)
    expected = checksums(source)
    present = [name for name in expected if (folder / name).is_file()]
    for name in present:  # before torchvision sees them: it would silently download over a bad file
        _check(folder / name, expected[name], source, "replace it with the original archive, or delete it to download")
    cls = _tv_class(source)
    if len(present) == len(expected):
        for name in present:
            _extract(folder / name, folder)
    else:
        missing = [name for name in expected if name not in present]
        try:  # torchvision downloads the missing archives, checks its MD5s and unpacks them
            cls(str(root), train=True, download=True)
        except Exception as e:  # URLError, HTTPError, RuntimeError (bad checksum), OSError, ...
            reason = _reason(e, last=True)  # torchvision lists each mirror it tried; the last error is the cause
            raise DistillerError(
                f"{source}: {', '.join(missing)} not in {folder} and the download failed ({reason}); place the "
                f"original archives there or run `distiller download --from DIR`"
            ) from None
    try:  # CIFAR batches are pickles: read only from an archive whose MD5 matched (ours above, or torchvision's)
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except (RuntimeError, AssertionError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise DistillerError(f"{folder}: torchvision cannot read {source} ({_reason(e)})") from None
    return RawDataset(
        train_images=_unit(torch.as_tensor(np.asarray(train.data))),
        train_labels=torch.as_tensor(np.asarray(train.targets), dtype=torch.int64),
        test_images=_unit(torch.as_tensor(np.asarray(test.data))),
        test_labels=torch.as_tensor(np.asarray(test.targets), dtype=torch.int64),
        classes=tuple(str(c) for c in train.classes),
        pixel_scale="value / 255",
        license=TORCHVISION[source][1],
    )


def _torchvision_loader(source: str) -> SourceLoader:
    return lambda p, root: _torchvision(source, p, root)


for _source in TORCHVISION:
    register(_source)(_torchvision_loader(_source))


# ---------------------------------------------------------------------------------------------------------------------
# images decoded with PIL: Hugging Face datasets and image folders

GREY_MODES = frozenset({"1", "L", "LA"})


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    x = x.unsqueeze(-1) if x.ndim == 3 else x
    return x.permute(0, 3, 1, 2).float().div(255).contiguous()


def _mode(images: Sequence[Image.Image]) -> str:
    """L when every image is greyscale, else RGB (alpha is dropped, palettes expanded)."""
    return "L" if all(im.mode in GREY_MODES for im in images) else "RGB"


def _stack(images: Sequence[Image.Image], mode: str, resolution: int, where: str) -> torch.Tensor:
    """PIL images -> float32 (N, C, H, W) in [0, 1]; resized (bilinear, squashed to a square) when resolution > 0."""
    arrays = []
    for im in images:
        im = im.convert(mode)
        if resolution:
            im = im.resize((resolution, resolution), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im))
    if not arrays:
        raise DistillerError(f"{where}: no images")
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        (h0, w0), (h1, w1) = sizes[0], sizes[-1]
        raise DistillerError(
            f"{where}: images differ in size ({h0}x{w0} and {h1}x{w1}); set data.resolution to resize them all"
        )
    return _unit(torch.from_numpy(np.stack(arrays)))


def _same_shape(train: torch.Tensor, test: torch.Tensor, where: str) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise DistillerError(
            f"{where}: train images are {tuple(train.shape[1:])} but test images {tuple(test.shape[1:])}; "
            "set data.resolution"
        )


def _hf(spec: str, p: DataParams, root: Path) -> RawDataset:
    """`hf:<repo_id>[:<config>]`: the train split (and test split when present) of a datasets image dataset."""
    import datasets

    repo, _, config = spec.partition(":")
    where = f"data.source hf:{spec}"
    if not repo:
        raise DistillerError(f"{where}: give a Hub dataset id or a local folder, e.g. hf:ylecun/mnist")
    local = root / repo
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():  # save_to_disk folder
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(str(local) if local.exists() else repo, config or None)
    except Exception as e:  # DatasetNotFoundError, FileNotFoundError, ConnectionError, ValueError (config), ...
        raise DistillerError(f"{where}: cannot load ({type(e).__name__}: {_reason(e)})") from None
    splits = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    if "train" not in splits:
        raise DistillerError(f"{where}: no 'train' split (splits: {', '.join(splits) or 'none'})")
    train, test = splits["train"], splits.get("test")
    image_col = _column(train.features, p.image_column, datasets.Image, "image", where)
    label_col = _column(train.features, p.label_column, datasets.ClassLabel, "label", where)
    missing = [c for c in (image_col, label_col) if test is not None and c not in test.features]
    if missing:
        raise DistillerError(f"{where}: the test split lacks column(s) {', '.join(missing)}")
    train_pil = list(train[image_col])
    test_pil = list(test[image_col]) if test is not None else []
    mode = _mode(train_pil + test_pil)
    train_x = _stack(train_pil, mode, p.resolution, where)
    test_x = _stack(test_pil, mode, p.resolution, where) if test is not None else None
    if test_x is not None:
        _same_shape(train_x, test_x, where)
    classes, train_y, test_y = _labels(
        train.features[label_col], list(train[label_col]), list(test[label_col]) if test is not None else None, where
    )
    return RawDataset(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=classes,
        pixel_scale="value / 255",
        license=train.info.license or "unknown",
    )


def _column(features: Any, named: str, kind: type, what: str, where: str) -> str:
    """The column named by data.<what>_column, else the one feature of type `kind`."""
    if named:
        if named not in features:
            raise DistillerError(f"{where}: no column '{named}' (data.{what}_column); columns: {', '.join(features)}")
        return named
    found = [name for name, f in features.items() if isinstance(f, kind)]
    if len(found) != 1:
        which = f"{len(found)} {kind.__name__} columns ({', '.join(found)})" if found else f"no {kind.__name__} column"
        raise DistillerError(
            f"{where}: {which} to use as the {what}; set data.{what}_column (columns: {', '.join(features)})"
        )
    return found[0]


def _labels(
    feature: Any, train: list[Any], test: list[Any] | None, where: str
) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor | None]:
    """Class names and int64 labels: a ClassLabel's names, else the sorted distinct values of the training labels."""
    import datasets

    if any(v is None for v in [*train, *(test or [])]):
        raise DistillerError(f"{where}: some images have no label")
    if isinstance(feature, datasets.ClassLabel):
        classes = tuple(feature.names)
        index = {i: i for i in range(len(classes))}
    else:
        values = sorted(set(train))
        classes = tuple(str(v) for v in values)
        index = {v: i for i, v in enumerate(values)}

    def encode(labels: list[Any]) -> torch.Tensor:
        bad = [v for v in labels if v not in index]
        if bad:
            raise DistillerError(f"{where}: label {bad[0]!r} is not one of the {len(classes)} training classes")
        return torch.tensor([index[v] for v in labels], dtype=torch.int64)

    return classes, encode(train), None if test is None else encode(test)


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


def _imagefolder(spec: str, p: DataParams, root: Path) -> RawDataset:
    """`imagefolder:<path>`: <path>/<class>/<image>.png|jpg; classes sorted by folder name, images by file name."""
    folder = root / spec
    where = f"data.source imagefolder:{spec}"
    if not folder.is_dir():
        raise DistillerError(f"{where}: {folder} is not a directory")
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DistillerError(f"{where}: no class folders in {folder}")
    images, labels = [], []
    for c, d in enumerate(class_dirs):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if not files:
            raise DistillerError(f"{where}: class folder {d} holds no PNG or JPEG images")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    images.append(im)
            except (OSError, UnidentifiedImageError) as e:
                raise DistillerError(f"{f}: not a readable image ({type(e).__name__})") from None
            labels.append(c)
    return RawDataset(
        train_images=_stack(images, _mode(images), p.resolution, where),
        train_labels=torch.tensor(labels, dtype=torch.int64),
        test_images=None,
        test_labels=None,
        classes=tuple(d.name for d in class_dirs),
        pixel_scale="value / 255",
        license="unknown",
    )


PREFIXED["hf:"] = _hf
PREFIXED["imagefolder:"] = _imagefolder
