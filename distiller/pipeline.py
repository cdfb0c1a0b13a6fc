"""The pipeline stages: each reads its inputs, calls the library and writes its outputs atomically.

download -> expert-buffer -> distill -> evaluate. Each stage is one `distiller` command and one `dvc.yaml` stage;
nothing here parses arguments or prints (the CLI does), and nothing is written until the work is done.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distiller import __version__, boost, experts, models, mtt, package, plots, sources, synthetic
from distiller import checkpoint as ckpt
from distiller._runtime import (
    SILENT,
    DistillerError,
    Reporter,
    atomic_dir,
    generator,
    git_commit,
    resolve_device,
    sha256_tensors,
    write_json,
    write_text,
)
from distiller.data import Prepared, load_prepared, prepare, save_prepared
from distiller.evaluate import EvalResult, protocol, protocol_for, score
from distiller.params import Params, effective_budgets, to_dict
from distiller.paths import Layout
from distiller.train import epoch_ticks, networks_at_once


def provenance(p: Params, **extra: object) -> dict[str, object]:
    """Resolved params, package version and git commit, embedded in every artifact."""
    return {"distiller_version": __version__, "git_commit": git_commit(), "params": to_dict(p), **extra}


# ---------------------------------------------------------------------------------------------------------------------


def download(p: Params, layout: Layout, archives: Path | None = None) -> Prepared:
    """Materialise the source dataset as a prepared tensor file. `archives` (`distiller download --from DIR`) is a
    folder of the source's original archives, verified and copied into `data.root` first."""
    if archives is not None:
        sources.import_archives(p.data.source, archives, sources.data_root(p.data, layout.root))
    data = prepare(p.data, layout.root)
    save_prepared(data, layout.prepared)
    return data


def expert_buffer(p: Params, layout: Layout, progress: Reporter = SILENT) -> list[float]:
    """Train `expert.num_experts` experts; returns their final test accuracies.

    RaT-BPTT needs no experts: the stage then writes an empty buffer whose manifest says so, in no time."""
    _require_convnet(p)
    device = resolve_device(p.device)
    data = load_prepared(layout.prepared).to(device)
    info = experts.manifest(data, p.model, p.expert, p.augment, p.seed)
    if p.distill.method != "mtt":
        with atomic_dir(layout.experts_dir) as out:
            experts.write_manifest(out, {**info, "skipped": f"distill.method is {p.distill.method}"}, [])
        return []
    n = p.expert.num_experts
    advance = progress.task("expert buffer", n * p.expert.epochs)
    # each expert depends only on its index (not on which experts train beside it), so finished experts are
    # checkpointed whole after their group and a rerun trains only the missing ones
    key = ckpt.fingerprint(info, dataclasses.replace(p.expert, checkpoint_every=0, parallel=0), str(device))
    store = ckpt.Store(layout.checkpoints("expert-buffer"), key, p.expert.checkpoint_every)
    at_once = networks_at_once(p.expert.parallel, n)
    accuracies = []
    with atomic_dir(layout.experts_dir) as out:
        for first in range(0, n, at_once):
            group = range(first, min(first + at_once, n))
            results: dict[int, tuple[experts.Trajectory, float]] = {}
            for i in group:
                saved = store.load(f"expert_{i:03d}")
                if saved is not None:
                    results[i] = experts.trajectory_from_tensors(saved.tensors), saved.state["accuracy"]
                    advance(p.expert.epochs)
            missing = [i for i in group if i not in results]
            if missing:
                tick = epoch_ticks(advance, len(missing))
                fresh = experts.train_experts(data, p.model, p.expert, p.augment, p.seed, missing, device, tick)
                for i, (trajectory, acc) in zip(missing, fresh, strict=True):
                    results[i] = trajectory, acc
                    if store.due(i + 1):
                        store.save(f"expert_{i:03d}", experts.trajectory_tensors(trajectory), {"accuracy": acc})
            for i in group:
                trajectory, acc = results[i]
                experts.save_trajectory(trajectory, out / f"expert_{i:03d}.safetensors")
                accuracies.append(acc)
        experts.write_manifest(out, info, accuracies)
    store.clear()
    return accuracies


