"""Boost-DD: one synthetic set whose nested prefixes are each good for their budget (Feng et al., ICLR 2024).

Distill the first block (the smallest budget b_1) with RaT-BPTT; then, for each next budget b_k, add b_k - b_{k-1}
fresh images per class and distill again, with the earlier blocks kept in the set but updated `beta` times as much
(beta = 0 freezes them). The first b_k images of every class are then the budget-b_k set.

The references of the evaluation come from the same code: `direct[b]` distills b images per class from scratch
(`direct[b_1]` is the first boosting stage itself: same streams, same set), and the "naive subset" is a prefix of
`direct[b_max]`.

The references depend on nothing but their budget and the seed, so in a torchrun job (`distill.nproc`) rank 0 runs the
boosting chain while the other ranks share the references out and send them to rank 0: the same sets, sooner.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from distiller.core.distributed import SINGLE, World, objects_to_root
from distiller.core.params import BoostParams, RatBPTTParams
from distiller.methods import ratbptt
from distiller.methods.ratbptt import Boosting
from distiller.methods.run import Context, Curves
from distiller.methods.synthetic import SyntheticSet


@dataclass(frozen=True)
class BoostResult:
    boosted: SyntheticSet  # ipc = the largest budget; budgets = the nested budgets
    stages: list[SyntheticSet]  # the set after each stage (stages[k] has budgets[k] images per class)
    direct: dict[int, SyntheticSet]  # budget -> set distilled directly at that budget (only what was asked for)
    curves: dict[str, Curves]  # by run: stage-<b> and direct-<b>
    seconds: dict[str, float]  # wall time of each run, by the same names as `curves`


def boost(
    ctx: Context, r: RatBPTTParams, b: BoostParams, budgets: tuple[int, ...], *, references: bool, w: World = SINGLE
) -> BoostResult | None:
    """Boost through `budgets`; with `references`, also distill directly at every budget above the first.

    With `ctx.store`, each finished run is kept whole and each running one checkpointed every `store.every` steps,
    so a rerun after a kill skips the finished runs and resumes the interrupted one. In a torchrun job of more than
    one rank, rank 0 boosts and the others distill the references (`reference_share`); rank 0 returns the result,
    the others None."""
    runs = Runs(ctx, r)
    stages = []
    if w.root:
        stages.append(runs.run(f"stage-{budgets[0]}", budgets[0], f"direct-{budgets[0]}", r.iterations))
        for k in budgets[1:]:
            boosting = Boosting(stages[-1], b.beta, b.beta_scales)
            stages.append(runs.run(f"stage-{k}", k, f"boost-{k}", b.stage_iterations or r.iterations, boosting))
    for k in reference_share(w, budgets[1:] if references else ()):
        runs.run(f"direct-{k}", k, f"direct-{k}", b.reference_iterations or r.iterations)
    runs.gather(w)
    if not w.root:
        return None
    direct = {budgets[0]: stages[0], **{k: runs.sets[f"direct-{k}"] for k in budgets[1:] if references}}
    boosted = dataclasses.replace(stages[-1], budgets=budgets)
    names = [f"stage-{k}" for k in budgets] + [f"direct-{k}" for k in budgets[1:] if references]  # whatever ran where
    curves, seconds = {n: runs.curves[n] for n in names}, {n: runs.seconds[n] for n in names}
    return BoostResult(boosted, stages, direct, curves, seconds)


def reference_share(w: World, budgets: tuple[int, ...]) -> list[int]:
    """The budgets whose direct references this rank distils: all of them in a single process; otherwise none on
    rank 0 (it boosts) and every (size - 1)-th on the others."""
    if w.size == 1:
        return list(budgets)
    return [] if w.root else World(w.rank - 1, w.size - 1).share(budgets)


class Runs:
    """RaT-BPTT runs by name, each resumed whole from the checkpoint store once it has finished."""

    def __init__(self, ctx: Context, r: RatBPTTParams) -> None:
        self.ctx, self.r = ctx, r
        self.sets: dict[str, SyntheticSet] = {}
        self.curves: dict[str, Curves] = {}
        self.seconds: dict[str, float] = {}

    def run(self, name: str, ipc: int, key: str, iterations: int, boosting: Boosting | None = None) -> SyntheticSet:
        store = self.ctx.store
        done = store.finished(name) if store is not None else None
        if done is not None:
            self.seconds[name] = done.state["seconds"]
            self.curves[name] = Curves(ratbptt.CURVES, done.state["curves"])
            self.sets[name] = SyntheticSet.from_tensors(done.tensors, None, ipc)
            return self.sets[name]
        t0 = time.perf_counter()
        syn, self.curves[name] = ratbptt.distill(
            self.ctx, self.r, ipc, iterations=iterations, key=key, boosting=boosting
        )
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        if store is not None:
            state = {"seconds": self.seconds[name], "curves": self.curves[name].columns}
            store.finish(name, syn.tensors(), state, running=key)
        self.sets[name] = syn
        return syn

    def gather(self, w: World) -> None:
        """Rank 0 receives the other ranks' runs: their sets' tensors, curves and times, bitwise."""
        if w.size == 1:
            return
        sent = {} if w.root else self.sets  # rank 0 keeps its own
        mine = {n: (_cpu(s.tensors()), s.ipc, self.curves[n].columns, self.seconds[n]) for n, s in sent.items()}
        for theirs in objects_to_root(w, mine)[1:]:
            for n, (tensors, ipc, columns, seconds) in theirs.items():
                self.sets[n] = SyntheticSet.from_tensors(tensors, None, ipc)
                self.curves[n], self.seconds[n] = Curves(ratbptt.CURVES, columns), seconds


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.detach().cpu() for k, t in tensors.items()}
