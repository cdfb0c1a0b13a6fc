"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100: torchvision's dataset classes over the original archives.

Every archive is checked against torchvision's MD5 before it is used, so a wrong or truncated file is an error naming
it, never a silent re-download; online, missing archives are downloaded (and verified) by torchvision; offline they
are placed by hand in `data.root` or copied in with `distiller download --from DIR` (`import_archives`).
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distiller.errors import DistillerError
from distiller.files import atomic_path, file_digest
from distiller.params import DataParams
from distiller.sources.raw import RawDataset, reason, unit


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
        raise DistillerError(f"{archive}: cannot unpack ({reason(e)}); replace it with the original archive") from None


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
            why = reason(e, last=True)  # torchvision lists each mirror it tried; the last error is the cause
            raise DistillerError(
                f"{source}: {', '.join(missing)} not in {folder} and the download failed ({why}); place the "
                f"original archives there or run `distiller download --from DIR`"
            ) from None
    try:  # CIFAR batches are pickles: read only from an archive whose MD5 matched (ours above, or torchvision's)
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except (RuntimeError, AssertionError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise DistillerError(f"{folder}: torchvision cannot read {source} ({reason(e)})") from None
    return RawDataset(
        train_images=unit(torch.as_tensor(np.asarray(train.data))),
        train_labels=torch.as_tensor(np.asarray(train.targets), dtype=torch.int64),
        test_images=unit(torch.as_tensor(np.asarray(test.data))),
        test_labels=torch.as_tensor(np.asarray(test.targets), dtype=torch.int64),
        classes=tuple(str(c) for c in train.classes),
        pixel_scale="value / 255",
        license=TORCHVISION[source][1],
    )


def loader(source: str) -> Callable[[DataParams, Path], RawDataset]:
    return lambda p, root: _torchvision(source, p, root)