def _require_convnet(p: Params) -> None:
    """Experts and distillation run on the ConvNet (the card's training snippet rebuilds it); the zoo evaluates."""
    if p.model.arch != "convnet":
        raise DistillerError(
            f"model.arch is {p.model.arch}: experts and distillation use the convnet; list other architectures in "
            "evaluate.archs to score the distilled set on them"
        )


def distill_store(p: Params, layout: Layout, *inputs: object) -> ckpt.Store:
    """The checkpoints of a distill run: resumed only for the same params (the checkpoint interval aside) and inputs."""
    relevant = {k: v for k, v in to_dict(p).items() if k not in ("evaluate", "package")}
    relevant["distill"] = {**relevant["distill"], "checkpoint_every": None}
    relevant["expert"] = {**relevant["expert"], "checkpoint_every": None, "parallel": None}
    return ckpt.Store(layout.checkpoints("distill"), ckpt.fingerprint(relevant, *inputs), p.distill.checkpoint_every)


def distill(p: Params, layout: Layout, progress: Reporter = SILENT) -> str:
    """Distill with `distill.method`; writes the synthetic set, curves, image grid and metrics. Returns a summary."""
    _require_convnet(p)
    if p.distill.method == "ratbptt":
        return _distill_ratbptt(p, layout, progress)
    return _distill_mtt(p, layout, progress)


def _distill_mtt(p: Params, layout: Layout, progress: Reporter) -> str:
    device = resolve_device(p.device)
    data = load_prepared(layout.prepared).to(device)
    buffer = experts.load_buffer(layout.experts_dir, data, p.model, p.mtt.max_start_epoch - 1 + p.mtt.expert_epochs)
    store = distill_store(p, layout, data.content_hash, buffer.manifest, str(device))
    start = time.perf_counter()
    syn, curves = mtt.distill(data, buffer, p, device, progress, store=store)
    # MTT distils one set at distill.ipc; its prefixes are scored and packaged at every budget (not boosted)
    syn = dataclasses.replace(syn, budgets=effective_budgets(p.distill))
    seconds = time.perf_counter() - start
    prov = provenance(
        p,
        method="mtt",
        dataset=data.source,
        dataset_hash=data.content_hash,
        experts=buffer.manifest.get("files"),
        seconds=round(seconds, 2),
    )
    with atomic_dir(layout.distill_dir) as out:
        synthetic.save(syn, out / layout.synthetic.name, prov)
        write_text(out / layout.curves.name, _csv(curves.rows()))
        synthetic.grid_png(syn.images, syn.ipc, data, out / layout.grid.name)
        plots.curves_png(
            out / layout.curves_png.name,
            curves.iteration,
            {"MTT loss": curves.loss, "syn_lr": curves.syn_lr},
            f"MTT on {data.source}, {syn.ipc} image(s) per class",
        )
    store.clear()
    write_json(
        layout.distill_metrics,
        {
            "method": "mtt",
            "ipc": syn.ipc,
            "iterations": p.mtt.iterations,
            "final_loss": curves.loss[-1],
            "syn_lr": syn.lr,
            "seconds": round(seconds, 2),
        },
    )
    return (
        f"distilled {len(syn.labels)} images ({syn.ipc} per class) with MTT: final loss {curves.loss[-1]:.4f}, "
        f"learned lr {syn.lr:.5g}{_resumed(store)}{_skipped(sum(curves.skipped))}"
    )


