"""A distilled set scored at its budgets beside its references, under one protocol and one set of network seeds.

For every budget b: the set's first b images per class (`distilled`, or `boosted` for a Boost-DD set), a random real
subset of the same size, and for boosted sets the set distilled directly at b (`direct`) and the first b per class of
the set distilled directly at the largest budget (`naive_subset`). Once: the full training set, and the largest
budget on every architecture of `evaluate.archs` (MTT's cross-architecture table). An MTT set is scored at its
largest budget only, unless `evaluate.prefixes` asks for its prefixes too (they were not distilled for their size).
A set that appears twice (the naive subset at the largest budget is the direct set) is trained once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from distiller.core.distributed import SINGLE, World, sum_to_all
from distiller.core.files import sha256_tensors
from distiller.core.params import Params
from distiller.core.runtime import SILENT, Reporter, generator
from distiller.data.prepared import Prepared
from distiller.methods.synthetic import SyntheticSet, real_subset
from distiller.nets import models
from distiller.scoring import ddranking
from distiller.scoring.evaluate import EvalResult, Protocol, protocol, protocol_for, score

CURVE_ORDER = ("distilled", "boosted", "direct", "naive_subset", "random_real")


@dataclass(frozen=True)
class Job:
    """The networks to train on one distinct set."""

    name: str
    set: SyntheticSet
    epochs: int | None
    runs: int
    q: Params
    plain: bool = False  # trained without the protocol's augmentation (DD-Ranking's ARS)


class Scorer:
    """Trains and tests networks on sets under one protocol, each distinct set once, timing each by name.

    In a torchrun job (`w.size` > 1) it first only plans: every call lists its set and returns a placeholder; then
    `run_planned` trains this rank's share of all the planned networks and shares every accuracy with every rank, and
    the calls of a second pass return the results."""

    def __init__(
        self, data: Prepared, p: Params, proto: Protocol, device: torch.device, progress: Reporter, w: World = SINGLE
    ) -> None:
        self.data, self.p, self.proto, self.device, self.progress, self.w = data, p, proto, device, progress, w
        self.seconds: dict[str, float] = {}
        self._done: dict[str, EvalResult] = {}  # content hash, epochs, runs, arch -> result
        self.planning, self.planned = w.size > 1, dict[str, Job]()

    def __call__(
        self,
        name: str,
        s: SyntheticSet,
        epochs: int | None = None,
        runs: int | None = None,
        q: Params | None = None,
        plain: bool = False,
    ) -> EvalResult:
        job = Job(name, s, epochs, runs or self.p.evaluate.num_eval, q or self.p, plain)
        key = sha256_tensors(s.images, s.targets) + f"/{epochs}/{runs}/{job.q.model.arch}/{plain}"
        if key not in self._done:
            if self.planning:
                self.planned.setdefault(key, job)
                return EvalResult((0.0,) * job.runs)
            self._done[key] = EvalResult(tuple(self._train(job, range(job.runs))))
        return self._done[key]

    def _train(self, job: Job, indices: Sequence[int]) -> tuple[float, ...]:
        t0 = time.perf_counter()
        s = job.set
        accs = score(
            s.images,
            s.targets,
            self.data,
            job.q,
            dataclasses.replace(self.proto, augment=None) if job.plain else self.proto,
            lr=self.proto.lr(s.lr),
            runs=job.runs,
            device=self.device,
            epochs=job.epochs,
            progress=self.progress,
            description=f"evaluate {job.name}",
            networks=indices,
        ).runs
        self.seconds[job.name] = round(self.seconds.get(job.name, 0.0) + time.perf_counter() - t0, 2)
        return accs

    def run_planned(self) -> None:
        """Train this rank's share of the planned networks (every size-th (set, network) pair), then give every rank
        all the accuracies."""
        units = [(key, i) for key, job in self.planned.items() for i in range(job.runs)]
        mine = self.w.share(range(len(units)))
        values = torch.zeros(len(units), dtype=torch.float64)
        for key, job in self.planned.items():
            share = [u for u in mine if units[u][0] == key]
            if share:
                values[share] = torch.tensor(self._train(job, [units[u][1] for u in share]), dtype=torch.float64)
        accs = sum_to_all(self.w, values).tolist()
        for key in self.planned:
            self._done[key] = EvalResult(tuple(v for (k, _), v in zip(units, accs, strict=True) if k == key))
        self.planning = False


def scorecard(
    syn: SyntheticSet,
    method: str,
    direct: dict[int, SyntheticSet],
    data: Prepared,
    p: Params,
    device: torch.device,
    progress: Reporter = SILENT,
    w: World = SINGLE,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The metrics of `syn` (made by `method`, with the directly distilled references `direct` by budget), and the
    seconds each distinct set took (on this rank, in a torchrun job: every rank returns the same metrics)."""
    proto = protocol_for(p, method)
    archs: dict[str, Params] = {
        a: dataclasses.replace(p, model=dataclasses.replace(p.model, arch=a)) for a in p.evaluate.archs
    }
    for q in archs.values():  # refuse an input size an architecture cannot take before training anything
        models.describe(q.model, data.image_shape, data.num_classes)
    # random real subsets are nested too: the first k per class of one draw at the largest budget
    real_x, real_y = real_subset(data, syn.ipc, generator(p.seed, "random-real"))
    real = SyntheticSet(real_x, real_y, None, syn.ipc)
    teacher = _teacher_labelled(real, syn, data, p, proto, device, w) if p.evaluate.ddranking else None
    scored = Scorer(data, p, proto, device, progress, w)
    if scored.planning:  # a torchrun job: list every set, train this rank's share, share the results
        _metrics(syn, method, direct, data, p, proto, archs, scored, real, teacher)
        scored.run_planned()
    metrics = _metrics(syn, method, direct, data, p, proto, archs, scored, real, teacher)
    scored.seconds["total"] = round(sum(scored.seconds.values()), 2)
    return metrics, scored.seconds


