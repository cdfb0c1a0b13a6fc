"""What glibc's malloc thresholds cost the pipeline: the default `evaluate` stage with and without
`configure_torch`'s mallopt, each in a fresh process.

    python benchmarks/allocator.py --repeats 2

First the default project is built once in a temporary folder (download, expert-buffer, distill: the defaults of
params.yaml on digits). Then each child runs `distiller.stages.evaluate.run` on it (5 networks x 1000 epochs on the
distilled set and on a random real set, the full-data network) and reports its wall time, system time and minor page
faults (getrusage). "default" leaves glibc's thresholds alone; "tuned" is what every stage does. The accuracies must
match to the last digit.
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


def child(root: Path, tuned: bool) -> dict[str, object]:
    from distiller.core import runtime
    from distiller.core.params import Params
    from distiller.core.paths import Layout
    from distiller.stages import evaluate

    if not tuned:
        runtime._keep_freed_memory = lambda: None  # every stage calls configure_torch; leave glibc's defaults
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    m = evaluate.run(Params(), Layout(root))
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": time.perf_counter() - t0,
        "system": after.ru_stime - before.ru_stime,
        "faults": after.ru_minflt - before.ru_minflt,
        "runs": [m["accuracy"]["runs"], m["baselines"]["random_real"]["runs"], m["baselines"]["full_data"]["runs"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("ROOT", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1] == "tuned")))
        return
    from distiller.core.params import Params
    from distiller.core.paths import Layout
    from distiller.stages import distill, download, expert_buffer

    lines = ["| malloc | evaluate (s) | system (s) | minor page faults |", "|---|---|---|---|"]
    accuracies = set()
    with tempfile.TemporaryDirectory(prefix="distiller-allocator-") as tmp:
        for stage in (download, expert_buffer, distill):
            stage.run(Params(), Layout(tmp))
        for _ in range(args.repeats):
            for mode in ("default", "tuned"):
                cmd = [sys.executable, __file__, "--child", tmp, mode]
                r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
                accuracies.add(json.dumps(r["runs"]))
                lines.append(f"| {mode} | {r['seconds']:.1f} | {r['system']:.1f} | {r['faults']:,} |")
                print(lines[-1], flush=True)
    lines += ["", "identical accuracies in every run" if len(accuracies) == 1 else "ACCURACIES DIFFER"]
    print(lines[-1])
    if not args.no_record:
        from record import record

        record("Allocator: the default evaluate stage with and without mallopt", "\n".join(lines))


if __name__ == "__main__":
    main()