def _distill_ratbptt(p: Params, layout: Layout, progress: Reporter) -> str:
    device = resolve_device(p.device)
    data = load_prepared(layout.prepared).to(device)
    budgets = effective_budgets(p.distill)
    store = distill_store(p, layout, data.content_hash, str(device))
    start = time.perf_counter()
    refs = p.boost.references and len(budgets) > 1
    result = boost.boost(data, p, device, references=refs, progress=progress, store=store)
    seconds = time.perf_counter() - start
    prov = provenance(
        p, method="ratbptt", dataset=data.source, dataset_hash=data.content_hash, seconds=round(seconds, 2)
    )
    rows = [  # one table for every run, `iteration` counting on across them (dvc plots' x axis)
        {
            "iteration": n,
            "run": run,
            "run_iteration": r["iteration"],
            "loss": r["meta_loss"],
            "grad_norm": r["grad_norm"],
            "warmup_steps": r["warmup_steps"],
            "skipped": r["skipped"],
        }
        for n, (run, r) in enumerate(((run, r) for run, c in result.curves.items() for r in c.rows()), start=1)
    ]
    syn = result.boosted
    with atomic_dir(layout.distill_dir) as out:
        synthetic.save(syn, out / layout.synthetic.name, prov)
        for b, ref in result.direct.items() if len(budgets) > 1 else ():
            path = out / layout.reference(b).relative_to(layout.distill_dir)
            path.parent.mkdir(exist_ok=True)
            synthetic.save(ref, path, {**prov, "reference": f"distilled directly at ipc {b}, no boosting"})
        write_text(out / layout.curves.name, _csv(rows))
        synthetic.grid_png(syn.images, syn.ipc, data, out / layout.grid.name)
        plots.runs_png(
            out / layout.curves_png.name,
            {run: (c.iteration, c.meta_loss) for run, c in result.curves.items()},
            "meta-loss",
            f"RaT-BPTT + Boost-DD on {data.source}, budgets {list(budgets)}",
        )
    store.clear()
    final = {run: round(sum(c.meta_loss[-10:]) / len(c.meta_loss[-10:]), 4) for run, c in result.curves.items()}
    write_json(
        layout.distill_metrics,
        {
            "method": "ratbptt",
            "ipc": syn.ipc,
            "budgets": list(budgets),
            "iterations": {run: len(c.iteration) for run, c in result.curves.items()},
            "final_meta_loss": final,
            "seconds": {**result.seconds, "total": round(seconds, 2)},
        },
    )
    skipped = sum(sum(c.skipped) for c in result.curves.values())
    return (
        f"distilled {len(syn.labels)} images ({syn.ipc} per class) with RaT-BPTT, nested budgets {list(budgets)}; "
        f"meta-loss (last 10 steps) {final}{_resumed(store)}{_skipped(skipped)}"
    )


def _resumed(store: ckpt.Store) -> str:
    runs = ", ".join(f"{name} after step {it}" if it else name for name, it in store.resumed.items())
    return f"; resumed from checkpoints ({runs})" if runs else ""


def _skipped(n: int) -> str:
    return f"; {n} step(s) skipped or rolled back by the guard (see curves.csv)" if n else ""


