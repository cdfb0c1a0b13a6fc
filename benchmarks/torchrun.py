"""expert-buffer and evaluate as one process and as a torchrun job of K processes: wall time, and that the outputs
are the same bytes.

Digits with the default params (8 experts x 10 epochs; evaluate: 5 networks x 1000 epochs per set), one fresh
project per run, each command timed alone. Two thread settings: every process with `--threads` torch threads (the
fair split of a small machine: K processes x 1 thread against 1 x 1), and the default (`expert.nproc` hands each rank
the launching process's thread count, so K ranks share the cores, waiting passively, and compute bitwise what one
process does).

    python benchmarks/torchrun.py                  # K = 2; appends to docs/log.md
    python benchmarks/torchrun.py --nproc 2 --no-record
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def run(root: Path, stage: str, nproc: int, threads: int | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    section = "expert" if stage == "expert-buffer" else "evaluate"
    cmd = [sys.executable, "-m", "distiller", stage, "--root", str(root), "--params", str(root / "params.yaml")]
    cmd += ["-S", f"{section}.nproc={nproc}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def files(root: Path, out: str) -> dict[str, bytes]:
    """The bytes of an output file, or of every file of an output folder."""
    paths = [root / out] if (root / out).is_file() else sorted(p for p in (root / out).rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process in the first setting")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    from helpers import make_project

    rows = [
        f"| stage | threads per process | 1 process (s) | {args.nproc} processes (s) | speed-up | same bytes |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        base = make_project(Path(tmp) / "base", {}, "download")
        for threads in (args.threads, None):
            roots = {}
            for k in (1, args.nproc):
                roots[k] = Path(tmp) / f"p{k}-{threads}"
                shutil.copytree(base, roots[k])
            seconds: dict[tuple[str, int], float] = {}
            for stage, out in (("expert-buffer", "artifacts/experts"), ("evaluate", "metrics/evaluate.json")):
                for k, root in roots.items():
                    if stage == "evaluate":  # the same distilled set in both projects
                        if k == 1:
                            subprocess.run(
                                [
                                    sys.executable,
                                    "-m",
                                    "distiller",
                                    "distill",
                                    "--root",
                                    str(root),
                                    "--params",
                                    str(root / "params.yaml"),
                                ],
                                check=True,
                                capture_output=True,
                            )
                        else:
                            shutil.copytree(roots[1] / "artifacts/distill", root / "artifacts/distill")
                    seconds[stage, k] = run(root, stage, k, threads)
                same = files(roots[1], out) == files(roots[args.nproc], out)
                one, many = seconds[stage, 1], seconds[stage, args.nproc]
                shown = threads or "default"
                rows.append(f"| {stage} | {shown} | {one:.1f} | {many:.1f} | {one / many:.2f}x | {same} |")
                print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if not args.no_record:
        from record import record

        record(f"torchrun: one process against {args.nproc}", table, threads=args.threads)


if __name__ == "__main__":
    main()
