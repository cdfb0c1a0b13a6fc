"""`expert.nproc`, `distill.nproc` and `evaluate.nproc`: a stage command that runs as a torchrun job on this machine.

`distiller expert-buffer` with `expert.nproc: K` runs `python -m torch.distributed.run --standalone --nproc-per-node K
-m distiller expert-buffer` with the same params, overrides and root, and waits for it, so `dvc repro` keeps one
command per stage. Each rank gets this process's torch thread count (OMP_NUM_THREADS): on the CPU the job computes
bitwise what this process would have (`distiller.core.distributed`). This process keeps the project lock. What torchrun
itself prints goes to `logs/<stage>.torchrun.log`; of the ranks' one-line errors, rank 0's (or else the first) comes
through, so a failed job is one line too, with exit code 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from distiller.core.errors import DistillerError

LOST = "a process of the torchrun job failed or was lost ({}); finished work was kept: rerun to resume"
LAUNCHED = "DISTILLER_LAUNCHED"  # set in the ranks' environment: the launching process holds the project lock


def in_torchrun() -> bool:
    """Whether this process is a rank of a torchrun job of more than one process (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank in its torchrun job (0 outside one)."""
    return int(os.environ.get("RANK", "0")) if in_torchrun() else 0


def share_cores() -> None:
    """In a torchrun job, before torch is imported: OpenMP threads that wait passively. Ranks that together run more
    threads than the machine has cores (as `launch` arranges on a small CPU, for bitwise equality) would otherwise
    spin against each other, many times slower (measured: docs/benchmarks.md); the wait policy changes no result."""
    if in_torchrun():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def launch(command: str, nproc: int, params: Path, overrides: list[str], root: Path) -> None:
    """Run `distiller <command>` as a torchrun job of `nproc` processes; returns when it succeeded."""
    import torch

    log = root / "logs" / f"{command}.torchrun.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sets = [arg for o in overrides for arg in ("-S", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "distiller", command, "--params", str(params), "--root", str(root), *sets]
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads()), "OMP_WAIT_POLICY": "PASSIVE"}  # see share_cores
    env = {**threads, **os.environ, "OMP_NUM_THREADS": threads["OMP_NUM_THREADS"], LAUNCHED: "1"}
    errors = []
    with open(log, "w") as f, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # rank 0's summary goes to stdout, straight through
                f.write(line)
                if line.startswith("error: "):
                    errors.append(line.strip().removeprefix("error: "))
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    if code != 0:
        own = [e for e in errors if not e.startswith("rank ")]
        raise DistillerError((own or errors or [LOST.format(f"torchrun exited with {code}; its report: {log}")])[0])
