"""Boost-DD: one synthetic set whose nested prefixes are each good for their budget (Feng et al., ICLR 2024).

Distill the first block (the smallest budget b_1) with RaT-BPTT; then, for each next budget b_k, add b_k - b_{k-1}
fresh images per class and distill again, with the earlier blocks kept in the set but updated `beta` times as much
(beta = 0 freezes them). The first b_k images of every class are then the budget-b_k set.

The references of the evaluation come from the same code: `direct[b]` distills b images per class from scratch
(`direct[b_1]` is the first boosting stage itself: same streams, same set), and the "naive subset" is a prefix of
`direct[b_max]`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from distiller import ratbptt
from distiller.params import BoostParams, RatBPTTParams
from distiller.ratbptt import Boosting
from distiller.run import Context, Curves
from distiller.synthetic import SyntheticSet


@dataclass(frozen=True)
class BoostResult:
    boosted: SyntheticSet  # ipc = the largest budget; budgets = the nested budgets
    stages: list[SyntheticSet]  # the set after each stage (stages[k] has budgets[k] images per class)
    direct: dict[int, SyntheticSet]  # budget -> set distilled directly at that budget (only what was asked for)
    curves: dict[str, Curves]  # by run: stage-<b> and direct-<b>
    seconds: dict[str, float]  # wall time of each run, by the same names as `curves`


def boost(ctx: Context, r: RatBPTTParams, b: BoostParams, budgets: tuple[int, ...], *, references: bool) -> BoostResult:
    """Boost through `budgets`; with `references`, also distill directly at every budget above the first.

    With `ctx.store`, each finished run is kept whole and each running one checkpointed every `store.every` steps,
    so a rerun after a kill skips the finished runs and resumes the interrupted one."""
    runs = Runs(ctx, r)
    stages = [runs.run(f"stage-{budgets[0]}", budgets[0], f"direct-{budgets[0]}", r.iterations)]
    for k in budgets[1:]:
        boosting = Boosting(stages[-1], b.beta, b.beta_scales)
        stages.append(runs.run(f"stage-{k}", k, f"boost-{k}", b.stage_iterations or r.iterations, boosting))
    direct = {budgets[0]: stages[0]}
    for k in budgets[1:] if references else ():
        direct[k] = runs.run(f"direct-{k}", k, f"direct-{k}", b.reference_iterations or r.iterations)
    boosted = dataclasses.replace(stages[-1], budgets=budgets)
    return BoostResult(boosted, stages, direct, runs.curves, runs.seconds)


class Runs:
    """RaT-BPTT runs by name, each resumed whole from the checkpoint store once it has finished."""

    def __init__(self, ctx: Context, r: RatBPTTParams) -> None:
        self.ctx, self.r = ctx, r
        self.curves: dict[str, Curves] = {}
        self.seconds: dict[str, float] = {}

    def run(self, name: str, ipc: int, key: str, iterations: int, boosting: Boosting | None = None) -> SyntheticSet:
        store = self.ctx.store
        done = store.finished(name) if store is not None else None
        if done is not None:
            self.seconds[name] = done.state["seconds"]
            self.curves[name] = Curves(ratbptt.CURVES, done.state["curves"])
            return SyntheticSet.from_tensors(done.tensors, None, ipc)
        t0 = time.perf_counter()
        syn, self.curves[name] = ratbptt.distill(
            self.ctx, self.r, ipc, iterations=iterations, key=key, boosting=boosting
        )
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        if store is not None:
            state = {"seconds": self.seconds[name], "curves": self.curves[name].columns}
            store.finish(name, syn.tensors(), state, running=key)
        return syn
