"""Checkpoints of long stages: their full state, written atomically, outside the stage's declared outputs.

A checkpoint is one safetensors file: tensors (synthetic images, learned lr or labels, optimiser moments, generator
states) plus JSON metadata (iteration, curves, counters) and a fingerprint of everything the run depends on (resolved
params and input hashes). A checkpoint with another fingerprint is stale and ignored; a damaged one is refused by name.
Writes go to a temporary file that is fsynced and renamed over the previous checkpoint, so a kill at any moment leaves
either the old checkpoint or the new one, never half of one. Restoring every piece of state makes a resumed run
bitwise equal to an uninterrupted one on the CPU.

Two kinds of unit are checkpointed: a running loop (`Resumable`: everything it mutates, every `store.every` steps)
and a finished piece of work (`Store.finish`: an expert, a Boost-DD run), kept whole so a rerun skips it. Checkpoints
live in `.checkpoints/<stage>/` (git- and DVC-ignored, never a declared output) and are removed once the stage's
outputs are complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distiller.core.errors import DistillerError, first_line
from distiller.core.files import load_safetensors, save_safetensors

FORMAT = "distiller.checkpoint"
FORMAT_VERSION = "2"  # 2: one sealed metadata entry
LAYOUT = 2  # how a loop's state is laid out in the file; part of every fingerprint, so older layouts are stale


def _count_like(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _finite(obj: object) -> bool:
    """Whether every float in JSON data is finite."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    return all(_finite(v) for v in values)


def fingerprint(*parts: object) -> str:
    """What a run depends on, as one hash: a checkpoint is resumed only when it matches."""
    return hashlib.sha256(json.dumps([LAYOUT, *parts], sort_keys=True, default=str).encode()).hexdigest()


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
        state = meta.get("state")  # sealed with the tensors: an edited iteration or pixel is refused on load
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("iteration", 0), int)
            or state.get("iteration", 0) < 0
        ):
            raise DistillerError(f"{path}: not a distiller checkpoint (its state); delete it to start over")
        bad = next((k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if bad is not None:  # a run never checkpoints one (its guard rolls such steps back): resumed, it would fail
            raise DistillerError(f"{path}: {bad} holds NaN or infinite values; not resumed: delete it to start over")
        self.resumed[name] = state.get("iteration", 0)
        return Saved(tensors, state)

    def save(self, name: str, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        if self.every > 0:
            meta = {"fingerprint": self.key, "state": state}
            save_safetensors(self.path(name), tensors, FORMAT, FORMAT_VERSION, meta)

    def finished(self, name: str) -> Saved | None:
        """A finished unit of work saved by `finish`, or None."""
        return self.load(f"done-{name}")

    def finish(self, name: str, tensors: dict[str, torch.Tensor], state: dict[str, Any], running: str = "") -> None:
        """Keep a finished unit whole (and drop the checkpoint of the loop that made it, `running`)."""
        self.save(f"done-{name}", tensors, state)
        if running:
            self.path(running).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def summary(self) -> str:
        """'; resumed from checkpoints (...)' when a unit of this run was resumed, else ''."""
        runs = ", ".join(f"{name} after step {it}" if it else name for name, it in self.resumed.items())
        return f"; resumed from checkpoints ({runs})" if runs else ""


class Resumable:
    """The full state of one running loop, checkpointed under `name`: the tensors it updates in place (images, a
    learned lr or labels), its torch optimisers, its generators, and JSON state the loop hands over (iteration,
    curves, counters). Without a store it does nothing."""

    def __init__(
        self,
        store: Store | None,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        optimizers: Mapping[str, torch.optim.Optimizer],
        generators: Mapping[str, torch.Generator],
    ) -> None:
        self.store, self.name = store, name
        self.tensors, self.optimizers, self.generators = tensors, optimizers, generators

    def resume(self, last: int) -> dict[str, Any] | None:
        """Restore everything from a matching checkpoint of a loop of `last` iterations and return the loop's state,
        or None to start afresh. A checkpoint that does not fit the loop (shapes, iteration, curves) is refused."""
        saved = self.store.load(self.name) if self.store is not None else None
        if saved is None:
            return None
        assert self.store is not None
        try:
            self._restore(saved, last)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            path = self.store.path(self.name)
            raise DistillerError(f"{path}: the checkpoint does not fit this run ({first_line(e)}); delete it") from None
        return saved.state["loop"]

    def _restore(self, saved: Saved, last: int) -> None:
        iteration, loop = saved.state["iteration"], saved.state["loop"]
        curves = loop.get("curves", [])
        if not 0 < iteration < last or any(len(column) != iteration for column in curves):
            raise ValueError(f"iteration {iteration} of {last}")
        for key, value in loop.items():  # counters and running averages: None, or finite and not negative
            if key != "curves" and value is not None and not _count_like(value):
                raise ValueError(f"{key} is {value!r}")
        if not _finite(saved.state["param_groups"]):  # the optimisers' lr, momentum, ...
            raise ValueError("an optimiser's settings hold NaN or infinite values")
        with torch.no_grad():
            for key, t in self.tensors.items():
                if saved.tensors[key].shape != t.shape or saved.tensors[key].dtype != t.dtype:
                    raise ValueError(f"{key} is {tuple(saved.tensors[key].shape)}, not {tuple(t.shape)}")
                t.copy_(saved.tensors[key])
        for key, opt in self.optimizers.items():
            prefix = f"opt/{key}/"
            entries: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in saved.tensors.items():
                if k.startswith(prefix):
                    index, slot = k[len(prefix) :].split("/", 1)
                    entries.setdefault(int(index), {})[slot] = v
            params = [p for group in opt.param_groups for p in group["params"]]
            if any(v.shape != params[i].shape for i, slots in entries.items() for v in slots.values() if v.ndim):
                raise ValueError(f"optimiser state of {key} has other shapes")
            opt.load_state_dict({"state": entries, "param_groups": saved.state["param_groups"][key]})
        for key, g in self.generators.items():
            g.set_state(saved.tensors[f"gen/{key}"])

    def due(self, iteration: int, last: int) -> bool:
        return self.store is not None and self.store.due(iteration) and iteration < last

    def save(self, iteration: int, **loop: Any) -> None:
        """Checkpoint after `iteration`, with the loop's JSON state `loop` (what `resume` returns)."""
        assert self.store is not None
        tensors = {**self.tensors, **{f"gen/{k}": g.get_state() for k, g in self.generators.items()}}
        groups = {}
        for key, opt in self.optimizers.items():
            sd = opt.state_dict()
            for index, slots in sd["state"].items():
                tensors.update({f"opt/{key}/{index}/{s}": v for s, v in slots.items() if isinstance(v, torch.Tensor)})
            groups[key] = sd["param_groups"]
        self.store.save(self.name, tensors, {"iteration": iteration, "loop": loop, "param_groups": groups})