def evaluate(p: Params, layout: Layout, progress: Reporter = SILENT) -> dict[str, Any]:
    """Score the synthetic set (every nested budget) and, under the same protocol and seeds, its references: a random
    real subset, the full data and, for boosted sets, sets distilled directly at each budget and the naive subset.
    The largest budget is also scored on every architecture in `evaluate.archs` (MTT's cross-architecture table)."""
    device = resolve_device(p.device)
    data = load_prepared(layout.prepared).to(device)
    syn, prov = synthetic.load(layout.synthetic)
    if prov.get("dataset_hash") != data.content_hash:
        raise DistillerError(f"{layout.synthetic} was distilled from other data than {layout.prepared}; re-run distill")
    method = str(prov.get("method"))
    proto = protocol_for(p, method)
    budgets = syn.budgets or (syn.ipc,)
    refs = {b: synthetic.load(layout.reference(b))[0] for b in budgets if layout.reference(b).is_file()}
    e = p.evaluate
    archs = e.archs or (p.model.arch,)
    on_arch = {a: dataclasses.replace(p, model=dataclasses.replace(p.model, arch=a)) for a in archs}
    for q in on_arch.values():  # refuse an input size an architecture cannot take before training anything
        models.describe(q.model, data.image_shape, data.num_classes)
    seconds: dict[str, float] = {}
    done: dict[str, EvalResult] = {}  # content hash -> result: a set that appears twice is trained once

    def timed(
        name: str, s: synthetic.SyntheticSet, epochs: int | None = None, runs: int | None = None, q: Params = p
    ) -> EvalResult:
        key = sha256_tensors(s.images, s.targets) + f"/{epochs}/{runs}/{q.model.arch}"
        if key not in done:
            t0 = time.perf_counter()
            done[key] = score(
                s.images,
                s.targets,
                data,
                q,
                proto,
                lr=proto.lr(s.lr),
                runs=runs or e.num_eval,
                epochs=epochs,
                device=device,
                progress=progress,
                description=f"evaluate {name}",
            )
            seconds[name] = round(time.perf_counter() - t0, 2)
        return done[key]

    # random real subsets are nested too: the first k per class of one draw at the largest budget
    real_x, real_y = synthetic.real_subset(data, syn.ipc, generator(p.seed, "random-real"))
    real = synthetic.SyntheticSet(real_x, real_y, None, syn.ipc)
    main = "boosted" if method == "ratbptt" and len(budgets) > 1 else "distilled"
    per_budget: dict[str, dict[str, dict[str, Any]]] = {}
    for b in budgets:
        row = {main: timed(f"distilled ipc {b}", syn.prefix(b))}
        if b in refs:
            row["direct"] = timed(f"direct ipc {b}", refs[b])
        if budgets[-1] in refs:
            row["naive_subset"] = timed(f"naive subset ipc {b}", refs[budgets[-1]].prefix(b))
        row["random_real"] = timed(f"random real ipc {b}", real.prefix(b))
        per_budget[str(b)] = {k: v.as_dict() for k, v in row.items()}
    top = per_budget[str(syn.ipc)]
    baselines: dict[str, object] = {"random_real": top["random_real"]}
    if e.full_data_runs > 0:
        full = synthetic.SyntheticSet(data.train_images, data.train_labels, None, 1)
        baselines["full_data"] = timed("full data", full, e.full_data_epochs or None, e.full_data_runs).as_dict()
    # the distillation architecture's entry is the row above (same set, protocol and seeds): trained once
    architectures = {a: timed(f"{a} ipc {syn.ipc}", syn.prefix(syn.ipc), q=q).as_dict() for a, q in on_arch.items()}
    seconds["total"] = round(sum(seconds.values()), 2)
    metrics = {
        "dataset": data.source,
        "method": method,
        "ipc": syn.ipc,
        "lr": syn.lr,
        "accuracy": top[main],
        "baselines": baselines,
        "budgets": per_budget,
        "architectures": architectures,
        "protocol": protocol(p, data, proto),
        "seconds": seconds,
    }
    curves = sorted({name for row in per_budget.values() for name in row}, key=_CURVE_ORDER.index)
    table = [{"budget": int(b), **{c: row[c]["mean"] for c in curves if c in row}} for b, row in per_budget.items()]
    with atomic_dir(layout.evaluate_dir) as out:
        write_text(out / layout.budgets_csv.name, _csv(table))
        plots.budgets_png(out / layout.budgets_png.name, per_budget, curves, f"{data.source}, {method}")
    write_json(layout.evaluate_metrics, metrics)
    return metrics


def package_stage(p: Params, layout: Layout) -> Path:
    """Build the Hugging Face datasets folder from the distilled set and its evaluation."""
    return package.build(p, layout)


_CURVE_ORDER = ["distilled", "boosted", "direct", "naive_subset", "random_real"]


def _csv(rows: Sequence[Mapping[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
