"""The original archives' formats, read straight from the verified archive files: nothing extracted, nothing else read.

- MNIST and Fashion-MNIST: gzipped IDX files. An IDX file is a 4-byte magic (two zero bytes, the element type 0x08 for
  unsigned bytes, the number of dimensions), one big-endian uint32 per dimension, then the elements in C order.
- CIFAR-10 and CIFAR-100: a tar.gz of Python pickles, each a dict with `data` (N, 3072) uint8 (the red, green and blue
  32x32 planes of each image) and `labels` (CIFAR-10) or `fine_labels` (CIFAR-100), plus a `meta` pickle with the
  class names. The pickles are read by an unpickler that builds only lists, dicts, strings, numbers and NumPy arrays:
  any other global (a function to call, a class to build) is refused, so even an archive whose checksum was forged
  cannot run code.

Every malformed file is one `DistillerError` line naming it.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from distiller.core.errors import DistillerError
from distiller.data.sources.raw import reason

UNPACK_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes with `ndim` dimensions."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except UNPACK_ERRORS as e:
        raise DistillerError(f"{path}: cannot unpack ({reason(e)}); replace it with the original archive") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DistillerError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise DistillerError(f"{path}: the IDX header says {shape}, but the file holds {len(raw) - header} bytes")
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=header).reshape(shape)  # writable, for torch


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain data and NumPy arrays only (how the CIFAR batches were written)."""

    def find_class(self, module: str, name: str) -> Any:
        core = getattr(np, "_core", None) or np.core  # numpy.core was renamed numpy._core in NumPy 2
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),  # bytes in protocol 2
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only arrays and plain data are read")
        return allowed[(module, name)]


def _member(tar: tarfile.TarFile, archive: Path, name: str) -> dict[str, Any]:
    """The pickled dict `name` inside the open archive."""
    try:
        f = tar.extractfile(name)
        if f is None:
            raise KeyError(name)
        entry = _ArraysOnly(io.BytesIO(f.read()), encoding="latin1").load()
    except KeyError:
        raise DistillerError(f"{archive}: has no {name}; replace it with the original archive") from None
    except (*UNPACK_ERRORS, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DistillerError(f"{archive}: cannot read {name} ({reason(e)})") from None
    if not isinstance(entry, dict):
        raise DistillerError(f"{archive}: {name} is not a CIFAR batch (a dict)")
    return entry


def _batch(entry: dict[str, Any], where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) int64 labels of one CIFAR batch."""
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DistillerError(f"{where}: `data` is not an (N, 3072) array of unsigned bytes")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        y = None
    if y is None or y.shape != (len(data),) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
        raise DistillerError(f"{where}: labels are not {len(data)} class indices below {num_classes}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def read_cifar(
    archive: Path, folder: str, train: list[str], test: list[str], meta: str, names_key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Train images and labels, test images and labels, and class names from a CIFAR archive, whose members are
    `folder`/<name> for the batch names in `train` and `test` and the meta pickle `meta`."""
    splits = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = _member(tar, archive, f"{folder}/{meta}").get(names_key)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
                raise DistillerError(f"{archive}: {folder}/{meta} has no list of class names under '{names_key}'")
            for members in (train, test):
                batches = [
                    _batch(_member(tar, archive, f"{folder}/{m}"), f"{archive}: {m}", len(names)) for m in members
                ]
                splits += [np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])]
    except UNPACK_ERRORS as e:
        raise DistillerError(f"{archive}: cannot unpack ({reason(e)}); replace it with the original archive") from None
    return splits[0], splits[1], splits[2], splits[3], tuple(names)
