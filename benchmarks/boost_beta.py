"""Boost-DD's beta on digits: the same boosting run for each beta, every prefix scored.

Budgets 1, 2, 5 (ipc 5) with the default params otherwise, through the public `boost.boost`: the first stage runs
`ratbptt.iterations` steps, stages 2 and 5 run `boost.stage_iterations` steps each, and each prefix is scored with the
RaT-BPTT evaluation protocol (5 networks). Beta does not touch the first stage, so every beta distills the same first
set again (the price of going through the public API: about 1200 of each run's 1400 steps).
Prints one line per beta and records the table in benchmarks/log.md.

    python benchmarks/boost_beta.py --betas 0,0.1,1 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from record import record

from distiller.core.params import params_from_dict
from distiller.core.runtime import configure_torch
from distiller.data.prepare import prepare
from distiller.methods import boost
from distiller.methods.run import Context
from distiller.methods.synthetic import SyntheticSet
from distiller.scoring.evaluate import protocol_for, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--betas", default="0,0.1,1")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configure_torch()
    p = params_from_dict({"distill": {"method": "ratbptt", "ipc": 5, "budgets": [1, 2, 5]}})
    data, device = prepare(p.data), torch.device("cpu")
    ctx = Context(data, p.model, p.augment, p.seed, device, p.guard)
    proto = protocol_for(p, "ratbptt")

    def acc(s: SyntheticSet) -> str:
        return str(score(s.images, s.targets, data, p, proto, lr=p.evaluate.real_lr, runs=5, device=device))

    lines = ["| beta | ipc 1 | ipc 2 | ipc 5 | seconds |", "|---|---|---|---|---|"]
    for beta in (float(b) for b in args.betas.split(",")):
        t0 = time.perf_counter()
        result = boost.boost(ctx, p.ratbptt, dataclasses.replace(p.boost, beta=beta), (1, 2, 5), references=False)
        row = f"| {beta:g} | " + " | ".join(acc(result.boosted.prefix(k)) for k in (1, 2, 5))
        lines.append(row + f" | {time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
    if not args.no_record:
        record("Boost-DD beta sweep on digits", "\n".join(lines))


if __name__ == "__main__":
    main()
