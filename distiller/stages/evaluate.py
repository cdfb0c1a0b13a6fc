"""Stage evaluate: fresh networks trained on every budget of the distilled set and its references, tested on the
held-out split; writes metrics/evaluate.json and artifacts/evaluate/ (budgets.csv, budgets.png)."""

from __future__ import annotations

from typing import Any

from distiller.core import distributed
from distiller.core.errors import DistillerError
from distiller.core.files import atomic_dir, csv_text, write_json, write_sealed_json, write_text
from distiller.core.params import Params
from distiller.core.paths import Layout
from distiller.core.runtime import SILENT, Reporter, configure_torch, resolve_device
from distiller.data.prepared import load_prepared
from distiller.methods import synthetic
from distiller.scoring import plots
from distiller.scoring.scorecard import budget_table, scorecard


def run(p: Params, layout: Layout, progress: Reporter = SILENT) -> dict[str, Any]:
    """Score the synthetic set and, under the same protocol and seeds, its references (`distiller.scoring.scorecard`);
    in a torchrun job the ranks share the networks out and rank 0 writes (`distiller.core.distributed`)."""
    configure_torch(p.deterministic)
    with distributed.world(resolve_device(p.device)) as w:
        device = w.device(resolve_device(p.device))
        data = load_prepared(layout.prepared, p.data).to(device)
        syn, prov = synthetic.load(layout.synthetic, data)
        if prov.get("dataset_hash") != data.content_hash:
            raise DistillerError(
                f"{layout.synthetic} was distilled from other data than {layout.prepared}; re-run distill"
            )
        budgets = syn.budgets or (syn.ipc,)
        direct = {b: synthetic.load(layout.reference(b), data)[0] for b in budgets if layout.reference(b).is_file()}
        metrics, seconds = scorecard(syn, str(prov.get("method")), direct, data, p, device, progress, w)
        metrics["synthetic_hash"] = synthetic.content_hash(syn)  # the package stage checks it describes its set
    if not w.root:  # every rank has the metrics; rank 0 writes them
        return metrics
    curves, table = budget_table(metrics)
    with atomic_dir(layout.evaluate_dir) as out:
        write_text(out / layout.budgets_csv.name, csv_text(table))
        title = f"{data.source}, {metrics['method']}"
        plots.budgets_png(out / layout.budgets_png.name, metrics["budgets"], curves, title)
        write_sealed_json(layout.evaluate_metrics, metrics)  # sealed: the package stage refuses an edited one
    write_json(layout.log("evaluate"), {"seconds": seconds})
    return metrics


def summary(m: dict[str, Any]) -> str:
    acc, base = m["accuracy"], m["baselines"]
    lines = [f"distilled ({m['method']}, ipc {m['ipc']}): {_fmt(acc)}", f"random real: {_fmt(base['random_real'])}"]
    if "full_data" in base:
        lines.append(f"full data:   {_fmt(base['full_data'])}")
    if len(m["budgets"]) > 1:
        for b, row in m["budgets"].items():
            lines.append(f"ipc {b:>3}: " + "  ".join(f"{name} {100 * r['mean']:.2f}" for name, r in row.items()))
    if len(m["architectures"]) > 1:
        lines += [f"on {arch}: {_fmt(r)}" for arch, r in m["architectures"].items()]
    return "\n".join(lines)


def _fmt(result: dict[str, Any]) -> str:
    return f"{100 * result['mean']:.2f} +- {100 * result['std']:.2f}% (n={len(result['runs'])})"
