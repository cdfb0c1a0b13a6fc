"""Boost-DD's beta on digits: one first stage, then the same later stages for each beta; every prefix scored.

Budgets 1, 2, 5 (ipc 5) with the default params otherwise: stage 1 runs `ratbptt.iterations` steps with the
pipeline's random streams, stages 2 and 5 run `boost.stage_iterations` steps each from it for every beta, and each
prefix is scored with the RaT-BPTT evaluation protocol (5 networks). Prints one line per beta and appends the table to
benchmarks/RESULTS.md.

    python benchmarks/boost_beta.py --betas 0,0.1,1 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch

from distiller import ratbptt
from distiller._runtime import configure_torch
from distiller.data import prepare
from distiller.evaluate import protocol_for, score
from distiller.params import params_from_dict
from distiller.synthetic import SyntheticSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--betas", default="0,0.1,1")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configure_torch()
    p = params_from_dict({"distill": {"method": "ratbptt", "ipc": 5, "budgets": [1, 2, 5]}})
    data, device, r = prepare(p.data), torch.device("cpu"), p.ratbptt
    proto = protocol_for(p, "ratbptt")

    def acc(s: SyntheticSet) -> str:
        return str(score(s.images, s.targets, data, p, proto, lr=p.evaluate.real_lr, runs=5, device=device))

    def stage(ipc: int, key: str, iterations: int, start: SyntheticSet | None, beta: float) -> SyntheticSet:
        syn, _ = ratbptt.distill(
            data, r, p.model, p.augment, p.seed, ipc, device, iterations=iterations, key=key, start=start, beta=beta
        )
        return syn

    t0 = time.perf_counter()
    first = stage(1, "direct-1", r.iterations, None, 1.0)
    lines = [
        f"stage 1 ({time.perf_counter() - t0:.0f} s): {acc(first)}",
        "",
        "| beta | ipc 1 | ipc 2 | ipc 5 |",
        "|---|---|---|---|",
    ]
    print(lines[0], flush=True)
    for beta in (float(b) for b in args.betas.split(",")):
        syn = first
        for b in (2, 5):
            syn = stage(b, f"boost-{b}", p.boost.stage_iterations, syn, beta)
        row = f"| {beta:g} | " + " | ".join(acc(syn.prefix(k)) for k in (1, 2, 5)) + " |"
        print(row, flush=True)
        lines.append(row)
    if not args.no_record:
        head = (
            f"\n### Boost-DD beta sweep on digits ({datetime.date.today()}, CPU, {os.cpu_count()} cores, "
            f"{args.threads} thread(s))\n\n`python benchmarks/boost_beta.py --betas {args.betas} "
            f"--threads {args.threads}`\n\n"
        )
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
