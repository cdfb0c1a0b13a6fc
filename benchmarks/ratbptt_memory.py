"""RaT-BPTT keeps only the window's graph: memory grows with W, not with the horizon T.

For each (T, W) this runs one meta-gradient in a fresh subprocess on digits and reports (a) the bytes of tensors the
autograd graph holds for the backward pass, when backward starts and at most (tracked by a saved-tensors hook: exact
and device independent; aliases of one storage count once per save) and (b) the process's peak resident memory. The
warm-up (T - W steps, forced by `placement: end`) frees each step's graph at once; the window keeps W steps' worth.

    python benchmarks/ratbptt_memory.py                 # prints a table, appends it to benchmarks/log.md
    python benchmarks/ratbptt_memory.py --no-record     # print only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import weakref

CONFIGS = [(40, 20), (160, 20), (40, 10), (40, 40)]  # (T, W): two T at equal W, then W varied at equal T


def measure(horizon: int, window: int, ipc: int) -> dict[str, float]:
    import torch

    from distiller.core.params import params_from_dict
    from distiller.core.runtime import configure_torch, generator
    from distiller.data.prepare import prepare
    from distiller.methods.ratbptt import MetaBatch, ratbptt_meta_loss
    from distiller.methods.synthetic import class_major_labels, initial_images
    from distiller.nets import models
    from distiller.nets.augment import with_families

    configure_torch()
    p = params_from_dict({"ratbptt": {"horizon": horizon, "window": window, "placement": "end"}})
    data = prepare(p.data)
    images = initial_images(data, ipc, "real", generator(0, "init")).requires_grad_(True)
    syn = MetaBatch(images, class_major_labels(data.num_classes, ipc), ipc, data.num_classes)
    model = models.build_model(p.model, data.image_shape, data.num_classes, generator(0, "arch"))
    theta0 = {k: v.detach() for k, v in model.named_parameters()}
    live = peak = 0  # bytes of tensors autograd holds for backward right now / at most

    class Box:  # what the graph stores instead of the tensor, so that we see when the graph lets go of it
        __slots__ = ("__weakref__", "t")

        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

    def release(n: int) -> None:
        nonlocal live
        live -= n

    def pack(t: torch.Tensor) -> Box:
        nonlocal live, peak
        n = t.numel() * t.element_size()
        live += n
        peak = max(peak, live)
        box = Box(t)
        weakref.finalize(box, release, n)
        return box

    real = data.train_images[: p.ratbptt.real_batch], data.train_labels[: p.ratbptt.real_batch]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.t):
        loss = ratbptt_meta_loss(
            model,
            theta0,
            syn,
            *real,
            p.ratbptt,
            with_families(p.augment, p.ratbptt.augment),
            horizon - window,
            generator(0, "batch"),
            generator(0, "aug"),
        )
    held = live
    loss.backward()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"graph_mib": held / 2**20, "graph_peak_mib": peak / 2**20, "peak_rss_mib": peak_kib / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    rows = []
    for horizon, window in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(horizon), str(window), str(args.ipc)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append((horizon, window, json.loads(out.stdout.strip().splitlines()[-1])))
    lines = [
        "| T | W | graph held at backward (MiB) | graph peak (MiB) | process peak RSS (MiB) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {t} | {w} | {r['graph_mib']:.1f} | {r['graph_peak_mib']:.1f} | {r['peak_rss_mib']:.0f} |"
        for t, w, r in rows
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        from record import record

        record(f"RaT-BPTT memory against T and W, digits IPC {args.ipc}", table)


if __name__ == "__main__":
    main()
