"""Cross-cutting plumbing: the user-facing error type, atomic file writes, seeded generators, devices.

Library code never touches the global RNGs: every random draw goes through a `torch.Generator` made by
`generator(seed, *keys)`, whose stream depends only on the seed and the names of the consumer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch


class DistillerError(Exception):
    """A problem the user can fix (bad params, missing or broken input). The CLI prints it as one line, exit 2."""


# ---------------------------------------------------------------------------------------------------------------------
# randomness


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends on `seed` and the names of the consumer (e.g. "expert", 3)."""
    text = json.dumps([seed, *[str(k) for k in keys]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on `device` seeded from `seed` and `keys`, independent of every other stream."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


# ---------------------------------------------------------------------------------------------------------------------
# provenance


def git(root: Path | str, *args: str) -> str | None:
    """stdout of `git <args>` run in `root`, or None outside a git checkout or without git."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(root: Path | str = ".") -> str | None:
    """The HEAD commit of the checkout holding `root`."""
    return (git(root, "rev-parse", "HEAD") or "").strip() or None


# ---------------------------------------------------------------------------------------------------------------------
# devices


def configure_torch() -> None:
    """Process-wide numeric settings, applied once at the edge (CLI, benchmarks, tests).

    Flush denormals to zero: differentiable Adam squares gradients that are numerically zero (a conv bias in front of
    instance norm gets ~1e-20), and float32 arithmetic on the resulting denormals is about 10x slower on x86 CPUs.
    """
    torch.set_flush_denormal(True)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillerError(f"device '{name}' was requested but CUDA is not available (use device: auto or cpu)")
    return device


# ---------------------------------------------------------------------------------------------------------------------
# atomic writes: a reader sees the old file or the complete new one, never a half-written one


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed run of this stage
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks (MD5 only as a checksum, e.g. torchvision's archive sums)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.new(algorithm, usedforsecurity=False)).hexdigest()


def first_line(e: BaseException) -> str:
    """An exception's first message line (its type name when the message is empty): errors are printed as one line."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def sha256_tensors(*tensors: torch.Tensor) -> str:
    """Content hash of tensors (dtype, shape and bytes), independent of file layout."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# progress: library loops report through a `Reporter`; the CLI plugs in a Rich progress bar


class Reporter(Protocol):
    def task(self, description: str, total: int) -> Callable[[int], None]:
        """Start a task of `total` units; the returned function advances it by n units."""
        ...


class NullReporter:
    def task(self, description: str, total: int) -> Callable[[int], None]:
        def advance(n: int = 1) -> None:
            pass

        return advance


SILENT = NullReporter()


# ---------------------------------------------------------------------------------------------------------------------
# safetensors files: tensors plus string metadata carrying a format name and version


def save_safetensors(
    path: Path | str,
    tensors: dict[str, torch.Tensor],
    fmt: str,
    version: str,
    metadata: dict[str, str] | None = None,
    before_rename: Callable[[], None] | None = None,
) -> None:
    from safetensors.torch import save_file

    meta = {"format": fmt, "format_version": version, **(metadata or {})}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        if before_rename is not None:
            before_rename()


def load_safetensors(
    path: Path | str, fmt: str, version: str, what: str, hint: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by `save_safetensors`, refusing a missing, unreadable or foreign one by name."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DistillerError(f"{what} not found: {path}{f' ({hint})' if hint else ''}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DistillerError(f"{path}: cannot read {what} ({first_line(e)})") from None
    if meta.get("format") != fmt:
        raise DistillerError(f"{path}: not a {what} file (format '{meta.get('format')}', expected '{fmt}')")
    if meta.get("format_version") != version:
        raise DistillerError(
            f"{path}: {what} format version {meta.get('format_version')} is not {version}; regenerate it"
        )
    return tensors, meta
