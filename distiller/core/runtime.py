"""Seeds, devices and progress: the plumbing every stage shares.

Library code never touches the global RNGs: every random draw goes through a `torch.Generator` made by
`generator(seed, *keys)`, whose stream depends only on the seed and the names of the consumer.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from distiller.core.errors import DistillerError

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
# devices


def configure_torch(deterministic: bool = False) -> None:
    """Process-wide settings, applied first by every stage's `run` (and by benchmarks and tests). The first two never
    change a result:

    - Flush denormals to zero: differentiable Adam squares gradients that are numerically zero (a conv bias in front
      of instance norm gets ~1e-20), and float32 arithmetic on the resulting denormals is about 10x slower on x86 CPUs.
    - Keep freed memory in the process: the training loops allocate and free the same activations (a few MiB each)
      hundreds of thousands of times, and glibc's default thresholds hand them back to the kernel and fault them in
      again. On this project's 2-core CPU that was 7-11 million page faults and up to 40 % of an evaluation's time
      in the kernel (docs/benchmarks.md); mallopt's mmap and trim thresholds keep them instead.

    The third is the param `deterministic` (`deterministic_kernels`), set either way so that one process running
    several stages (the tests) carries no mode over from one to the next.
    """
    torch.set_flush_denormal(True)
    _keep_freed_memory()
    deterministic_kernels(deterministic)


CUBLAS_WORKSPACE = ":4096:8"  # one of the two settings under which cuBLAS is deterministic (CUDA 10.2 and later)


def deterministic_kernels(on: bool) -> None:
    """With `on`, ask torch for deterministic kernels only: `torch.use_deterministic_algorithms` (an op without a
    deterministic kernel raises instead of running), cudnn's deterministic convolutions and no benchmarking (which
    picks kernels by timing them), and the cuBLAS workspace `CUBLAS_WORKSPACE_CONFIG=:4096:8`, read when CUDA first
    starts in the process: so this runs before any CUDA work. On the CPU distiller's results are bitwise reproducible
    without it (tests/test_reliability.py); on a GPU they are only with it, and that has not been run yet
    (docs/scaling.md)."""
    if on and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (CUBLAS_WORKSPACE, ":16:8"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def _keep_freed_memory() -> None:
    """Raise glibc's mmap threshold to its 64-bit maximum (32 MiB) and its trim threshold to 256 MiB; a no-op where
    the C library has no mallopt (macOS, musl)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    mallopt(M_TRIM_THRESHOLD, 256 * 2**20)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)  # the params check it when loaded (params.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillerError(f"device '{name}' was requested but CUDA is not available (use device: auto or cpu)")
    return device


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """`datasets` without its progress bars and its log lines for the block: distiller reports progress itself and
    every failure as one line (its parquet reader logs an error before raising it)."""
    import datasets

    level, bars = datasets.logging.get_verbosity(), not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)  # above CRITICAL: nothing
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


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
