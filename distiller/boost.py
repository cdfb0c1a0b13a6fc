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

import torch

from distiller import ratbptt
from distiller._runtime import SILENT, Reporter
from distiller.checkpoint import Store
from distiller.data import Prepared
from distiller.params import Params, effective_budgets
from distiller.ratbptt import RatCurves
from distiller.synthetic import SyntheticSet


@dataclass(frozen=True)
class BoostResult:
    boosted: SyntheticSet  # ipc = the largest budget; budgets = the nested budgets
    stages: list[SyntheticSet]  # the set after each stage (stages[k] has budgets[k] images per class)
    direct: dict[int, SyntheticSet]  # budget -> set distilled directly at that budget (only what was asked for)
    curves: dict[str, RatCurves]
    seconds: dict[str, float]  # wall time of each run, by the same names as `curves`


def boost(
    data: Prepared,
    p: Params,
    device: torch.device,
    *,
    references: bool,
    progress: Reporter = SILENT,
    store: Store | None = None,
) -> BoostResult:
    """Boost through `effective_budgets(p.distill)`; with `references`, also distill directly at every budget.

    With `store`, each finished run is checkpointed whole and each running one every `store.every` steps, so a rerun
    after a kill skips the finished runs and resumes the interrupted one."""
    budgets = effective_budgets(p.distill)
    r = p.ratbptt
    stage_iterations = p.boost.stage_iterations or r.iterations

    seconds: dict[str, float] = {}

    def run(
        name: str, ipc: int, key: str, iterations: int, start: SyntheticSet | None = None
    ) -> tuple[SyntheticSet, RatCurves]:
        done = store.load(f"done-{name}") if store is not None else None
        if done is not None:
            seconds[name] = done.state["seconds"]
            soft = done.tensors.get("soft_labels")
            syn = SyntheticSet(done.tensors["images"], done.tensors["labels"], None, ipc, soft)
            return syn, RatCurves(*done.state["curves"])
        t0 = time.perf_counter()
        out = ratbptt.distill(
            data,
            r,
            p.model,
            p.augment,
            p.seed,
            ipc,
            device,
            iterations=iterations,
            key=key,
            start=start,
            beta=p.boost.beta,
            beta_scales=p.boost.beta_scales,
            progress=progress,
            guard=p.guard,
            store=store,
        )
        seconds[name] = round(time.perf_counter() - t0, 2)
        if store is not None:
            syn, curves = out
            tensors = {"images": syn.images, "labels": syn.labels}
            if syn.soft_labels is not None:
                tensors["soft_labels"] = syn.soft_labels
            store.save(f"done-{name}", tensors, {"seconds": seconds[name], "curves": curves.columns()})
            store.path(key).unlink(missing_ok=True)
        return out

    first, first_curves = run(f"stage-{budgets[0]}", budgets[0], f"direct-{budgets[0]}", r.iterations)
    stages, curves = [first], {f"stage-{budgets[0]}": first_curves}
    for b in budgets[1:]:
        stage, curves[f"stage-{b}"] = run(f"stage-{b}", b, f"boost-{b}", stage_iterations, start=stages[-1])
        stages.append(stage)
    direct = {budgets[0]: first}
    if references:
        for b in budgets[1:]:
            direct[b], curves[f"direct-{b}"] = run(
                f"direct-{b}", b, f"direct-{b}", p.boost.reference_iterations or r.iterations
            )
    boosted = dataclasses.replace(stages[-1], budgets=budgets)
    return BoostResult(boosted=boosted, stages=stages, direct=direct, curves=curves, seconds=seconds)
