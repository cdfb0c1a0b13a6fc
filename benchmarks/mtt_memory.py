"""MTT's meta-gradient in each `mtt.memory` mode: peak memory and time per iteration, exactness, accuracy.

1. `memory`: CIFAR-shaped random data (3x32x32, 10 classes; ConvNet depth 3, width 128, instance norm; DSA with
   distiller's default families; every student step on all of S), one fresh process per case (mode, IPC, N): the
   process's peak resident memory and the seconds per meta-gradient (the mean of `--iterations` after one warm-up).
   Each case runs under an address-space limit (`--limit-gib`), so a case that does not fit fails instead of the
   machine: it is reported as such.
2. `exactness`: float64 gradients of the images and of alpha, relative error against `full` (ConvNet on digits).
3. `accuracy`: distill and evaluate digits at IPC 1 and 10 with each mode, the same seeds and defaults otherwise.

    python benchmarks/mtt_memory.py                         # all three parts; appends to benchmarks/log.md
    python benchmarks/mtt_memory.py --part memory --no-record
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("full", "checkpoint", "tesla")
CASES = [(ipc, n) for ipc in (1, 10) for n in (10, 20, 30, 50)] + [(50, 30)]


def one_case(mode: str, ipc: int, n: int, iterations: int) -> dict[str, float]:
    """In this (fresh) process: the seconds per meta-gradient and the peak RSS in GiB."""
    import time

    import torch

    from distiller.core.params import AugmentParams, ModelParams, MTTParams
    from distiller.core.runtime import configure_torch, generator
    from distiller.methods.mtt import Student, meta_gradient
    from distiller.nets.models import build_model

    configure_torch()
    model = build_model(ModelParams(depth=3, width=128), (3, 32, 32), 10, generator(0, "net"))
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    target = {k: v + 0.01 * torch.randn(v.shape, generator=generator(1, k)) for k, v in start.items()}
    images = torch.randn(10 * ipc, 3, 32, 32, generator=generator(2)).requires_grad_(True)
    labels = torch.arange(10).repeat_interleave(ipc)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    p = MTTParams(syn_steps=n, memory=mode)  # type: ignore[arg-type]
    student = Student(model, images, labels, syn_lr, AugmentParams(), generator(3, "aug"))
    seconds = []
    for _ in range(iterations + 1):
        images.grad = syn_lr.grad = None
        t0 = time.perf_counter()
        meta_gradient(p, student, start, target)
        seconds.append(time.perf_counter() - t0)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"seconds": sum(seconds[1:]) / iterations, "peak_gib": peak_gib}


def memory_table(iterations: int, limit_gib: float) -> str:
    def limit() -> None:
        cap = int(limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    rows = [
        "| IPC | N | mode | peak RSS (GiB) | s / iteration | vs full: memory | vs full: time |",
        "|---|---|---|---|---|---|---|",
    ]
    for ipc, n in CASES:
        full: dict[str, float] | None = None
        for mode in MODES:
            cmd = [sys.executable, __file__, "--case", mode, str(ipc), str(n), "--iterations", str(iterations)]
            out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, check=False)
            if out.returncode != 0:
                rows.append(f"| {ipc} | {n} | {mode} | did not fit in {limit_gib:g} GiB | | | |")
                print(rows[-1], flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            full = r if mode == "full" else full
            ratio = (
                f"{r['peak_gib'] / full['peak_gib']:.2f} | {r['seconds'] / full['seconds']:.2f}"
                if full is not None and mode != "full"
                else " | "
            )
            rows.append(f"| {ipc} | {n} | {mode} | {r['peak_gib']:.2f} | {r['seconds']:.2f} | {ratio} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def exactness_table() -> str:
    """Relative errors |g_mode - g_full| / |g_full| in float64 on a digits-sized ConvNet (width 16, depth 2)."""
    import dataclasses

    import torch

    from distiller.core.params import AugmentParams, ModelParams, MTTParams, Params
    from distiller.core.runtime import generator
    from distiller.data.prepare import prepare
    from distiller.methods.mtt import Student, meta_gradient
    from distiller.nets.models import build_model

    data = prepare(Params().data)
    rows = ["| N | mode | images: relative error | alpha: relative error |", "|---|---|---|---|"]
    for n in (1, 2, 5, 10, 20):
        grads = {}
        for mode in MODES:
            model = build_model(ModelParams(width=16), data.image_shape, 10, generator(0, "net")).double()
            start = {k: v.detach().clone() for k, v in model.named_parameters()}
            target = {
                k: v + 0.05 * torch.randn(v.shape, generator=generator(1, k), dtype=v.dtype) for k, v in start.items()
            }
            images = data.train_images[:20].double().clone().requires_grad_(True)
            syn_lr = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
            s = Student(model, images, data.train_labels[:20], syn_lr, AugmentParams(), generator(2, "aug"))
            p = dataclasses.replace(MTTParams(syn_steps=n, batch_syn=10), memory=mode)
            meta_gradient(p, s, start, target)
            grads[mode] = (images.grad, syn_lr.grad)
        for mode in MODES[1:]:
            err = [float((a - b).norm() / b.norm()) for a, b in zip(grads[mode], grads["full"], strict=True)]
            rows.append(f"| {n} | {mode} | {err[0]:.2e} | {err[1]:.2e} |")
    return "\n".join(rows)


def accuracy_table() -> str:
    """Digits through the library's stages, each mode from the same prepared data and experts."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import make_project, run_stage

    from distiller.core.params import params_from_dict

    rows = ["| IPC | mode | distilled | learned lr | distill (s) |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        base = make_project(Path(tmp) / "base", {}, "download", "expert-buffer")
        for ipc in (1, 10):
            for mode in MODES:
                import time

                root = Path(tmp) / f"{mode}-{ipc}"
                shutil.copytree(base, root)
                p = params_from_dict({"distill": {"ipc": ipc}, "mtt": {"memory": mode}})
                t0 = time.perf_counter()
                run_stage("distill", p, root)
                seconds = time.perf_counter() - t0
                m = run_stage("evaluate", p, root)
                acc = f"{100 * m['accuracy']['mean']:.2f} +- {100 * m['accuracy']['std']:.2f} %"
                lr = json.loads((root / "metrics" / "distill.json").read_text())["syn_lr"]
                rows.append(f"| {ipc} | {mode} | {acc} | {lr:.4g} | {seconds:.0f} |")
                print(rows[-1], flush=True)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("memory", "exactness", "accuracy", "all"), default="all")
    parser.add_argument("--iterations", type=int, default=2, help="timed meta-gradients per case, after a warm-up")
    parser.add_argument("--limit-gib", type=float, default=21.0, help="address-space limit of each memory case")
    parser.add_argument("--case", nargs=3, metavar=("MODE", "IPC", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    if args.case:
        mode, ipc, n = args.case
        print(json.dumps(one_case(mode, int(ipc), int(n), args.iterations)))
        return
    from record import record

    parts = {
        "memory": lambda: memory_table(args.iterations, args.limit_gib),
        "exactness": exactness_table,
        "accuracy": accuracy_table,
    }
    for name, make in parts.items():
        if args.part in (name, "all"):
            table = make()
            print(table)
            if not args.no_record:
                record(f"MTT meta-gradient by mtt.memory: {name}", table)


if __name__ == "__main__":
    main()
