"""Nothing lost: kill and resume (bitwise equal), a kill during a checkpoint write, guarded optimisation, and fuzzed
params and truncated files that must each end in one clean line, never a traceback or a partial output."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, make_project, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core import checkpoint as ckpt
from distiller.core import files
from distiller.core.errors import DistillerError
from distiller.core.params import Params, load_params, params_from_dict
from distiller.core.paths import Layout
from distiller.data.prepared import load_prepared
from distiller.methods import mtt, ratbptt
from distiller.methods.buffer import load_buffer, load_trajectory
from distiller.methods.run import Context
from distiller.methods.synthetic import load as load_synthetic

runner = CliRunner()

# `python -c SLOW_RENAME ...` runs the CLI with every rename of a checkpoint file delayed by a second, so that a kill
# lands while a checkpoint is written and not yet renamed over the previous one.
SLOW_RENAME = """
import os, sys, time
real = os.replace
def slow(src, dst, *a, **k):
    if str(dst).endswith(".safetensors") and "/.checkpoints/" in str(dst):
        time.sleep(1)
    return real(src, dst, *a, **k)
os.replace = slow
from distiller.cli.app import main
sys.argv[0] = "distiller"
main()
"""


def cli(project: Path, *args: str, slow_checkpoints: bool = False) -> subprocess.Popen:
    launch = ["-c", SLOW_RENAME] if slow_checkpoints else ["-m", "distiller"]
    cmd = [sys.executable, *launch, *args, "--params", str(project / "params.yaml"), "--root", str(project)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(project: Path, *args: str) -> str:
    proc = cli(project, *args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"finished before the kill: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def kill_when(proc: subprocess.Popen, condition) -> None:
    """SIGKILL the run as soon as `condition()` holds (it must still be running then)."""
    wait_for(condition, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def reference_and_copy(base: Path, root: Path, stage: str) -> tuple[Path, Path]:
    """Two copies of `base`: one where `stage` ran uninterrupted (the reference), one fresh to interrupt."""
    ref, project = root / "ref", root / "p"
    shutil.copytree(base, ref)
    run_cli(ref, stage)
    shutil.copytree(base, project)
    return ref, project


MTT_RUN = tiny(mtt={"iterations": 300}, distill={"ipc": 1, "checkpoint_every": 10})


def output_bytes(root: Path) -> dict[str, bytes]:
    """Every file the distill stage declares (artifacts/distill and metrics/distill.json), by relative path."""
    lay = Layout(root)
    files = [*sorted(p for p in lay.distill_dir.rglob("*") if p.is_file()), lay.distill_metrics]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def mtt_reference(tmp_path_factory) -> tuple[Path, torch.Tensor, str, dict[str, bytes]]:
    """A prepared project with experts, and the images, curves and output bytes of an uninterrupted MTT run on it."""
    base = make_project(tmp_path_factory.mktemp("mtt") / "base", MTT_RUN, "download", "expert-buffer")
    ref = tmp_path_factory.mktemp("mtt-ref") / "ref"
    shutil.copytree(base, ref)
    run_cli(ref, "distill")
    syn, _ = load_synthetic(Layout(ref).synthetic)
    return base, syn.images, Layout(ref).curves.read_text(), output_bytes(ref)


@pytest.mark.integration
def test_sigkill_mid_run_then_rerun_resumes_bitwise_equal(mtt_reference, tmp_path: Path):
    base, images, curves, outputs = mtt_reference
    project = tmp_path / "p"
    shutil.copytree(base, project)
    checkpoint = Layout(project).checkpoints("distill") / "mtt.safetensors"
    kill_when(cli(project, "distill"), checkpoint.exists)
    assert not Layout(project).distill_dir.exists()  # DVC sees no output of an unfinished stage
    out = run_cli(project, "distill")
    assert "resumed from checkpoints (mtt after step" in out
    syn, _ = load_synthetic(Layout(project).synthetic)
    assert torch.equal(syn.images, images)
    assert Layout(project).curves.read_text() == curves
    assert output_bytes(project) == outputs  # byte for byte: DVC cannot tell a resumed run from an uninterrupted one
    assert not Layout(project).checkpoints("distill").exists()  # removed once the outputs are complete


@pytest.mark.integration
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(mtt_reference, tmp_path: Path):
    base, images, _, _ = mtt_reference
    project = tmp_path / "p"
    shutil.copytree(base, project)
    directory = Layout(project).checkpoints("distill")
    proc = cli(project, "distill", slow_checkpoints=True)
    # the second checkpoint is half-way: its temporary file is written and not yet renamed over the first
    kill_when(proc, lambda: (directory / "mtt.safetensors").exists() and any(directory.glob(".mtt.safetensors.*.tmp")))
    store = ckpt.Store(directory, "any", 10)
    tensors, meta = files.load_safetensors(directory / "mtt.safetensors", ckpt.FORMAT, ckpt.FORMAT_VERSION, "ckpt")
    assert meta["state"]["iteration"] == 10 and "images" in tensors
    assert store.load("mtt") is None  # another fingerprint: a stale checkpoint is ignored, not trusted
    out = run_cli(project, "distill")
    assert "resumed from checkpoints (mtt after step 10)" in out
    syn, _ = load_synthetic(Layout(project).synthetic)
    assert torch.equal(syn.images, images)


@pytest.mark.integration
def test_ratbptt_boosting_resumes_finished_and_interrupted_runs(tmp_path: Path):
    raw = tiny(
        distill={"method": "ratbptt", "ipc": 2, "budgets": [1, 2], "checkpoint_every": 2},
        ratbptt={"iterations": 40},
        boost={"stage_iterations": 40, "reference_iterations": 40},
    )
    base = make_project(tmp_path / "base", raw, "download", "expert-buffer")
    ref, project = reference_and_copy(base, tmp_path, "distill")
    directory = Layout(project).checkpoints("distill")
    kill_when(
        cli(project, "distill"),
        lambda: (directory / "done-stage-1.safetensors").exists() and (directory / "boost-2.safetensors").exists(),
    )
    out = run_cli(project, "distill")
    assert "done-stage-1" in out and "boost-2 after step" in out
    for path in (Layout(ref).synthetic, Layout(ref).reference(2)):
        mine, _ = load_synthetic(Layout(project).root / path.relative_to(ref))
        theirs, _ = load_synthetic(path)
        assert torch.equal(mine.images, theirs.images) and torch.equal(mine.soft_labels, theirs.soft_labels)


@pytest.mark.integration
def test_expert_buffer_resumes_after_the_last_finished_expert(tmp_path: Path):
    raw = tiny(expert={"num_experts": 4, "epochs": 3})
    base = make_project(tmp_path / "base", raw, "download")
    ref, project = reference_and_copy(base, tmp_path, "expert-buffer")
    directory = Layout(project).checkpoints("expert-buffer")
    kill_when(cli(project, "expert-buffer"), (directory / "done-expert_001.safetensors").exists)
    assert not Layout(project).experts_dir.exists()
    assert list(Layout(project).experts_dir.parent.glob(".experts.*.tmp"))  # the killed run's partial directory
    run_cli(project, "expert-buffer")
    assert not list(Layout(project).experts_dir.parent.glob(".experts.*.tmp"))  # cleaned by the rerun
    mine, theirs = Layout(project).experts_dir, Layout(ref).experts_dir
    assert (mine / "manifest.json").read_text() == (theirs / "manifest.json").read_text()
    for i in range(4):
        a, b = (load_trajectory(d / f"expert_{i:03d}.safetensors") for d in (mine, theirs))
        assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    assert not directory.exists()


# ---------------------------------------------------------------------------------------------------------------------
# guards


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("guard"), TINY, "download", "expert-buffer")


def test_mtt_skips_non_finite_steps_counts_them_and_continues(prepared: Path, monkeypatch):
    real = mtt.mtt_loss
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] in (2, 3) else loss

    monkeypatch.setattr(mtt, "mtt_loss", flaky)
    real_step, seen = mtt.outer_step, []

    def recorded(loss, learned, *args):
        problem = real_step(loss, learned, *args)
        seen.append(learned["images"].detach().clone())
        return problem

    monkeypatch.setattr(mtt, "outer_step", recorded)
    p = params_from_dict(tiny(mtt={"iterations": 6}))
    layout = Layout(prepared)
    data = load_prepared(layout.prepared)
    buffer = load_buffer(layout.experts_dir, data, p.model, 2)
    ctx = Context(data, p.model, p.augment, p.seed, torch.device("cpu"), p.guard)
    syn, curves = mtt.distill(ctx, buffer, p.mtt, 1, p.expert.lr)
    assert curves["skipped"] == [0, 1, 1, 0, 0, 0]
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])  # skipped steps leave the images alone
    assert not torch.equal(seen[2], seen[3]) and torch.isfinite(syn.images).all()


def test_mtt_negative_syn_lr_is_rolled_back_then_stops_naming_the_param(prepared: Path):
    result = runner.invoke(
        app,
        [
            *("distill", "--params", str(prepared / "params.yaml"), "--root", str(prepared)),
            *("-S", "mtt.syn_lr_floor=0", "-S", "mtt.lr_lr=1", "-S", "mtt.lr_img=1.0e-9"),
            *("-S", "mtt.iterations=10"),
        ],
    )
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "bad steps in a row" in message
    assert "mtt.lr_lr" in message or "mtt.lr_img" in message
    assert not Layout(prepared).distill_dir.exists()


def test_mtt_exploding_images_stop_with_a_message_naming_lr_img(prepared: Path):
    result = runner.invoke(
        app,
        [
            *("distill", "--params", str(prepared / "params.yaml"), "--root", str(prepared)),
            *("-S", "mtt.lr_img=1.0e+30", "-S", "mtt.iterations=10"),
        ],
    )
    assert result.exit_code == 2 and "mtt.lr_img" in result.stderr, result.output
    assert not Layout(prepared).distill_dir.exists()


def test_ratbptt_skips_non_finite_and_exploding_meta_gradients(digits, monkeypatch):
    real = ratbptt.ratbptt_meta_loss
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        loss = real(*args)
        return {2: loss * float("inf"), 4: loss * 1e9}.get(calls["n"], loss)

    monkeypatch.setattr(ratbptt, "ratbptt_meta_loss", flaky)
    p = params_from_dict(tiny(ratbptt={"iterations": 6}))
    ctx = Context(digits, p.model, p.augment, 0, torch.device("cpu"), p.guard)
    _, curves = ratbptt.distill(ctx, p.ratbptt, 1, iterations=6, key="guard")
    assert curves["skipped"] == [0, 1, 0, 1, 0, 0]
    monkeypatch.setattr(ratbptt, "ratbptt_meta_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(DistillerError, match="5 bad steps in a row; the meta-loss or meta-gradient is not finite"):
        ratbptt.distill(ctx, p.ratbptt, 1, iterations=6, key="g")


# ---------------------------------------------------------------------------------------------------------------------
# fuzzing: malformed params and truncated files end in one clean line

_SECTIONS = {name: sorted(vars(Params())[name].__dataclass_fields__) for name in ("data", "distill", "mtt", "ratbptt")}
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5000),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),  # denormals are flushed (configure_torch)
    st.text(max_size=12),
    st.lists(st.integers(-3, 12), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_keys = st.one_of(*(st.sampled_from(keys) for keys in _SECTIONS.values()), st.text(min_size=1, max_size=10))
_sections = st.dictionaries(
    st.one_of(st.sampled_from(sorted(_SECTIONS)), st.text(min_size=1, max_size=8)),
    st.one_of(st.dictionaries(_keys, _values, max_size=4), _values),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_sections)
def test_random_params_load_or_fail_with_one_clean_line(raw, tmp_path: Path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(raw) if not _has_nan(raw) else yaml.dump(raw))
    try:
        load_params(path)
    except DistillerError as e:
        assert "\n" not in str(e) and str(e)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_random_yaml_text_loads_or_fails_with_one_clean_line(text, tmp_path: Path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_params(path)
    except DistillerError as e:
        assert "\n" not in str(e)


def _has_nan(x) -> bool:
    if isinstance(x, float):
        return math.isnan(x) or math.isinf(x)
    if isinstance(x, dict):
        return any(_has_nan(v) for v in x.values())
    return isinstance(x, list) and any(_has_nan(v) for v in x)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("fuzz"), TINY, "download", "expert-buffer", "distill")


_FILES = {  # file to damage, the stage that reads it, that stage's output
    "prepared": (lambda lay: lay.prepared, "expert-buffer", lambda lay: lay.experts_dir),
    "expert": (lambda lay: lay.experts_dir / "expert_000.safetensors", "distill", lambda lay: lay.distill_dir),
    "synthetic": (lambda lay: lay.synthetic, "evaluate", lambda lay: lay.evaluate_dir),
}


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(sorted(_FILES)), fraction=st.floats(0, 0.999, allow_subnormal=False), flip=st.booleans())
def test_truncated_or_corrupted_files_are_refused_by_name(finished: Path, which, fraction, flip, tmp_path_factory):
    project = tmp_path_factory.mktemp("t") / "p"
    shutil.copytree(finished, project)
    layout = Layout(project)
    target, stage, output = _FILES[which]
    path = target(layout)
    data = bytearray(path.read_bytes())
    if flip:  # same length, one byte changed somewhere in the tensor data
        i = len(data) - 1 - int(fraction * (len(data) // 2))
        data[i] ^= 0xFF
    else:
        data = data[: int(fraction * len(data))]
    path.write_bytes(bytes(data))
    shutil.rmtree(output(layout), ignore_errors=True)
    result = runner.invoke(app, [stage, "--params", str(project / "params.yaml"), "--root", str(project)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and path.name in result.stderr, result.stderr
    assert "Traceback" not in result.output and not output(layout).exists()
