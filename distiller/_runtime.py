"""Seeds, devices and progress: the plumbing every stage shares.

Library code never touches the global RNGs: every random draw goes through a `torch.Generator` made by
`generator(seed, *keys)`, whose stream depends only on the seed and the names of the consumer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Protocol

import torch

from distiller.errors import DistillerError

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


def configure_torch() -> None:
    """Process-wide numeric settings, applied once at the edge (every stage, benchmarks, tests).

    Flush denormals to zero: differentiable Adam squares gradients that are numerically zero (a conv bias in front of
    instance norm gets ~1e-20), and float32 arithmetic on the resulting denormals is about 10x slower on x86 CPUs.
    """
    torch.set_flush_denormal(True)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DistillerError(f"device: '{name}' is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillerError(f"device '{name}' was requested but CUDA is not available (use device: auto or cpu)")
    return device


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