def _metrics(
    syn: SyntheticSet,
    method: str,
    direct: dict[int, SyntheticSet],
    data: Prepared,
    p: Params,
    proto: Protocol,
    archs: dict[str, Params],
    scored: Scorer,
    real: SyntheticSet,
    teacher: SyntheticSet | None,
) -> dict[str, Any]:
    boosted = method == "ratbptt" and len(syn.budgets) > 1
    budgets = (syn.budgets or (syn.ipc,)) if boosted or p.evaluate.prefixes else (syn.ipc,)
    main = "boosted" if boosted else "distilled"
    per_budget: dict[str, dict[str, dict[str, Any]]] = {}
    for b in budgets:
        row = {main: scored(f"distilled ipc {b}", syn.prefix(b))}
        if b in direct:
            row["direct"] = scored(f"direct ipc {b}", direct[b])
        if budgets[-1] in direct:
            row["naive_subset"] = scored(f"naive subset ipc {b}", direct[budgets[-1]].prefix(b))
        row["random_real"] = scored(f"random real ipc {b}", real.prefix(b))
        per_budget[str(b)] = {k: v.as_dict() for k, v in row.items()}
    top = per_budget[str(syn.ipc)]
    baselines: dict[str, object] = {"random_real": top["random_real"]}
    e = p.evaluate
    if e.full_data_runs > 0:
        full = SyntheticSet(data.train_images, data.train_labels, None, 1)
        baselines["full_data"] = scored("full data", full, e.full_data_epochs or None, e.full_data_runs).as_dict()
    # the distillation architecture's entry is the row above (same set, protocol and seeds): trained once
    on = archs or {p.model.arch: p}
    architectures = {a: scored(f"{a} ipc {syn.ipc}", syn.prefix(syn.ipc), q=q).as_dict() for a, q in on.items()}
    fair = {"ddranking": _fair(syn, teacher or real, data, p, scored)} if p.evaluate.ddranking else {}
    return {
        "dataset": data.source,
        "method": method,
        "ipc": syn.ipc,
        "lr": syn.lr,
        "accuracy": top[main],
        "baselines": baselines,
        "budgets": per_budget,
        "architectures": architectures,
        "protocol": protocol(p, data, proto),
        **fair,
    }


def _teacher_labelled(
    real: SyntheticSet, syn: SyntheticSet, data: Prepared, p: Params, proto: Protocol, device: torch.device, w: World
) -> SyntheticSet | None:
    """DD-Ranking's random subset for a set with soft labels: the random real images on a teacher's soft labels
    (`ddranking.teacher_labels`); None for a set with hard labels. In a torchrun job rank 0 trains the teacher and
    every rank gets its labels (so all plan the same sets)."""
    if syn.soft_labels is None:
        return None
    shape = (len(real.labels), data.num_classes)
    mine = ddranking.teacher_labels(real.images, data, p, proto, device).cpu() if w.root else torch.zeros(shape)
    labels = sum_to_all(w, mine.flatten()).view(shape).to(torch.float32)
    return dataclasses.replace(real, soft_labels=labels.to(real.images.device))


def _fair(syn: SyntheticSet, real: SyntheticSet, data: Prepared, p: Params, scored: Scorer) -> dict[str, object]:
    """DD-Ranking's scores of the largest budget (`distiller.scoring.ddranking`): besides the networks scored already,
    the set on its hard labels (the same networks when it has no soft labels) and the set and the random subset trained
    without augmentation. `real` is the random subset as DD-Ranking labels it: by a teacher for a soft-label set."""
    top, rnd = syn.prefix(syn.ipc), real.prefix(syn.ipc)
    e = p.evaluate
    tag = ", teacher labels" if rnd.soft_labels is not None else ""
    full = scored(
        "full data",
        SyntheticSet(data.train_images, data.train_labels, None, 1),
        e.full_data_epochs or None,
        e.full_data_runs,
    )
    scores = ddranking.scores(
        full.runs,
        scored(f"hard labels ipc {syn.ipc}", dataclasses.replace(top, soft_labels=None)).runs,
        scored(f"distilled ipc {syn.ipc}", top).runs,
        scored(f"random real ipc {syn.ipc}{tag}", rnd).runs,
        scored(f"distilled ipc {syn.ipc}, no augmentation", top, plain=True).runs,
        scored(f"random real ipc {syn.ipc}{tag}, no augmentation", rnd, plain=True).runs,
    )
    teacher = {"random_labels": "teacher", "temperature": ddranking.TEMPERATURE} if tag else {"random_labels": "hard"}
    return {**scores, **teacher}


def budget_table(metrics: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The curves present (in a fixed order) and one row of mean accuracies per budget (budgets.csv)."""
    per_budget = metrics["budgets"]
    curves = [c for c in CURVE_ORDER if any(c in row for row in per_budget.values())]
    table = [{"budget": int(b), **{c: row[c]["mean"] for c in curves if c in row}} for b, row in per_budget.items()]
    return curves, table
