"""Checkpoints of long stages: their full state, written atomically, outside the stage's declared outputs.

A checkpoint is one safetensors file: tensors (synthetic images, learned lr or labels, optimiser moments, generator
states) plus JSON metadata (iteration, curves, counters) and a fingerprint of everything the run depends on (resolved
params and input hashes). A checkpoint with another fingerprint is stale and ignored; a damaged one is refused by name.
Writes go to a temporary file that is fsynced and renamed over the previous checkpoint, so a kill at any moment leaves
either the old checkpoint or the new one, never half of one. Restoring every piece of state makes a resumed run
bitwise equal to an uninterrupted one on the CPU.

Checkpoints live in `.checkpoints/<stage>/` (git- and DVC-ignored, never a declared output) and are removed once the
stage's outputs are complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distiller._runtime import DistillerError, load_safetensors, save_safetensors

FORMAT = "distiller.checkpoint"
FORMAT_VERSION = "1"


def fingerprint(*parts: object) -> str:
    """What a run depends on, as one hash: a checkpoint is resumed only when it matches."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Saved:
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


@dataclass(frozen=True)
class Store:
    """The checkpoints of one stage run: one file per named unit of work (an expert, a distillation run)."""

    directory: Path
    key: str  # fingerprint of the run
    every: int  # iterations between checkpoints; 0 turns checkpointing off
    resumed: dict[str, int] = field(default_factory=dict)  # name -> iteration a run resumed after (for reporting)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def due(self, iteration: int) -> bool:
        return self.every > 0 and iteration % self.every == 0

    def load(self, name: str) -> Saved | None:
        path = self.path(name)
        if self.every <= 0 or not path.is_file():
            return None
        tensors, meta = load_safetensors(path, FORMAT, FORMAT_VERSION, "checkpoint", "delete it to start over")
        if meta.get("fingerprint") != self.key:
            return None  # made for other params or inputs: start over (and overwrite it)
        try:
            state = json.loads(meta["state"])
        except (KeyError, json.JSONDecodeError):
            raise DistillerError(f"{path}: checkpoint metadata is damaged; delete it to start over") from None
        self.resumed[name] = int(state.get("iteration", 0))
        return Saved(tensors, state)

    def save(self, name: str, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        if self.every <= 0:
            return
        save_safetensors(
            self.path(name),
            tensors,
            FORMAT,
            FORMAT_VERSION,
            {"fingerprint": self.key, "state": json.dumps(state)},
            before_rename=_pause_for_tests,
        )

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _pause_for_tests() -> None:
    """The reliability tests kill a run while a checkpoint is half-way (written, not yet renamed); this makes the
    window wide enough to hit. Unset, it costs nothing."""
    delay = os.environ.get("DISTILLER_TEST_CHECKPOINT_PAUSE")
    if delay:
        time.sleep(float(delay))


# ---------------------------------------------------------------------------------------------------------------------
# pieces of state as tensors and JSON


def generator_states(gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {f"gen/{name}": g.get_state() for name, g in gens.items()}


def restore_generators(gens: dict[str, torch.Generator], tensors: dict[str, torch.Tensor]) -> None:
    for name, g in gens.items():
        g.set_state(tensors[f"gen/{name}"])


def optimizer_state(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimiser's state_dict split into tensors (moments, step counts) and JSON (param groups)."""
    sd = opt.state_dict()
    tensors = {
        f"{prefix}/{index}/{key}": value
        for index, entries in sd["state"].items()
        for key, value in entries.items()
        if isinstance(value, torch.Tensor)
    }
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(
    prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], state: dict[str, Any]
) -> None:
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "/"):
            index, name = key[len(prefix) + 1 :].split("/", 1)
            entries.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": entries, "param_groups": state["param_groups"]})
