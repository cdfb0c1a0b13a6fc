"""Speed: distillation iterations per second, and expert-buffer and evaluation throughput, one network at a time
against several at once.

    python benchmarks/speed.py --device auto --threads 1      # prints a table, appends it to benchmarks/log.md
    python benchmarks/speed.py --mnist-shaped --no-record     # also 1x28x28 random data at widths 64 and 128

Fixed settings (digits, 8x8, 1347 training images; the default ConvNet: depth 2, width 64, instance norm, avg-pool;
the default DSA):
- MTT: ipc 10, N = 20 student steps on all 100 images, M = 2 expert epochs; 10 iterations after 2 of warm-up, on a
  buffer of 2 experts of 3 epochs.
- RaT-BPTT: ipc 10, T = 40, W = 20, inner Adam, 10 images per class per inner step, real batch 1024; 5 outer steps
  after 1 of warm-up.
- Expert buffer: 4 experts x 2 epochs (batch 256, plain SGD, DSA), trained one at a time, then all 4 at once.
- Evaluation: 5 networks x 100 epochs under the MTT protocol (SGD, momentum 0.9, weight decay 5e-4, batch 256, lr x0.1
  at half, DSA) on random real sets of ipc 1 (10 images) and ipc 10 (100 images), one at a time, then all 5 at once.
  The accuracies of "at once (exact)" must equal those of "one at a time" exactly; the table says whether they did.
- `--mnist-shaped`: the same expert and evaluation measurements on random 1x28x28 data (2000 train, 500 test images,
  10 classes) with a depth-3 ConvNet of width 64 and of width 128.

"one at a time" is `train.train` on one `nn.Module` after another (the plain path); "at once (exact)" is
`train.train_many` with each network's own forward in one shared step (bitwise equal to it on the CPU); "at once
(grouped)" is its vmapped forward with vmap's own grouped kernels (equal only up to rounding). Throughput counts
training images seen (networks x epochs x set size) per second. Peak memory: CUDA's `max_memory_allocated` per
measurement; on the CPU the process's peak resident set (reset before each measurement through /proc/self/clear_refs
where Linux allows it, otherwise the peak so far).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import resource
import time
from collections.abc import Callable

import torch
from record import record

from distiller.core.params import Params, params_from_dict
from distiller.core.runtime import configure_torch, generator, resolve_device
from distiller.data.prepare import prepare
from distiller.data.prepared import Prepared
from distiller.methods import experts, mtt, ratbptt
from distiller.methods.buffer import ExpertBuffer
from distiller.methods.run import Context
from distiller.methods.synthetic import real_subset
from distiller.nets import batched, models
from distiller.nets.train import accuracy, train_many
from distiller.scoring import evaluate

MiB = 2**20


class Meter:
    """Seconds and peak memory of one measurement on `device`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM, the peak resident set
        except OSError:
            pass

    def _peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MiB
        try:
            with open("/proc/self/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            return kib / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def __call__(self, fn: Callable[[], object]) -> tuple[float, float, object]:
        self._reset_peak()
        start = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start, self._peak_mib(), out


def params(**sections: dict) -> Params:
    return params_from_dict({"seed": 0, **sections})


def mnist_shaped(digits: Prepared) -> Prepared:
    """Random 1x28x28 data of 10 classes (2000 train, 500 test), reusing the digits' metadata."""
    g = generator(0, "mnist-shaped")
    return dataclasses.replace(
        digits,
        source="random-1x28x28",
        train_images=torch.randn(2000, 1, 28, 28, generator=g),
        train_labels=torch.arange(2000) % 10,
        test_images=torch.randn(500, 1, 28, 28, generator=g),
        test_labels=torch.arange(500) % 10,
        content_hash="random-1x28x28",
    )


def bench_mtt(data: Prepared, device: torch.device, meter: Meter) -> dict[str, object]:
    p = params(
        expert={"num_experts": 2, "epochs": 3},
        distill={"ipc": 10},
        mtt={"iterations": 2, "syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 2},
    )
    trained = experts.train_experts(data, p.model, p.expert, p.augment, p.seed, [0, 1], device)
    buffer = ExpertBuffer([t for t, _ in trained], {})
    ctx = Context(data, p.model, p.augment, p.seed, device)
    mtt.distill(ctx, buffer, p.mtt, 10, p.expert.lr)  # warm-up
    m = dataclasses.replace(p.mtt, iterations=10)
    seconds, peak, _ = meter(lambda: mtt.distill(ctx, buffer, m, 10, p.expert.lr))
    return {"what": "MTT distill (ipc 10, N 20, M 2)", "mode": "-", "rate": 10 / seconds, "unit": "it/s", "peak": peak}


def bench_ratbptt(data: Prepared, device: torch.device, meter: Meter) -> dict[str, object]:
    p = params(distill={"method": "ratbptt", "ipc": 10})
    ctx = Context(data, p.model, p.augment, p.seed, device)
    run = lambda n: ratbptt.distill(ctx, p.ratbptt, 10, iterations=n, key="speed")
    run(1)  # warm-up
    seconds, peak, _ = meter(lambda: run(5))
    r = p.ratbptt
    what = f"RaT-BPTT distill (ipc 10, T {r.horizon}, W {r.window}, B {r.real_batch})"
    return {"what": what, "mode": "-", "rate": 5 / seconds, "unit": "it/s", "peak": peak}


def bench_experts(data: Prepared, p: Params, device: torch.device, meter: Meter, label: str) -> list[dict[str, object]]:
    ep = dataclasses.replace(p.expert, num_experts=4, epochs=2)  # not in p: mtt's epochs would exceed them
    k, e = ep.num_experts, ep.epochs
    images = k * e * len(data.train_labels)

    def run(idx: list[int], kernels: batched.Kernels = "exact") -> object:
        return experts.train_experts(data, p.model, ep, p.augment, p.seed, idx, device, kernels=kernels)

    run([0, 1])  # warm-up
    rows = []
    seconds, peak, _ = meter(lambda: [run([i]) for i in range(k)])
    base = images / seconds
    rows.append({"what": f"expert buffer{label} ({k} experts x {e} epochs)", "mode": "one at a time", "rate": base})
    rows[-1].update(unit="img/s", peak=peak)
    for kernels in ("exact", "grouped"):
        seconds, peak, _ = meter(functools.partial(run, list(range(k)), kernels))
        rate = images / seconds
        rows.append({"what": "", "mode": f"{k} at once ({kernels})", "rate": rate, "unit": "img/s", "peak": peak})
        rows[-1]["speedup"] = rate / base
    return rows


def bench_evaluation(
    data: Prepared, p: Params, device: torch.device, meter: Meter, ipc: int, label: str
) -> list[dict[str, object]]:
    runs, epochs = 5, 100
    p = dataclasses.replace(p, evaluate=dataclasses.replace(p.evaluate, epochs=epochs, num_eval=runs))
    x, y = real_subset(data, ipc, generator(0, "speed-subset"))
    proto = evaluate.protocol_for(p, "mtt")
    images = runs * epochs * len(y)

    def scored(parallel: int, epochs: int = epochs) -> tuple[float, ...]:
        q = dataclasses.replace(p, evaluate=dataclasses.replace(p.evaluate, parallel=parallel))
        return evaluate.score(x, y, data, q, proto, lr=0.01, runs=runs, epochs=epochs, device=device).runs

    def grouped() -> tuple[float, ...]:
        nets = [
            models.build_model(p.model, data.image_shape, data.num_classes, generator(p.seed, "eval-init", i), device)
            for i in range(runs)
        ]
        gens = [generator(p.seed, "eval-train", i, device=device) for i in range(runs)]
        cfg = proto.config(0.01, epochs)
        train_many(nets, x.to(device), y.to(device), cfg, proto.augment, gens, kernels="grouped")
        return tuple(accuracy(n, data.test_images, data.test_labels) for n in nets)

    scored(1, 2), scored(runs, 2)  # warm-up
    what = f"evaluation{label} ({runs} nets x {epochs} epochs, ipc {ipc}: {len(y)} images)"
    seconds, peak, one = meter(lambda: scored(1))
    base = images / seconds
    rows = [{"what": what, "mode": "one at a time", "rate": base, "unit": "img/s", "peak": peak}]
    seconds, peak, together = meter(lambda: scored(runs))
    same = "identical accuracies" if together == one else "ACCURACIES DIFFER"
    rows.append({"what": "", "mode": f"{runs} at once (exact; {same})", "rate": images / seconds, "unit": "img/s"})
    rows[-1].update(peak=peak, speedup=images / seconds / base)
    seconds, peak, _ = meter(grouped)
    rows.append({"what": "", "mode": f"{runs} at once (grouped)", "rate": images / seconds, "unit": "img/s"})
    rows[-1].update(peak=peak, speedup=images / seconds / base)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| measurement | mode | throughput | vs one at a time | peak memory (MiB) |", "|---|---|---|---|---|"]
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        rate = f"{r['rate']:,.2f} {r['unit']}" if r["unit"] == "it/s" else f"{r['rate']:,.0f} {r['unit']}"
        lines.append(f"| {r['what']} | {r['mode']} | {rate} | {speedup} | {r['peak']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads (CPU)")
    ap.add_argument("--mnist-shaped", action="store_true", help="also random 1x28x28 data at widths 64 and 128")
    ap.add_argument("--skip-distill", action="store_true", help="only the expert and evaluation throughput")
    ap.add_argument("--note", default="", help="added to the log's heading (e.g. 'shared machine')")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/log.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configure_torch()
    device = resolve_device(args.device)
    meter = Meter(device)
    digits = prepare(params().data).to(device)
    rows: list[dict[str, object]] = []
    if not args.skip_distill:
        rows += [bench_mtt(digits, device, meter), bench_ratbptt(digits, device, meter)]
    p = params()
    rows += bench_experts(digits, p, device, meter, "")
    for ipc in (1, 10):
        rows += bench_evaluation(digits, p, device, meter, ipc, "")
    if args.mnist_shaped:
        data = mnist_shaped(digits).to(device)
        for width in (64, 128):
            q = params(model={"depth": 3, "width": width})
            label = f", 1x28x28 width {width}"
            rows += bench_experts(data, q, device, meter, label)
            rows += bench_evaluation(data, q, device, meter, 10, label)
    text = table(rows)
    print(text)
    if not args.no_record:
        record("Speed", text, device, args.note)


if __name__ == "__main__":
    main()
