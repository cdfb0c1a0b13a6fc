"""`model.precision`: fp32 against bf16, in speed (with peak memory) and in the accuracy of what comes out.

1. `kernels`: one 3x3 convolution (100 x 128 x 16 x 16, 128 filters) and a 1024 x 1024 matmul, forward only, in
   GFLOP/s: fp32 and bf16, NCHW and channels-last. Says whether this CPU has bf16 units at all.
2. `speed`: CIFAR-shaped random data (3x32x32, 10 classes; ConvNet depth 3, width 128, instance norm; DSA), each case
   in a fresh process, fp32 then bf16: MTT's meta-gradient at IPC 1 / N 20 and IPC 10 / N 30 in every `mtt.memory`
   mode; one RaT-BPTT outer step (IPC 10, T 40 / W 20, real batch 1024); expert training (`--expert-batches` SGD
   steps of 256 images with DSA, reported per 50,000-image epoch); one evaluation network (`--eval-epochs` epochs on
   100 images, reported per 1000 epochs). Seconds after one warm-up, and the process's peak resident memory.
3. `fidelity`: digits through the library's stages with the same seeds, fp32 against bf16: MTT at IPC 1 and 10, and
   RaT-BPTT + Boost-DD (`--ratbptt-iterations` first-stage steps); the accuracies with their spread, and the MTT loss
   curves drawn together (benchmarks/precision-curves.png).

    python benchmarks/precision.py                        # all three parts; appends to benchmarks/log.md
    python benchmarks/precision.py --part speed --only mtt-10 --no-record
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRECISIONS = ("fp32", "bf16")
SPEED = [f"mtt-{ipc}-{mode}" for ipc in (1, 10) for mode in ("full", "checkpoint", "tesla")]
SPEED += ["ratbptt", "expert", "evaluate"]


def kernels_table() -> str:
    import torch
    import torch.nn.functional as F

    from distiller.nets.precision import native_bf16_cpu

    def rate(fn, flops: float) -> float:
        fn()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 2.0:
            fn()
            n += 1
        return flops * n / (time.perf_counter() - t0) / 1e9

    rows = ["| kernel | layout | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |", "|---|---|---|---|---|"]
    x, w = torch.randn(100, 128, 16, 16), torch.randn(128, 128, 3, 3)
    flops = 2 * 100 * 128 * 16 * 16 * 128 * 9
    dtypes = (torch.float32, torch.bfloat16)
    with torch.no_grad():
        for layout, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
            pairs = [(x.to(d, memory_format=fmt), w.to(d, memory_format=fmt)) for d in dtypes]  # cast beforehand
            r = [rate(lambda a=a, b=b: F.conv2d(a, b, padding=1), flops) for a, b in pairs]
            rows.append(f"| conv3x3 100x128x16x16 | {layout} | {r[0]:.0f} | {r[1]:.0f} | {r[1] / r[0]:.2f} |")
        mats = [torch.randn(1024, 1024).to(d) for d in dtypes]
        r = [rate(lambda a=a: a @ a, 2 * 1024**3) for a in mats]
    rows.append(f"| matmul 1024x1024 | - | {r[0]:.0f} | {r[1]:.0f} | {r[1] / r[0]:.2f} |")
    return "\n".join(rows) + f"\n\nbf16 units (amx_bf16 or avx512_bf16 in /proc/cpuinfo): {native_bf16_cpu()}"


def one_case(case: str, prec: str, args: argparse.Namespace) -> dict[str, float]:
    """In this (fresh) process: seconds for the unit the case names (after one warm-up) and the peak RSS in GiB."""

    from distiller.core.params import AugmentParams, ModelParams, params_from_dict
    from distiller.core.runtime import configure_torch, generator
    from distiller.nets.models import build_model

    configure_torch()
    model_p = ModelParams(depth=3, width=128, precision=prec)  # type: ignore[arg-type]
    model = build_model(model_p, (3, 32, 32), 10, generator(0, "net"))
    kind, *rest = case.split("-")
    run = {"mtt": _mtt, "ratbptt": _ratbptt, "expert": _expert, "evaluate": _evaluate}[kind]
    step, scale = run(model, rest, args, AugmentParams(), params_from_dict, generator)
    step()  # warm-up
    t0 = time.perf_counter()
    step()
    seconds = (time.perf_counter() - t0) * scale
    return {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _mtt(model, rest, args, aug, params_from_dict, generator):
    import torch

    from distiller.methods.mtt import Student, meta_gradient

    ipc, mode = int(rest[0]), rest[1]
    n = 20 if ipc == 1 else 30
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    target = {k: v + 0.01 * torch.randn(v.shape, generator=generator(1, k)) for k, v in start.items()}
    images = torch.randn(10 * ipc, 3, 32, 32, generator=generator(2)).requires_grad_(True)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    p = params_from_dict({"mtt": {"syn_steps": n, "memory": mode}}).mtt
    student = Student(model, images, torch.arange(10).repeat_interleave(ipc), syn_lr, aug, generator(3, "aug"))

    def step() -> None:
        images.grad = syn_lr.grad = None
        meta_gradient(p, student, start, target)

    return step, 1.0


def _ratbptt(model, rest, args, aug, params_from_dict, generator):
    import torch

    from distiller.methods.ratbptt import MetaBatch, ratbptt_meta_loss

    p = params_from_dict({"ratbptt": {"horizon": 40, "window": 20, "placement": "end", "real_batch": 1024}}).ratbptt
    images = torch.randn(100, 3, 32, 32, generator=generator(2)).requires_grad_(True)
    syn = MetaBatch(images, torch.arange(10).repeat_interleave(10), 10, 10)
    real_x, real_y = torch.randn(1024, 3, 32, 32, generator=generator(4)), torch.arange(10).repeat(103)[:1024]
    theta0 = {k: v.detach() for k, v in model.named_parameters()}

    def step() -> None:
        images.grad = None
        loss = ratbptt_meta_loss(model, theta0, syn, real_x, real_y, p, aug, 20, generator(5), generator(6))
        loss.backward()

    return step, 1.0


def _sgd(model, images, labels, batches: int, aug, generator):
    import torch
    import torch.nn.functional as F

    from distiller.nets.augment import dsa

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = generator(7)

    def step() -> None:
        for i in range(batches):
            size = min(256, len(images))  # an expert's minibatch, or the whole set when it is smaller
            idx = torch.arange(i * size, (i + 1) * size) % len(images)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(dsa(images[idx], aug, gen)), labels[idx]).backward()
            opt.step()

    return step


def _expert(model, rest, args, aug, params_from_dict, generator):
    import torch

    x = torch.randn(256 * args.expert_batches, 3, 32, 32, generator=generator(2))
    step = _sgd(model, x, torch.arange(len(x)) % 10, args.expert_batches, aug, generator)
    return step, (50000 / 256) / args.expert_batches  # seconds per 50,000-image epoch


def _evaluate(model, rest, args, aug, params_from_dict, generator):
    import torch

    x = torch.randn(100, 3, 32, 32, generator=generator(2))
    one = _sgd(model, x, torch.arange(100) % 10, 1, aug, generator)  # 100 images: one minibatch an epoch

    def step() -> None:
        for _ in range(args.eval_epochs):
            one()

    return step, 1000 / args.eval_epochs  # seconds per 1000 epochs


def speed_table(args: argparse.Namespace) -> str:
    rows = [
        "| case | fp32 s | bf16 s | bf16 speed-up | fp32 peak GiB | bf16 peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for case in [c for c in SPEED if not args.only or c in args.only]:
        r = {}
        for prec in PRECISIONS:
            cmd = [sys.executable, __file__, "--case", case, prec, *sys.argv[1:]]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r[prec] = json.loads(out.stdout.strip().splitlines()[-1])
        f, b = r["fp32"], r["bf16"]
        rows.append(
            f"| {case} | {f['seconds']:.2f} | {b['seconds']:.2f} | {f['seconds'] / b['seconds']:.2f}x | "
            f"{f['peak_gib']:.2f} | {b['peak_gib']:.2f} |"
        )
        print(rows[-1], flush=True)
    units = "mtt: one meta-gradient; ratbptt: one outer step; expert: one 50,000-image epoch; evaluate: 1000 epochs"
    return "\n".join(rows) + f"\n\nSeconds per unit ({units})."


def fidelity_table(args: argparse.Namespace) -> str:
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import make_project, run_stage

    from distiller.core.params import params_from_dict

    runs = {
        "MTT IPC 1": {"distill": {"ipc": 1}},
        "MTT IPC 10": {"distill": {"ipc": 10}},
        "RaT-BPTT + Boost-DD": {"distill": {"method": "ratbptt"}, "ratbptt": {"iterations": args.ratbptt_iterations}},
    }
    rows = ["| run | budget | fp32 | bf16 | difference |", "|---|---|---|---|---|"]
    curves: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw in runs.items():
            acc = {}
            for prec in PRECISIONS:
                raw_p = {**raw, "model": {"precision": prec}}
                root = make_project(Path(tmp) / f"{len(curves)}-{prec}", raw_p, "download", "expert-buffer", "distill")
                m = run_stage("evaluate", params_from_dict(raw_p), root)
                acc[prec] = {b: r["distilled" if "distilled" in r else "boosted"] for b, r in m["budgets"].items()}
                if name.startswith("MTT"):
                    lines = (root / "artifacts" / "distill" / "curves.csv").read_text().splitlines()
                    curves.setdefault(name, {})[prec] = [float(r.split(",")[1]) for r in lines[1:]]
                shutil.rmtree(root)
            for budget in acc["fp32"]:
                f, b = acc["fp32"][budget], acc["bf16"][budget]
                rows.append(
                    f"| {name} | {budget} | {100 * f['mean']:.2f} +- {100 * f['std']:.2f} | "
                    f"{100 * b['mean']:.2f} +- {100 * b['std']:.2f} | {100 * (b['mean'] - f['mean']):+.2f} |"
                )
                print(rows[-1], flush=True)
            curves.setdefault(name, {})
    _plot(curves)
    return "\n".join(rows) + "\n\nMTT loss curves: benchmarks/precision-curves.png"


def _plot(curves: dict[str, dict[str, list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {k: v for k, v in curves.items() if v}
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.5))
    for ax, (name, by) in zip(list(getattr(axes, "flat", [axes])), shown.items(), strict=True):
        for prec, ys in by.items():
            ax.plot(range(1, len(ys) + 1), ys, label=prec)
        ax.set(title=f"digits, {name}", xlabel="iteration", ylabel="MTT loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("precision-curves.png"), dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("kernels", "speed", "fidelity", "all"), default="all")
    ap.add_argument("--only", action="append", choices=SPEED, help="speed: just these cases (repeatable)")
    ap.add_argument("--expert-batches", type=int, default=10, help="speed: timed expert SGD steps (256 images each)")
    ap.add_argument("--eval-epochs", type=int, default=50, help="speed: timed epochs of the evaluation network")
    ap.add_argument("--ratbptt-iterations", type=int, default=300, help="fidelity: RaT-BPTT first-stage steps")
    ap.add_argument("--case", nargs=2, metavar=("CASE", "PRECISION"), help=argparse.SUPPRESS)
    ap.add_argument("--no-record", action="store_true", help="print only")
    args, _ = ap.parse_known_args()
    if args.case:
        print(json.dumps(one_case(args.case[0], args.case[1], args)))
        return
    from record import record

    parts = {"kernels": kernels_table, "speed": lambda: speed_table(args), "fidelity": lambda: fidelity_table(args)}
    for name, make in parts.items():
        if args.part in (name, "all"):
            table = make()
            print(table)
            if not args.no_record:
                record(f"model.precision fp32 against bf16: {name}", table)


if __name__ == "__main__":
    main()
