"""The real `dvc repro` in a temporary git repository, with the project's own dvc.yaml and tiny params."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import TINY, resolved, write_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("check", "download", "expert-buffer", "distill", "evaluate", "package")  # dvc.yaml's, in its order
pytestmark = pytest.mark.integration


def sh(cwd: Path, *args: str, quiet: bool = False) -> str:
    """stdout and stderr of a command that must succeed (stdout alone with `quiet`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout if quiet else result.stdout + result.stderr


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "distiller", tmp_path / "distiller", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(tmp_path / "params.yaml", resolved(TINY))
    dvc = [sys.executable, "-m", "dvc"]
    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, *dvc, "init", "-q")
    sh(tmp_path, *dvc, "config", "core.analytics", "false")
    sh(tmp_path, "git", "add", "-A")
    sh(tmp_path, "git", "commit", "-qm", "tiny pipeline")
    return tmp_path


def test_dvc_repro_runs_the_pipeline_and_tracks_params(repo: Path):
    dvc = [sys.executable, "-m", "dvc"]
    out = sh(repo, *dvc, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    card = (repo / "datasets" / "digits-distilled-ipc1" / "README.md").read_text()
    # the card records the git commit and the hash of dvc.lock's upstream entries of this very run
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    assert f"git_commit: {head}" in card
    upstream = {k: v for k, v in lock["stages"].items() if k not in ("package", "check")}
    digest = hashlib.sha256(json.dumps(upstream, sort_keys=True).encode()).hexdigest()
    assert f"dvc_lock_sha256: {digest}" in card
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert metrics["ipc"] == 1 and metrics["method"] == "mtt"
    assert "up to date" in sh(repo, *dvc, "status")

    # params that say how distill runs, not what it makes, re-run nothing but the check of the file
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    write_params(repo / "params.yaml", {**raw, "distill": {**raw["distill"], "nproc": 2, "checkpoint_every": 7}})
    assert set(json.loads(sh(repo, *dvc, "status", "--json", quiet=True))) == {"check"}

    # a param only `evaluate` reads re-runs only `evaluate`
    raw["evaluate"]["epochs"] = 3
    write_params(repo / "params.yaml", raw)
    out = sh(repo, *dvc, "repro")
    assert "Running stage 'evaluate'" in out and "Running stage 'distill'" not in out
    assert "Running stage 'package'" in out  # the card records the new accuracy

    # the experiment interface the README documents
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "lock")
    out = sh(repo, *dvc, "exp", "run", "-S", "distill.ipc=2")
    assert "Running stage 'distill'" in out and "Running stage 'expert-buffer'" not in out
    assert json.loads((repo / "metrics" / "evaluate.json").read_text())["ipc"] == 2
    assert (repo / "datasets" / "digits-distilled-ipc2" / "ipc2" / "train-00000-of-00001.parquet").is_file()
    plots = sh(repo, *dvc, "plots", "show", "--json")
    assert "distill-loss" in plots and "grid.png" in plots

    # RaT-BPTT's own params never touch the expert buffer: only distill (and what follows) goes stale
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["ratbptt"]["iterations"] += 1
    write_params(repo / "params.yaml", raw)
    stale = json.loads(sh(repo, *dvc, "status", "--json", quiet=True))
    assert "distill" in stale and "expert-buffer" not in stale


def test_a_typo_in_params_yaml_stops_dvc_repro(repo: Path):
    """A key no stage lists (`distill.ipcc`, meant as `distill.ipc`) added after a run: without the `check` stage,
    `dvc repro` would say everything is up to date. It runs `check` alone, which fails in one line naming the key; the
    pipeline's outputs are untouched, and with the typo fixed only the check's marker comes back."""
    dvc = [sys.executable, "-m", "dvc"]
    sh(repo, *dvc, "repro")
    lock = (repo / "dvc.lock").read_bytes()
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    write_params(repo / "params.yaml", {**raw, "distill": {**raw["distill"], "ipcc": 3}})
    assert set(json.loads(sh(repo, *dvc, "status", "--json", quiet=True))) == {"check"}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([*dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "unknown key 'distill.ipcc' (did you mean 'distill.ipc'?)" in out
    assert "Traceback" not in out and [s for s in STAGES if f"Running stage '{s}'" in out] == ["check"]
    assert (repo / "dvc.lock").read_bytes() == lock
    write_params(repo / "params.yaml", raw)  # fixed: the marker DVC removed comes back, nothing else runs
    out = sh(repo, *dvc, "repro")
    assert not [s for s in STAGES[1:] if f"Running stage '{s}'" in out], out
    assert "up to date" in sh(repo, *dvc, "status")


def test_an_edited_module_makes_exactly_the_stages_that_run_it_stale(repo: Path):
    """The defect this guards against: a stage body edited while dvc.yaml does not list its module. Every module of
    a stage's import closure is a dep (tests/test_dvc_deps.py), so `dvc status` names exactly the stages that run it."""
    dvc = [sys.executable, "-m", "dvc"]
    twin = repo.with_name(repo.name + "-twin")
    shutil.copytree(repo, twin)
    sh(repo, *dvc, "repro")
    sh(twin, *dvc, "repro")
    # every output is a function of its inputs: two runs in separate processes record the same hashes
    outs = lambda r: {k: v["outs"] for k, v in yaml.safe_load((r / "dvc.lock").read_text())["stages"].items()}
    assert outs(repo) == outs(twin)

    def stale_after_editing(module: str) -> set[str]:
        path = repo / module
        original = path.read_text()
        path.write_text(original.replace('"""', '"""Edited. ', 1))  # one line of the module changes
        try:
            return set(json.loads(sh(repo, *dvc, "status", "--json", quiet=True)))
        finally:
            path.write_text(original)

    assert stale_after_editing("distiller/stages/evaluate.py") == {"evaluate"}
    assert stale_after_editing("distiller/scoring/scorecard.py") == {"evaluate"}
    assert stale_after_editing("distiller/methods/mtt.py") == {"distill"}
    assert stale_after_editing("distiller/packaging/readme.py") == {"package"}
    every = set(STAGES)
    assert stale_after_editing("distiller/core/params.py") == every
    assert stale_after_editing("distiller/core/session.py") == every  # the lock runs with every stage command
    assert stale_after_editing("distiller/cli/app.py") == set()  # options and help text only

    path = repo / "distiller/stages/evaluate.py"
    path.write_text(path.read_text().replace('"""', '"""Edited. ', 1))
    out = sh(repo, *dvc, "repro")
    assert "Running stage 'evaluate'" in out and "Running stage 'distill'" not in out
    assert "Running stage 'download'" not in out and "Running stage 'expert-buffer'" not in out


def test_outputs_travel_through_a_dvc_remote_to_a_fresh_clone(repo: Path, tmp_path: Path):
    """Expert buffers and every other output are shareable artifacts: `dvc push` to a remote (a local folder here),
    then a fresh clone that `dvc pull`s them is up to date and `dvc repro` has nothing to run."""
    dvc = [sys.executable, "-m", "dvc"]
    sh(repo, *dvc, "repro")
    sh(repo, *dvc, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "pipeline run and its remote")
    sh(repo, *dvc, "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "artifacts" / "experts").exists()  # git carries only the pointers (dvc.lock, .gitignore)
    sh(clone, *dvc, "pull")
    assert (clone / "artifacts" / "experts" / "manifest.json").read_bytes() == (
        repo / "artifacts" / "experts" / "manifest.json"
    ).read_bytes()
    assert "up to date" in sh(clone, *dvc, "status")
    out = sh(clone, *dvc, "repro")
    assert "Running stage" not in out, out
