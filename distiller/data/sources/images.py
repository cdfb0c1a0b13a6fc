"""Sources decoded with PIL: Hugging Face image-classification datasets (`hf:`) and image folders (`imagefolder:`).

- `hf:<repo_id>[:<config>]`: a Hub id or a local parquet, arrow or `save_to_disk` folder; the image and label columns
  are found from the features (or named by `data.image_column` / `data.label_column`).
- `imagefolder:<path>`: one folder of PNG/JPEG images per class, classes sorted by folder name.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from distiller.core.errors import DistillerError
from distiller.core.params import DataParams
from distiller.core.runtime import quiet_datasets
from distiller.data.sources.raw import RawDataset, reason, unit

GREY_MODES = frozenset({"1", "L", "LA"})
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's decompression-bomb threshold (about 89 megapixels)


def decode(image: Path | bytes, where: str) -> Image.Image:
    """One image decoded whole, or one line naming it: unreadable, truncated, or larger than `MAX_PIXELS` (a
    decompression bomb: a few kilobytes that claim billions of pixels). The size is checked from the header, before
    anything is decoded."""
    if isinstance(image, Path) and not image.is_file():  # a FIFO would block the reader, a device never end
        raise DistillerError(f"{where}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by our own limit
            im = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{width}x{height}")
            im.load()
    except Image.DecompressionBombError:  # ours above, or PIL's own when the header claims twice its limit
        raise DistillerError(
            f"{where}: claims more than {MAX_PIXELS} pixels, not decoded (a decompression bomb? resize it first)"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error) as e:
        raise DistillerError(f"{where}: not a readable image ({type(e).__name__}: {reason(e)})") from None
    return im


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
    return unit(torch.from_numpy(np.stack(arrays)))


def _same_shape(train: torch.Tensor, test: torch.Tensor, where: str) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise DistillerError(
            f"{where}: train images are {tuple(train.shape[1:])} but test images {tuple(test.shape[1:])}; "
            "set data.resolution"
        )


def load_hf(spec: str, p: DataParams, root: Path) -> RawDataset:
    """`hf:<repo_id>[:<config>]`: the train split (and test split when present) of a datasets image dataset."""
    import datasets

    repo, _, config = spec.partition(":")
    where = f"data.source hf:{spec}"
    if not repo:
        raise DistillerError(f"{where}: give a Hub dataset id or a local folder, e.g. hf:ylecun/mnist")
    local = root / repo
    try:
        with quiet_datasets():  # errors are one line; the CLI shows its own progress
            if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():  # save_to_disk folder
                loaded = datasets.load_from_disk(str(local))
            else:
                loaded = datasets.load_dataset(str(local) if local.exists() else repo, config or None)
    except Exception as e:  # DatasetNotFoundError, FileNotFoundError, ConnectionError, ValueError (config), ...
        raise DistillerError(f"{where}: cannot load ({type(e).__name__}: {reason(e)})") from None
    splits = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    if "train" not in splits:
        raise DistillerError(f"{where}: no 'train' split (splits: {', '.join(splits) or 'none'})")
    train, test = splits["train"], splits.get("test")
    image_col = _column(train.features, p.image_column, datasets.Image, "image", where)
    label_col = _column(train.features, p.label_column, datasets.ClassLabel, "label", where)
    missing = [c for c in (image_col, label_col) if test is not None and c not in test.features]
    if missing:
        raise DistillerError(f"{where}: the test split lacks column(s) {', '.join(missing)}")
    train_pil = _decoded(train, image_col, f"{where}: train")
    test_pil = _decoded(test, image_col, f"{where}: test") if test is not None else []
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


def _decoded(split: Any, column: str, where: str) -> list[Image.Image]:
    """The split's images, each decoded by `decode` (not by `datasets`, so that every file is checked alike)."""
    import datasets

    with quiet_datasets():
        rows = split.cast_column(column, datasets.Image(decode=False))[column]  # {"bytes": ..., "path": ...} per row
    images = []
    for i, row in enumerate(rows):
        data, path = (row.get("bytes"), row.get("path")) if isinstance(row, dict) else (None, None)
        named = f"{where} row {i}" + (f" ({path})" if path else "")
        if isinstance(data, bytes):
            images.append(decode(data, named))
        elif isinstance(path, str) and path:
            images.append(decode(Path(path), named))
        else:
            raise DistillerError(f"{named}: no image")
    return images


def _column(features: Any, named: str, kind: type, what: str, where: str) -> str:
    """The column named by data.<what>_column, else the one feature of type `kind`. A named label column may also
    hold plain integers or strings."""
    if named:
        if named not in features:
            raise DistillerError(f"{where}: no column '{named}' (data.{what}_column); columns: {', '.join(features)}")
        feature = features[named]
        plain = what == "label" and type(feature).__name__ == "Value" and feature.dtype.startswith(("int", "string"))
        if not isinstance(feature, kind) and not plain:
            wanted = "an Image" if what == "image" else "a ClassLabel, integer or string"
            raise DistillerError(f"{where}: column '{named}' (data.{what}_column) is not {wanted} column")
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


def load_imagefolder(spec: str, p: DataParams, root: Path) -> RawDataset:
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
        images += [decode(f, str(f)) for f in files]
        labels += [c] * len(files)
    return RawDataset(
        train_images=_stack(images, _mode(images), p.resolution, where),
        train_labels=torch.tensor(labels, dtype=torch.int64),
        test_images=None,
        test_labels=None,
        classes=tuple(d.name for d in class_dirs),
        pixel_scale="value / 255",
        license="unknown",
    )
