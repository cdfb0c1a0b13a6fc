"""torchrun on the CPU (gloo standing in for NCCL): experts and evaluation networks shared over two processes write
bitwise the outputs of one process, through a plain `torchrun` and through `expert.nproc` / `evaluate.nproc`; a rank
killed mid-run is one line, leaves no output, and a rerun resumes to the same bytes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_project, tiny

from distiller.core.distributed import SINGLE, World
from distiller.core.paths import Layout
from distiller.methods.boost import reference_share
from distiller.methods.synthetic import load as load_synthetic

pytestmark = pytest.mark.integration
RAW = tiny(expert={"num_experts": 3, "epochs": 2}, distill={"ipc": 2, "budgets": [1]}, evaluate={"prefixes": True})
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the thread count of every process, ranks and reference alike
BOOST = tiny(
    distill={"method": "ratbptt", "ipc": 4, "budgets": [1, 2, 3, 4]},
    ratbptt={"iterations": 4},
    boost={"stage_iterations": 3, "reference_iterations": 3},
)


def cli(root: Path, *args: str, env: dict[str, str] | None = None, torchrun: int = 0) -> subprocess.Popen:
    """`distiller *args` in `root`; with `torchrun`, as a torchrun job of that many processes."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"] if torchrun else []
    cmd = [
        sys.executable,
        *launch,
        "-m",
        "distiller",
        *args,
        "--params",
        str(root / "params.yaml"),
        "--root",
        str(root),
    ]
    return subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def ok(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def outputs(root: Path, *folders: str) -> dict[str, bytes]:
    files = [p for f in folders for p in sorted((root / f).rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A prepared project, and a copy where expert-buffer, distill and evaluate ran in one process (one thread)."""
    base = make_project(tmp_path_factory.mktemp("dist") / "base", RAW, "download")
    ref = base.with_name("ref")
    shutil.copytree(base, ref)
    for stage in ("expert-buffer", "distill", "evaluate"):
        ok(cli(ref, stage, env=ONE_THREAD))
    return base, ref


def test_world_shares_units_round_robin():
    assert World(1, 3).share(list(range(8))) == [1, 4, 7] and SINGLE.share([5, 6]) == [5, 6]
    assert World(0, 2).device(torch.device("cpu")) == torch.device("cpu")


def test_references_are_shared_by_the_ranks_that_do_not_boost():
    assert reference_share(SINGLE, (2, 5, 10)) == [2, 5, 10]
    assert reference_share(World(0, 2), (2, 5, 10)) == [] and reference_share(World(1, 2), (2, 5, 10)) == [2, 5, 10]
    assert reference_share(World(1, 3), (2, 5, 10)) == [2, 10] and reference_share(World(2, 3), (2, 5, 10)) == [5]


def test_distill_nproc_writes_the_boosted_set_and_references_of_one_process(tmp_path: Path):
    """RaT-BPTT in a torchrun job: rank 0 boosts while ranks 1 and 2 distil the direct references (rank 1 two of
    them, so they reach rank 0 out of order); every output is that of one process. Three ranks through torchrun
    itself, which `distill.nproc` would refuse on a 2-core machine; `distill.nproc: 2` starts the same job of two,
    whose sets record it in their params stamp."""
    ref = make_project(tmp_path / "ref", BOOST, "download", "expert-buffer")
    project, keyed = tmp_path / "p", tmp_path / "keyed"
    shutil.copytree(ref, project)
    shutil.copytree(ref, keyed)
    ok(cli(ref, "distill", env=ONE_THREAD))
    out = ok(cli(project, "distill", env=ONE_THREAD, torchrun=3))
    assert out.count("distilled 40 images") == 1
    assert outputs(project, "artifacts/distill", "metrics") == outputs(ref, "artifacts/distill", "metrics")
    ok(cli(keyed, "distill", "-S", "distill.nproc=2", env=ONE_THREAD))
    project = keyed  # below: the job distill.nproc started
    assert (project / "logs/distill.torchrun.log").is_file()
    assert (project / "metrics/distill.json").read_bytes() == (ref / "metrics/distill.json").read_bytes()
    mine, theirs = outputs(project, "artifacts/distill"), outputs(ref, "artifacts/distill")
    sets = [name for name in theirs if name.endswith(".safetensors")]
    assert len(sets) == 5 and mine.keys() == theirs.keys()  # the set and the references at 1 (its first stage) to 4
    assert {k: v for k, v in mine.items() if k not in sets} == {k: v for k, v in theirs.items() if k not in sets}
    for name in sets:
        (a, pa), (b, pb) = load_synthetic(project / name), load_synthetic(ref / name)
        assert all(torch.equal(x, y) for x, y in zip(a.tensors().values(), b.tensors().values(), strict=True))
        assert pa["params"]["distill"].pop("nproc") == 2 and pb["params"]["distill"].pop("nproc") == 1  # type: ignore[index]
        assert pa == pb
    assert not (project / ".checkpoints/distill").exists()


def test_torchrun_writes_bitwise_the_experts_and_metrics_of_one_process(reference, tmp_path: Path):
    base, ref = reference
    project = tmp_path / "p"
    shutil.copytree(base, project)
    out = ok(cli(project, "expert-buffer", env=ONE_THREAD, torchrun=2))
    assert out.count("3 experts") == 1  # rank 0 alone reports
    assert outputs(project, "artifacts/experts") == outputs(ref, "artifacts/experts")
    shutil.copytree(ref / "artifacts/distill", project / "artifacts/distill")
    ok(cli(project, "evaluate", env=ONE_THREAD, torchrun=2))
    assert (project / "metrics/evaluate.json").read_bytes() == (ref / "metrics/evaluate.json").read_bytes()
    assert outputs(project, "artifacts/evaluate") == outputs(ref, "artifacts/evaluate")
    assert not list(project.rglob("*.tmp")) and not (project / ".checkpoints/expert-buffer").exists()


def test_nproc_params_run_the_same_job_from_one_command(reference, tmp_path: Path):
    """`expert.nproc` / `evaluate.nproc`: the stage command starts the torchrun job itself, giving each rank its own
    thread count, so the outputs are those of the plain command at the same thread count."""
    base, ref = reference
    project = tmp_path / "p"
    shutil.copytree(base, project)
    ok(cli(project, "expert-buffer", "-S", "expert.nproc=2", env=ONE_THREAD))
    assert outputs(project, "artifacts/experts") == outputs(ref, "artifacts/experts")
    shutil.copytree(ref / "artifacts/distill", project / "artifacts/distill")
    out = ok(cli(project, "evaluate", "-S", "evaluate.nproc=2", env=ONE_THREAD))
    assert out.startswith("distilled (mtt, ipc 2)")
    assert (project / "metrics/evaluate.json").read_bytes() == (ref / "metrics/evaluate.json").read_bytes()
    assert (project / "logs/evaluate.torchrun.log").is_file()


def _rank_pid(root: Path, rank: int) -> int | None:
    """The process of rank `rank` of the job working in `root`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(root).encode() in cmdline and b"-u" in cmdline and f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_a_killed_rank_is_one_line_leaves_no_output_and_a_rerun_resumes(reference, tmp_path: Path):
    base, _ = reference
    longer = ["-S", "expert.num_experts=4", "-S", "expert.epochs=30", "-S", "expert.parallel=1"]
    ref, project = tmp_path / "ref", tmp_path / "p"
    shutil.copytree(base, ref)
    shutil.copytree(base, project)
    ok(cli(ref, "expert-buffer", *longer, env=ONE_THREAD))
    proc = cli(project, "expert-buffer", "-S", "expert.nproc=2", *longer, env=ONE_THREAD)
    first = Layout(project).checkpoints("expert-buffer") / "done-expert_000.safetensors"
    deadline = time.monotonic() + 300
    while not first.exists():  # the first round is done: both ranks are in the second
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    pid = _rank_pid(project, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "failed or was lost" in lines[0] and "rerun to resume" in lines[0], err
    assert not Layout(project).experts_dir.exists()  # no partial output
    ok(cli(project, "expert-buffer", "-S", "expert.nproc=2", *longer, env=ONE_THREAD))
    assert outputs(project, "artifacts/experts") == outputs(ref, "artifacts/experts")
