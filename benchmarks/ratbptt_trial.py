"""One RaT-BPTT setting on digits at IPC 1, distilled with the pipeline's random streams and scored at several epochs.

    python benchmarks/ratbptt_trial.py -S ratbptt.soft_labels=true -S ratbptt.iterations=600 --epochs 300,1000

Runs what `distiller distill -S distill.method=ratbptt -S distill.ipc=1 ...` runs (the first Boost-DD stage), then
scores the set with the RaT-BPTT evaluation protocol (5 networks) for each number of epochs. Prints one line and
appends it to benchmarks/RESULTS.md. `--threads` fixes torch's thread count (results depend on it in the last bits).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import time
from pathlib import Path

import torch

from distiller import ratbptt
from distiller._runtime import configure_torch
from distiller.data import prepare
from distiller.evaluate import protocol_for, score
from distiller.params import load_params, parse_override


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--epochs", default="300,1000")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--params", default=str(Path(__file__).parents[1] / "params.yaml"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configure_torch()
    overrides = {"distill.method": "ratbptt", "distill.ipc": 1, "distill.budgets": [1]}
    overrides.update(dict(parse_override(o) for o in args.overrides))
    p = load_params(args.params, overrides)
    data, device = prepare(p.data), torch.device("cpu")
    t0 = time.perf_counter()
    syn, _ = ratbptt.distill(
        data, p.ratbptt, p.model, p.augment, p.seed, 1, device, iterations=p.ratbptt.iterations, key="direct-1"
    )
    seconds = time.perf_counter() - t0
    results = []
    for epochs in (int(e) for e in args.epochs.split(",")):
        proto = dataclasses.replace(protocol_for(p, "ratbptt"), epochs=epochs)
        acc = score(syn.images, syn.targets, data, p, proto, lr=p.evaluate.real_lr, runs=5, device=device)
        results.append(f"{epochs} epochs {acc}")
    line = f"{' '.join('-S ' + o for o in args.overrides) or 'defaults'}: distill {seconds:.0f} s; " + "; ".join(
        results
    )
    print(line)
    if not args.no_record:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(
                f"\n- RaT-BPTT IPC 1 trial ({datetime.date.today()}, CPU, {os.cpu_count()} cores, {args.threads} "
                f"thread(s)): `python benchmarks/ratbptt_trial.py {' '.join('-S ' + o for o in args.overrides)} "
                f"--epochs {args.epochs} --threads {args.threads}`: {line}\n"
            )


if __name__ == "__main__":
    main()
