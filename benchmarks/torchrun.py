"""expert-buffer, distill (RaT-BPTT) and evaluate as one process and as a torchrun job of K processes: wall time, and
that the outputs are the same.

Digits with the default params (8 experts x 10 epochs; evaluate: 5 networks x 1000 epochs per set; RaT-BPTT with
Boost-DD over budgets 1, 2, 5, 10 and its direct references), one fresh project per run, each command timed alone.
Two thread settings: every process with `--threads` torch threads (the fair split of a small machine: K processes x 1
thread against 1 x 1), and the default (`expert.nproc` hands each rank the launching process's thread count, so K
ranks share the cores, waiting passively, and compute bitwise what one process does). The distill stage runs in the
first setting only (a digits RaT-BPTT run takes minutes). Its sets are compared by their tensors, curves and metrics:
the params stamped in them record distill.nproc.

    python benchmarks/torchrun.py                  # K = 2; appends to benchmarks/log.md
    python benchmarks/torchrun.py --nproc 2 --no-record
    python benchmarks/torchrun.py --only-distill      # only the RaT-BPTT distill row
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
    section = {"expert-buffer": "expert", "distill": "distill", "evaluate": "evaluate"}[stage]
    cmd = [sys.executable, "-m", "distiller", stage, "--root", str(root), "--params", str(root / "params.yaml")]
    cmd += ["-S", f"{section}.nproc={nproc}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def files(root: Path, out: str) -> dict[str, bytes]:
    """The bytes of an output file, or of every file of an output folder."""
    paths = [root / out] if (root / out).is_file() else sorted(p for p in (root / out).rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def same_sets(a: Path, b: Path) -> bool:
    """The distill outputs of two projects: the same tensors in every set, and the same other files and metrics."""
    from distiller.methods.synthetic import load

    def content(root: Path) -> dict[str, object]:
        out: dict[str, object] = dict(files(root, "metrics/distill.json"))
        for name, data in files(root, "artifacts/distill").items():
            out[name] = (
                [t.numpy().tobytes() for t in load(root / name)[0].tensors().values()]
                if name.endswith(".safetensors")
                else data
            )
        return out

    return content(a) == content(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process in the first setting")
    parser.add_argument("--only-distill", action="store_true", help="time only the RaT-BPTT distill stage")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    from helpers import make_project

    rows = [
        f"| stage | threads per process | 1 process (s) | {args.nproc} processes (s) | speed-up | same outputs |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        base = make_project(Path(tmp) / "base", {}, "download")
        for threads in () if args.only_distill else (args.threads, None):
            roots = {}
            for k in (1, args.nproc):
                roots[k] = Path(tmp) / f"p{k}-{threads}"
                shutil.copytree(base, roots[k])
            for stage, out in (("expert-buffer", "artifacts/experts"), ("evaluate", "metrics/evaluate.json")):
                if stage == "evaluate":  # the same distilled set in both projects
                    run(roots[1], "distill", 1, threads)
                    shutil.copytree(roots[1] / "artifacts/distill", roots[args.nproc] / "artifacts/distill")
                seconds = {k: run(root, stage, k, threads) for k, root in roots.items()}
                same = files(roots[1], out) == files(roots[args.nproc], out)
                rows.append(row(stage, threads, seconds[1], seconds[args.nproc], same))
        roots = {
            k: make_project(Path(tmp) / f"ratbptt{k}", {"distill": {"method": "ratbptt"}}, "download")
            for k in (1, args.nproc)
        }
        seconds = {k: run(root, "distill", k, args.threads) for k, root in roots.items()}
        same = same_sets(roots[1], roots[args.nproc])
        rows.append(row("distill (ratbptt)", args.threads, seconds[1], seconds[args.nproc], same))
    table = "\n".join(rows)
    print(table)
    if not args.no_record:
        from record import record

        record(f"torchrun: one process against {args.nproc}", table, threads=args.threads)


def row(stage: str, threads: int | None, one: float, many: float, same: bool) -> str:
    line = f"| {stage} | {threads or 'default'} | {one:.1f} | {many:.1f} | {one / many:.2f}x | {same} |"
    print(line, flush=True)
    return line


if __name__ == "__main__":
    main()
