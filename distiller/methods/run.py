"""What every distillation run shares, so that each method's driver holds only its algorithm.

- `Context`: the data, the network to distill on, the DSA parameters, the seed, the device, the guard's limits, the
  checkpoint store and the progress reporter; it hands out named generators, fresh networks and resumable state.
- `Curves`: one recorder of per-step values (curves.csv, the plots, checkpoints).
- `Guard`: counts bad steps in a row (skipped or rolled back) and stops the run, naming the param to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distiller.core.checkpoint import Resumable, Store
from distiller.core.errors import DistillerError
from distiller.core.params import AugmentParams, GuardParams, ModelParams
from distiller.core.runtime import SILENT, Reporter, generator
from distiller.data.prepared import Prepared
from distiller.nets import models


@dataclass(frozen=True)
class Context:
    data: Prepared  # on `device`
    model: ModelParams
    augment: AugmentParams  # DSA on the synthetic batches (families `none`: no augmentation)
    seed: int
    device: torch.device
    guard: GuardParams = field(default_factory=GuardParams)
    store: Store | None = None
    progress: Reporter = SILENT

    def generator(self, *keys: object, on_device: bool = False) -> torch.Generator:
        """The stream named `keys` (on the CPU, or on the run's device for draws made there)."""
        return generator(self.seed, *keys, device=self.device if on_device else "cpu")

    def network(self, gen: torch.Generator) -> nn.Module:
        """A fresh network of the distillation architecture, initialised from `gen`."""
        return models.build_model(self.model, self.data.image_shape, self.data.num_classes, gen, self.device)

    def resumable(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        optimizers: Mapping[str, torch.optim.Optimizer],
        generators: Mapping[str, torch.Generator],
    ) -> Resumable:
        return Resumable(self.store, name, tensors, optimizers, generators)


class Curves:
    """Per-step records, one list per column (a guarded step has `skipped` 1)."""

    def __init__(self, names: tuple[str, ...], columns: list[list[Any]] | None = None) -> None:
        self.names = names
        self.columns = columns if columns is not None else [[] for _ in names]

    def add(self, **row: Any) -> None:
        assert tuple(row) == self.names, f"curves take {self.names}, got {tuple(row)}"
        for column, value in zip(self.columns, row.values(), strict=True):
            column.append(value)

    def __getitem__(self, name: str) -> list[Any]:
        return self.columns[self.names.index(name)]

    def __len__(self) -> int:
        return len(self.columns[0])

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, values, strict=True)) for values in zip(*self.columns, strict=True)]


class Guard:
    """Bad steps in a row: `max_bad_steps` of them stop `what` with the problem of the last one."""

    def __init__(self, p: GuardParams, what: str) -> None:
        self.p, self.what, self.bad, self.problem = p, what, 0, ""

    def check(self, problem: str | None, where: str) -> None:
        self.bad = self.bad + 1 if problem else 0
        self.problem = problem or self.problem
        if self.bad >= self.p.max_bad_steps:
            raise DistillerError(f"{self.what} stopped at {where}: {self.bad} bad steps in a row; {problem}")

    def finish(self, skipped: list[int]) -> None:
        """A run none of whose steps counted (a run shorter than max_bad_steps) learned nothing: an error too."""
        if skipped and all(skipped):
            why = self.problem or "every step was bad (see curves.csv)"
            raise DistillerError(f"{self.what}: all {len(skipped)} steps were skipped or rolled back; {why}")


def finite(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)
