"""One RaT-BPTT setting on digits at IPC 1, distilled as the pipeline does and scored at several epochs.

    python benchmarks/ratbptt_trial.py -S ratbptt.soft_labels=true -S ratbptt.iterations=600 --epochs 300,1000

Runs what `distiller distill -S distill.method=ratbptt -S distill.ipc=1 ...` runs (Boost-DD over the one budget 1,
through the public `boost.boost`), then scores the set with the RaT-BPTT evaluation protocol (5 networks) for each
number of epochs. Prints one line and records it in benchmarks/log.md. `--threads` fixes torch's thread count (results
depend on it in the last bits).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from record import record

from distiller.core.config import parse_override
from distiller.core.params import load_params
from distiller.core.runtime import configure_torch
from distiller.data.prepare import prepare
from distiller.methods import boost
from distiller.methods.run import Context
from distiller.scoring.evaluate import protocol_for, score


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
    ctx = Context(data, p.model, p.augment, p.seed, device, p.guard)
    syn = boost.boost(ctx, p.ratbptt, p.boost, (1,), references=False).boosted
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
        record("RaT-BPTT IPC 1 trial on digits", f"- {line}")


if __name__ == "__main__":
    main()
