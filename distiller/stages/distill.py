"""Stage distill: the synthetic set (MTT, or RaT-BPTT boosted over the budgets) in artifacts/distill/.

Writes synthetic.safetensors, curves.csv and curves.png, grid.png, for RaT-BPTT the direct references in
references/, and metrics/distill.json. Checkpoints go to .checkpoints/distill/ and are removed once the outputs are
complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any

from distiller.core import distributed
from distiller.core.checkpoint import Store, fingerprint
from distiller.core.distributed import World
from distiller.core.files import atomic_dir, csv_text, write_json, write_text
from distiller.core.params import Params, effective_budgets, to_dict
from distiller.core.paths import Layout
from distiller.core.provenance import stamp
from distiller.core.runtime import SILENT, Reporter, configure_torch, resolve_device
from distiller.data.prepared import load_prepared
from distiller.methods import boost, mtt, synthetic
from distiller.methods.buffer import ExpertBuffer, load_buffer, manifest
from distiller.methods.run import Context
from distiller.nets import models
from distiller.scoring import plots

WAIT = datetime.timedelta(days=7)  # a rank waits for the others' runs, however long (a rank that dies is seen at once)


def run(p: Params, layout: Layout, progress: Reporter = SILENT) -> str:
    """Distill with `distill.method`; writes the set, its curves and pictures and the metrics. Returns a summary.

    In a torchrun job (`distill.nproc`), RaT-BPTT's direct references are distilled by the ranks other than 0, which
    boosts (`distiller.methods.boost`) and alone writes; an MTT run has one unit of work, so rank 0 does it all."""
    configure_torch(p.deterministic)
    models.check_distillable(p.model)
    with distributed.world(resolve_device(p.device), timeout=WAIT) as w:
        if not w.root and p.distill.method != "ratbptt":
            return ""  # nothing to share out
        device = w.device(resolve_device(p.device))
        data = load_prepared(layout.prepared, p.data).to(device)

        def context(*inputs: object) -> Context:  # checkpoints resume only for the same params and inputs
            return Context(data, p.model, p.augment, p.seed, device, p.guard, _store(p, layout, *inputs), progress)

        if p.distill.method == "ratbptt":
            return _ratbptt(p, layout, context(data.content_hash, device.type), w)
        expected = manifest(data, p.model, p.expert, p.augment, p.seed)  # the card states these params as theirs
        buffer = load_buffer(
            layout.experts_dir, data, p.model, p.mtt.max_start_epoch - 1 + p.mtt.expert_epochs, expected
        )
        return _mtt(p, layout, context(data.content_hash, buffer.manifest, device.type), buffer)


def summary(text: str) -> str:
    return text


def _store(p: Params, layout: Layout, *inputs: object) -> Store:
    """The checkpoints of a distill run: resumed only for the same params (the checkpoint interval aside) and inputs."""
    relevant = {k: v for k, v in to_dict(p).items() if k not in ("evaluate", "package")}
    relevant["distill"] = {**relevant["distill"], "checkpoint_every": None, "nproc": None}
    relevant["expert"] = {**relevant["expert"], "checkpoint_every": None, "parallel": None}
    return Store(layout.checkpoints("distill"), fingerprint(relevant, *inputs), p.distill.checkpoint_every)


def _mtt(p: Params, layout: Layout, ctx: Context, buffer: ExpertBuffer) -> str:
    start = time.perf_counter()
    syn, curves = mtt.distill(ctx, buffer, p.mtt, p.distill.ipc, p.mtt.lr_init or p.expert.lr)
    # MTT distils one set at distill.ipc; its prefixes are scored and packaged at every budget only when asked
    syn = dataclasses.replace(syn, budgets=effective_budgets(p.distill))
    seconds = round(time.perf_counter() - start, 2)
    files, fetched = buffer.manifest.get("files"), buffer.manifest.get("fetched")  # fetched: expert.from's commit
    prov = stamp(to_dict(p), method="mtt", dataset=ctx.data.source, dataset_hash=ctx.data.content_hash, experts=files)
    prov = {**prov, "experts_fetched": fetched} if fetched is not None else prov
    with atomic_dir(layout.distill_dir) as out:
        synthetic.save(syn, out / layout.synthetic.name, prov)
        write_text(out / layout.curves.name, csv_text(curves.rows()))
        plots.grid_png(syn.images, syn.ipc, ctx.data, out / layout.grid.name)
        title = f"MTT on {ctx.data.source}, {syn.ipc} image(s) per class"
        panels = {"MTT loss": curves["loss"], "syn_lr": curves["syn_lr"]}
        plots.curves_png(out / layout.curves_png.name, curves["iteration"], panels, title)
        final = curves["loss"][-1]
        metrics = {"method": "mtt", "ipc": syn.ipc, "iterations": p.mtt.iterations, "final_loss": final}
        write_json(layout.distill_metrics, {**metrics, "syn_lr": syn.lr})  # before the outputs replace the old ones
    assert ctx.store is not None
    ctx.store.clear()
    write_json(layout.log("distill"), {"seconds": seconds})
    skipped = sum(curves["skipped"])
    return (
        f"distilled {len(syn.labels)} images ({syn.ipc} per class) with MTT: final loss {final:.4f}, "
        f"learned lr {syn.lr:.5g}{ctx.store.summary()}{_skipped(skipped)}"
    )


def _ratbptt(p: Params, layout: Layout, ctx: Context, w: World) -> str:
    budgets = effective_budgets(p.distill)
    start = time.perf_counter()
    references = p.boost.references and len(budgets) > 1
    result = boost.boost(ctx, p.ratbptt, p.boost, budgets, references=references, w=w)
    if result is None:  # a rank other than 0: its references went to rank 0
        return ""
    seconds = round(time.perf_counter() - start, 2)
    prov = stamp(to_dict(p), method="ratbptt", dataset=ctx.data.source, dataset_hash=ctx.data.content_hash)
    syn = result.boosted
    with atomic_dir(layout.distill_dir) as out:
        synthetic.save(syn, out / layout.synthetic.name, prov)
        for b, ref in result.direct.items() if len(budgets) > 1 else ():
            path = out / layout.reference(b).relative_to(layout.distill_dir)
            path.parent.mkdir(exist_ok=True)
            synthetic.save(ref, path, {**prov, "reference": f"distilled directly at ipc {b}, no boosting"})
        write_text(out / layout.curves.name, csv_text(_ratbptt_rows(result.curves)))
        plots.grid_png(syn.images, syn.ipc, ctx.data, out / layout.grid.name)
        runs = {run: (c["iteration"], c["meta_loss"]) for run, c in result.curves.items()}
        title = f"RaT-BPTT + Boost-DD on {ctx.data.source}, budgets {list(budgets)}"
        plots.runs_png(out / layout.curves_png.name, runs, "meta-loss", title)
        final = {
            run: round(sum(c["meta_loss"][-10:]) / len(c["meta_loss"][-10:]), 4) for run, c in result.curves.items()
        }
        metrics: dict[str, Any] = {"method": "ratbptt", "ipc": syn.ipc, "budgets": list(budgets)}
        metrics["iterations"] = {run: len(c) for run, c in result.curves.items()}
        write_json(layout.distill_metrics, {**metrics, "final_meta_loss": final})  # before the outputs are replaced
    assert ctx.store is not None
    ctx.store.clear()
    write_json(layout.log("distill"), {"seconds": {**result.seconds, "total": seconds}})
    skipped = sum(sum(c["skipped"]) for c in result.curves.values())
    return (
        f"distilled {len(syn.labels)} images ({syn.ipc} per class) with RaT-BPTT, nested budgets {list(budgets)}; "
        f"meta-loss (last 10 steps) {final}{ctx.store.summary()}{_skipped(skipped)}"
    )


def _ratbptt_rows(curves: dict[str, Any]) -> list[dict[str, Any]]:
    """One table for every run, `iteration` counting on across them (dvc plots' x axis)."""
    rows = [(run, r) for run, c in curves.items() for r in c.rows()]
    return [
        {
            "iteration": n,
            "run": run,
            "run_iteration": r["iteration"],
            "loss": r["meta_loss"],
            "grad_norm": r["grad_norm"],
            "warmup_steps": r["warmup_steps"],
            "skipped": r["skipped"],
        }
        for n, (run, r) in enumerate(rows, start=1)
    ]


def _skipped(n: int) -> str:
    return f"; {n} step(s) skipped or rolled back by the guard (see curves.csv)" if n else ""
