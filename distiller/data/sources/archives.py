"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from their original archives, checked against torchvision's MD5s.

Every archive is checked before it is used, so a wrong or truncated file is an error naming it, never a silent
re-download; online, missing archives are downloaded (and verified) by torchvision's downloader; offline they are
placed by hand in `data.root` or copied in with `distiller download --from DIR` (`import_archives`). The images are
then read from those verified archives alone (`distiller.data.sources.readers`): torchvision's dataset classes would
also read extracted files or cached tensors placed beside them, which no checksum covers.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distiller.core.errors import DistillerError
from distiller.core.files import atomic_path, file_digest
from distiller.core.params import DataParams
from distiller.data.sources.raw import RawDataset, reason, unit
from distiller.data.sources.readers import read_cifar, read_idx


def data_root(p: DataParams, root: Path | str = ".") -> Path:
    """`data.root`, where the original archives live (relative to the project root unless absolute)."""
    return Path(root) / p.root


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


def _download(source: str, folder: Path, missing: list[str]) -> None:
    """Online: torchvision's downloader fetches each missing archive (trying every mirror); each is verified after."""
    import torchvision.datasets.utils as tv_utils

    cls, expected = _tv_class(source), checksums(source)
    for name in missing:
        urls = [f"{mirror}{name}" for mirror in cls.mirrors] if hasattr(cls, "mirrors") else [cls.url]
        error: Exception | None = None
        for url in urls:
            try:
                tv_utils.download_url(url, str(folder), filename=name, md5=expected[name])
                break
            except Exception as e:  # URLError, HTTPError, RuntimeError (bad checksum), OSError, ...
                error = e
        else:
            why = reason(error) if error is not None else "no mirror"
            raise DistillerError(
                f"{source}: {', '.join(missing)} not in {folder} and the download failed ({why}); "
                f"place the original archives there or run `distiller download --from DIR`"
            )
        _check(folder / name, expected[name], source, "delete it and download again")


IDX = ("images-idx3-ubyte", "labels-idx1-ubyte")  # MNIST's and Fashion-MNIST's archives: {train,t10k}-<kind>.gz


def _read(source: str, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images (N, H, W[, C]) uint8, labels and class names, from the verified archives alone."""
    cls = _tv_class(source)
    if "MNIST" in TORCHVISION[source][0]:  # the four IDX archives, torchvision's class names
        files = [folder / f"{split}-{kind}.gz" for split in ("train", "t10k") for kind in IDX]
        arrays = [read_idx(path, 3 if "images" in path.name else 1) for path in files]
        for images, labels, path in ((arrays[0], arrays[1], files[1]), (arrays[2], arrays[3], files[3])):
            if len(images) != len(labels) or (len(labels) and labels.max() >= len(cls.classes)):
                raise DistillerError(f"{path}: not {len(images)} labels below {len(cls.classes)}")
        return arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64), tuple(cls.classes)
    (archive,) = checksums(source)
    batches = ([m for m, _ in cls.train_list], [m for m, _ in cls.test_list])
    return read_cifar(folder / archive, cls.base_folder, *batches, cls.meta["filename"], cls.meta["key"])


def _torchvision(source: str, p: DataParams, project_root: Path) -> RawDataset:
    folder = archive_dir(source, data_root(p, project_root))
    expected = checksums(source)
    present = [name for name in expected if (folder / name).is_file()]
    for name in present:  # a bad file is named, never downloaded over
        _check(folder / name, expected[name], source, "replace it with the original archive, or delete it to download")
    if len(present) < len(expected):
        _download(source, folder, [name for name in expected if name not in present])
    # read from the archives just verified, never from files beside them (extracted copies, torchvision's caches)
    train_x, train_y, test_x, test_y, classes = _read(source, folder)
    return RawDataset(
        train_images=unit(torch.from_numpy(np.ascontiguousarray(train_x))),
        train_labels=torch.from_numpy(train_y),
        test_images=unit(torch.from_numpy(np.ascontiguousarray(test_x))),
        test_labels=torch.from_numpy(test_y),
        classes=classes,
        pixel_scale="value / 255",
        license=TORCHVISION[source][1],
    )


def loader(source: str) -> Callable[[DataParams, Path], RawDataset]:
    return lambda p, root: _torchvision(source, p, root)
