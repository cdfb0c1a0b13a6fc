"""Files every stage writes: atomic replacement, content hashes, CSV tables and self-describing safetensors.

A reader sees the old file or the complete new one, never a half-written one: every write goes to a temporary file
(or directory) beside its target, is fsynced and then renamed over it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from distiller.core.errors import DistillerError, first_line


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # the process's, read once: outputs get the permissions it gives


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _seal_output(path: Path) -> None:
    """A finished temporary output (a file, or a folder and all in it) made durable and given the usual permissions
    (0644 and 0755 under umask 022; mkstemp, mkdtemp and safetensors make 0600 and 0700): outputs hold no secrets."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_symlink():
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~UMASK)
        if p.is_file():
            with open(p, "rb+") as f, naming(p):
                os.fsync(f.fileno())


WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})  # the output's fault


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """A write error that names no file (as `write` and `fsync` raise them) names `path`, the file being written."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno not in WRITE_ERRORS:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


def _under(name: object, tmp: Path) -> str | None:
    """`name` (an OSError's file) relative to the temporary `tmp` ('' for tmp itself, '/x' below it), or None."""
    text = str(name) if name is not None else ""
    return text[len(str(tmp)) :] if text == str(tmp) or text.startswith(f"{tmp}/") else None


@contextlib.contextmanager
def output_named(tmp: Path, path: Path) -> Iterator[None]:
    """A failed file operation names the output (`path`, or the file inside it), not the temporary it was writing;
    a write error names the destination of a copy (shutil names the source first), or the output if it names none."""
    try:
        with naming(tmp):
            yield
    except OSError as e:
        written = _under(e.filename2, tmp) if e.errno in WRITE_ERRORS else None
        rest = written if written is not None else _under(e.filename, tmp)
        if rest is None:
            raise
        raise OSError(e.errno, e.strerror, str(path) + rest) from None


def _remove(path: Path) -> None:
    """Whatever is at `path`: a folder's tree, or a file or symbolic link (never what a link points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def temporary(path: Path, directory: bool = False) -> Path:
    """A new temporary file (or folder) beside `path`, `.<name>.XXXX.tmp`; failing to make one names `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        return Path(name)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


@contextlib.contextmanager
def _staged(path: Path, directory: bool) -> Iterator[Path]:
    """A new temporary file (or folder) beside `path`, removed after the block unless it was renamed away."""
    tmp = temporary(path, directory)
    try:
        yield tmp
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    with _staged(path, directory=False) as tmp, output_named(tmp, path):
        yield tmp
        _seal_output(tmp)
        os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it replaces `path` whole (a file or a symbolic
    link in the way too, never what a link points to)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed run of this stage
        shutil.rmtree(stale, ignore_errors=True)
    with _staged(path, directory=True) as tmp, output_named(tmp, path):
        yield tmp
        _seal_output(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists() or path.is_symlink():
            _remove(old)
            os.replace(path, old)
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    _remove(old)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float as None: JSON has no such numbers (json.dumps writes invalid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path | str, obj: Any) -> None:
    """Valid JSON (a non-finite float is written as null), keys in the order given."""
    write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def json_seal(obj: Mapping[str, Any]) -> str:
    """sha256 of a mapping's canonical JSON, the `seal` key left out."""
    body = {k: v for k, v in obj.items() if k != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_sealed_json(path: Path | str, obj: Mapping[str, Any]) -> None:
    """`obj` as JSON with a `seal` (its hash) last, so that a stage reading it back can tell it was not edited."""
    clean = _finite(obj)
    write_json(path, {**clean, "seal": json_seal(clean)})


def read_sealed_json(path: Path | str, what: str, hint: str) -> dict[str, Any]:
    """A mapping written by `write_sealed_json`; missing, not JSON, not a mapping or edited: one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise DistillerError(f"{what} not found: {path} ({hint})")
    try:
        obj = json.loads(path.read_bytes())
    except (ValueError, RecursionError, OSError) as e:  # ValueError covers JSON and UTF-8 decoding errors
        raise DistillerError(f"{path}: {what} is not valid JSON ({first_line(e)}); {hint}") from None
    if not isinstance(obj, dict) or obj.get("seal") != json_seal(obj):
        raise DistillerError(f"{path}: {what} was edited or is not distiller's (its seal does not match); {hint}")
    del obj["seal"]
    return obj


def csv_text(rows: Sequence[Mapping[str, object]]) -> str:
    """A CSV table with the keys of the first row as its header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks (MD5 only as a checksum, e.g. torchvision's archive sums)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.new(algorithm, usedforsecurity=False)).hexdigest()


def sha256_tensors(*tensors: torch.Tensor) -> str:
    """Content hash of tensors (dtype, shape and bytes), independent of file layout."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# safetensors files: tensors plus one metadata entry of canonical JSON, sealed
#
# The safetensors library keeps metadata in a hash map, so several entries come out in a different order in every
# process and identical content gets new bytes (and new DVC hashes). One entry, `distiller`, holding sorted-key JSON
# makes a file a function of its content. The `seal` in it is the sha256 of that JSON (without the seal) and of every
# tensor, so no edit to a tensor or to the metadata (an lr, an iteration, a hash) goes unnoticed.

META_KEY = "distiller"


def _seal(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    h.update(sha256_tensors(*(tensors[k] for k in sorted(tensors))).encode())
    h.update(json.dumps(sorted(tensors)).encode())
    return h.hexdigest()


def save_safetensors(
    path: Path | str, tensors: dict[str, torch.Tensor], fmt: str, version: str, metadata: dict[str, Any] | None = None
) -> str:
    """Write `tensors` with `metadata` (JSON values) under a format name and version, sealed; returns the seal."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": fmt, "format_version": version, **(metadata or {})}
    meta["seal"] = _seal(plain, meta)
    with atomic_path(path) as tmp:
        try:
            save_file(plain, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        except SafetensorError as e:  # the writer's own error for a failed write: the OSError it stands for
            raise _os_error(e, tmp) from None
    return str(meta["seal"])


def _os_error(e: Exception, path: Path) -> OSError:
    """The OSError behind a safetensors writer's error ('... (os error 28)', older 'Os { code: 28'), naming path."""
    found = re.search(r"os error (\d+)|code: (\d+)", str(e))
    code = int(found.group(1) or found.group(2)) if found else errno.EIO
    return OSError(code, os.strerror(code) if found else f"cannot write ({first_line(e)})", str(path))


def load_safetensors(
    path: Path | str, fmt: str, version: str, what: str, hint: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by `save_safetensors`, refusing a missing, unreadable, foreign, edited or corrupted one by
    name; returns its tensors and metadata (its `seal` included)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DistillerError(f"{what} not found: {path}{f' ({hint})' if hint else ''}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DistillerError(f"{path}: cannot read {what} ({first_line(e)})") from None
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DistillerError(f"{path}: not a {what} file (format '{found}', expected '{fmt}')")
    if meta.get("format_version") != version:
        raise DistillerError(
            f"{path}: {what} format version {meta.get('format_version')} is not {version}; regenerate it"
        )
    if meta.get("seal") != _seal(tensors, {k: v for k, v in meta.items() if k != "seal"}):
        raise DistillerError(f"{path}: content hash mismatch ({what} corrupted or edited){f'; {hint}' if hint else ''}")
    return tensors, meta
