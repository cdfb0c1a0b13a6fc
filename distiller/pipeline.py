"""The pipeline stages: each reads its inputs, calls the library and writes its outputs atomically.

download -> expert-buffer -> distill -> evaluate. Each stage is one `distiller` command and one `dvc.yaml` stage;
nothing here parses arguments or prints (the CLI does), and nothing is written until the work is done.
"""

from __future__ import annotations

import csv
import io
import subprocess
import time
from typing import Any

import torch

from distiller import __version__, experts, mtt, plots, synthetic
from distiller._runtime import (
    SILENT,
    DistillerError,
    Reporter,
    atomic_dir,
    generator,
    resolve_device,
    write_json,
    write_text,
)
from distiller.data import Prepared, load_prepared, prepare, save_prepared
from distiller.evaluate import EvalResult, protocol, score
from distiller.params import Params, to_dict
from distiller.paths import Layout


def provenance(p: Params, **extra: object) -> dict[str, object]:
    """Resolved params, package version and git commit, embedded in every artifact."""
    return {"distiller_version": __version__, "git_commit": git_commit(), "params": to_dict(p), **extra}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# ---------------------------------------------------------------------------------------------------------------------


def download(p: Params, layout: Layout) -> Prepared:
    """Materialise the source dataset as a prepared tensor file."""
    data = prepare(p.data)
    save_prepared(data, layout.prepared)
    return data


def expert_buffer(p: Params, layout: Layout, progress: Reporter = SILENT) -> list[float]:
    """Train `expert.num_experts` experts; returns their final test accuracies."""
    device = resolve_device(p.device)
    data = load_prepared(layout.prepared).to(device)
    info = experts.manifest(data, p.model, p.expert, p.augment, p.seed)
    advance = progress.task("expert buffer", p.expert.num_experts * p.expert.epochs)
    accuracies = []
    with atomic_dir(layout.experts_dir) as out:
        for i in range(p.expert.num_experts):
            trajectory, acc = experts.train_expert(
                data, p.model, p.expert, p.augment, p.seed, i, device, on_epoch=lambda _: advance(1)
            )
            experts.save_trajectory(trajectory, out / f"expert_{i:03d}.safetensors")
            accuracies.append(acc)
        experts.write_manifest(out, info, accuracies)
    return accuracies


def distill(p: Params, layout: Layout, progress: Reporter = SILENT) -> tuple[synthetic.SyntheticSet, mtt.Curves]:
    """Distill with MTT; writes the synthetic set, per-iteration curves and the image grid."""
    device = resolve_device(p.device)
    data = load_prepared(layout.prepared).to(device)
    buffer = experts.load_buffer(layout.experts_dir, data, p.model, p.mtt.max_start_epoch - 1 + p.mtt.expert_epochs)
    start = time.perf_counter()
    syn, curves = mtt.distill(data, buffer, p, device, progress)
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
        synthetic.grid_png(syn.images, syn.ipc, data.classes, data.mean, data.std, out / layout.grid.name)
        plots.curves_png(
            out / layout.curves_png.name,
            curves.iteration,
            {"MTT loss": curves.loss, "syn_lr": curves.syn_lr},
            f"MTT on {data.source}, {syn.ipc} image(s) per class",
        )
    write_json(
        layout.distill_metrics,
        {
            "method": "mtt",
            "ipc": syn.ipc,
            "iterations": p.distill.iterations,
            "final_loss": curves.loss[-1],
            "syn_lr": syn.lr,
            "seconds": round(seconds, 2),
        },
    )
    return syn, curves


def evaluate(p: Params, layout: Layout, progress: Reporter = SILENT) -> dict[str, Any]:
    """Score the synthetic set and, under the same protocol and seeds, a random real subset and the full data."""
    device = resolve_device(p.device)
    data = load_prepared(layout.prepared).to(device)
    syn, prov = synthetic.load(layout.synthetic)
    if prov.get("dataset_hash") != data.content_hash:
        raise DistillerError(f"{layout.synthetic} was distilled from other data than {layout.prepared}; re-run distill")
    e = p.evaluate
    seconds: dict[str, float] = {}

    def timed(name: str, images: torch.Tensor, labels: torch.Tensor, lr: float, runs: int, epochs: int) -> EvalResult:
        start = time.perf_counter()
        result = score(
            images,
            labels,
            data,
            p,
            lr=lr,
            runs=runs,
            epochs=epochs,
            device=device,
            progress=progress,
            description=f"evaluate {name.replace('_', ' ')}",
        )
        seconds[name] = round(time.perf_counter() - start, 2)
        return result

    accuracy = timed("synthetic", syn.images, syn.labels, syn.lr, e.num_eval, e.epochs)
    real_x, real_y = synthetic.real_subset(data, syn.ipc, generator(p.seed, "random-real"))
    random_real = timed("random_real", real_x, real_y, e.real_lr, e.num_eval, e.epochs)
    baselines: dict[str, object] = {"random_real": random_real.as_dict()}
    if e.full_data_runs > 0:
        full = timed(
            "full_data",
            data.train_images,
            data.train_labels,
            e.real_lr,
            e.full_data_runs,
            e.full_data_epochs or e.epochs,
        )
        baselines["full_data"] = full.as_dict()
    seconds["total"] = round(sum(seconds.values()), 2)
    metrics = {
        "dataset": data.source,
        "method": prov.get("method"),
        "ipc": syn.ipc,
        "lr": syn.lr,
        "accuracy": accuracy.as_dict(),
        "baselines": baselines,
        "protocol": protocol(p, data),
        "seconds": seconds,
    }
    write_json(layout.evaluate_metrics, metrics)
    return metrics


def _csv(rows: list[dict[str, float | int]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
