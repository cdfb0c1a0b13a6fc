"""Artifacts forged with their seal recomputed (the seal catches edits, not forgery), artifacts swapped between files
or projects, and outputs in the way: every stage checks what the seal cannot vouch for (types, shapes, finite
values, which set or expert a file is) and ends in one line, exit 2, its previous outputs untouched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from helpers import STAGES, make_project, tiny
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core import checkpoint as ckpt
from distiller.core.files import load_safetensors, read_sealed_json, save_safetensors, write_sealed_json
from distiller.core.params import params_from_dict
from distiller.core.paths import Layout
from distiller.data import prepared
from distiller.methods import mtt

runner = CliRunner()
RAW = tiny(distill={"ipc": 2, "budgets": [1]}, evaluate={"prefixes": True})


def refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), result.stderr


def stage(name: str, root: Path, *extra: str):
    return runner.invoke(app, [name, "--params", str(root / "params.yaml"), "--root", str(root), *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("forged"), RAW, *STAGES)


@pytest.fixture
def project(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(finished, copy)
    return copy


def forge_tensors(path: Path, fmt: str, version: str, edit) -> None:
    """Rewrite a sealed safetensors file with `edit(tensors, meta)` applied and a seal recomputed to match."""
    tensors, meta = load_safetensors(path, fmt, version, "file")
    edit(tensors, meta)
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "seal")}
    save_safetensors(path, tensors, fmt, version, extra)


def forge_json(path: Path, edit) -> None:
    obj = read_sealed_json(path, "file", "")
    edit(obj)
    write_sealed_json(path, obj)


def _set(key: str, value):
    return lambda obj: obj.__setitem__(key, value)


def _accuracy(value):
    return lambda m: m["budgets"]["2"]["distilled"].__setitem__("mean", value)


SYNTHETIC = ("distiller.synthetic", "2")
TRAJECTORY = ("distiller.trajectory", "2")
CASES = {  # name -> (forge the project, stage that reads it, what its one line says)
    "manifest epochs not a number": (
        lambda lay: forge_json(lay.experts_dir / "manifest.json", _set("epochs", "abc")),
        "distill",
        "wrong type",
    ),
    "manifest files not names": (
        lambda lay: forge_json(lay.experts_dir / "manifest.json", _set("files", [5])),
        "distill",
        "not distiller's",
    ),
    "expert copied over another": (
        lambda lay: shutil.copyfile(
            lay.experts_dir / "expert_000.safetensors", lay.experts_dir / "expert_001.safetensors"
        ),
        "distill",
        "not the expert the manifest lists",
    ),
    "expert reshaped": (
        lambda lay: _forge_expert(lay, lambda t: {k: v.reshape(-1) if "epoch001" in k else v for k, v in t.items()}),
        "distill",
        "not those of the network",
    ),
    "expert NaN": (
        lambda lay: _forge_expert(lay, lambda t: {k: v * float("nan") for k, v in t.items()}),
        "distill",
        "NaN or infinite",
    ),
    "synthetic labels shifted": (
        lambda lay: forge_tensors(lay.synthetic, *SYNTHETIC, lambda t, m: t.__setitem__("labels", t["labels"] + 50)),
        "evaluate",
        "do not agree",
    ),
    "synthetic lr negative": (
        lambda lay: forge_tensors(lay.synthetic, *SYNTHETIC, lambda t, m: m.__setitem__("lr", -1.0)),
        "evaluate",
        "learned lr",
    ),
    "synthetic pixels NaN": (
        lambda lay: forge_tensors(lay.synthetic, *SYNTHETIC, lambda t, m: t["images"].fill_(float("nan"))),
        "evaluate",
        "NaN or infinite",
    ),
    "synthetic of another shape": (
        lambda lay: forge_tensors(
            lay.synthetic, *SYNTHETIC, lambda t, m: t.__setitem__("images", t["images"][..., :4])
        ),
        "evaluate",
        "do not fit the prepared data",
    ),
    "metrics accuracy above 1": (
        lambda lay: forge_json(lay.evaluate_metrics, _accuracy(7.5)),
        "package",
        "must be <= 1",
    ),
    "metrics mean not its runs' mean": (  # in range, so only the check `validate` makes too can tell
        lambda lay: forge_json(lay.evaluate_metrics, _accuracy(0.123)),
        "package",
        "say otherwise",
    ),
    "metrics std not its runs' std": (
        lambda lay: forge_json(lay.evaluate_metrics, lambda m: m["budgets"]["2"]["random_real"].update(std=0.25)),
        "package",
        "distiller.budgets.ipc2.random_real claims",
    ),
    "metrics of a network too deep for the data": (
        lambda lay: forge_json(lay.evaluate_metrics, lambda m: m["protocol"]["architecture"].update(depth=6)),
        "package",
        "architecture.depth 6 is too deep for 8x8",
    ),
    "metrics of a GELU network": (
        lambda lay: forge_json(lay.evaluate_metrics, lambda m: m["protocol"]["architecture"].update(activation="gelu")),
        "package",
        "activation must be one of 'relu'",
    ),
    "metrics accuracy not a number": (
        lambda lay: forge_json(lay.evaluate_metrics, _accuracy("high")),
        "package",
        "evaluate.json",
    ),
    "metrics of another set": (
        lambda lay: forge_json(lay.evaluate_metrics, _set("synthetic_hash", "0" * 64)),
        "package",
        "describes another set",
    ),
    "metrics budgets not numbers": (
        lambda lay: forge_json(lay.evaluate_metrics, _set("budgets", {"two": {}})),
        "package",
        "not the metrics distiller writes",
    ),
    "grid a link to a secret": (
        lambda lay: (lay.grid.unlink(), lay.grid.symlink_to("/etc/hostname")),
        "package",
        "not a regular file",
    ),
    "grid truncated": (lambda lay: lay.grid.write_bytes(lay.grid.read_bytes()[:10]), "package", "not a readable image"),
    "grid a FIFO": (lambda lay: (lay.grid.unlink(), os.mkfifo(lay.grid)), "package", "grid.png"),
    "manifest without accuracies": (
        lambda lay: forge_json(lay.experts_dir / "manifest.json", _set("test_accuracy", [])),
        "distill",
        "0 accuracies",
    ),
    "manifest naming a file outside": (
        lambda lay: forge_json(lay.experts_dir / "manifest.json", lambda m: m["files"].__setitem__(0, "../x")),
        "distill",
        "inside the folder",
    ),
    **{
        f"prepared classes {name}": (lambda lay, v=value: _forge_prepared(lay, v), "expert-buffer", fragment)
        for name, value, fragment in [
            ("a number", 10, "classes must be a non-empty list"),
            ("empty", [], "classes must be a non-empty list"),
            ("not names", list(range(10)), "classes must be a non-empty list"),
            ("too few", ["0", "1"], "labels must lie in 0 .. 1"),
            ("too many", [str(c) for c in range(11)], "has no training image"),
            ("repeated", ["0", *map(str, range(9))], "names a class twice"),
            ("renamed", list("abcdefghij"), "content_hash is not that of its tensors"),
        ]
    },
}

PREPARED = (prepared.FORMAT, prepared.FORMAT_VERSION)


def _forge_prepared(lay: Layout, classes) -> None:
    """The prepared data's class list replaced (its content hash too, unless the list is one of names)."""
    from distiller.data.prepared import content_hash

    def edit(t, m):
        m["classes"] = classes
        if classes != list("abcdefghij"):
            m["content_hash"] = content_hash(t, tuple(map(str, classes)) if isinstance(classes, list) else ())

    forge_tensors(lay.prepared, *PREPARED, edit)


def _forge_expert(lay: Layout, edit) -> None:
    """Forge expert 0 and record its new seal in the manifest (forged too), so only the content check is left."""
    path = lay.experts_dir / "expert_000.safetensors"
    forge_tensors(path, *TRAJECTORY, lambda t, m: t.update(edit(dict(t))))
    seal = load_safetensors(path, *TRAJECTORY, "expert")[1]["seal"]
    forge_json(lay.experts_dir / "manifest.json", lambda m: m["seals"].__setitem__(0, seal))


OUTPUTS = {
    "expert-buffer": "artifacts/experts",
    "distill": "artifacts/distill",
    "evaluate": "artifacts/evaluate",
    "package": "datasets",
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forged_or_swapped_artifacts_are_one_line(project: Path, case):
    forge, reader, fragment = CASES[case]
    forge(Layout(project))
    before = _files(project / OUTPUTS[reader])
    refused(stage(reader, project), fragment)
    assert _files(project / OUTPUTS[reader]) == before


def test_prepared_data_of_other_params_is_refused(project: Path):
    refused(stage("expert-buffer", project, "-S", "data.preprocess=zca"), "prepared.safetensors", "re-run")


def test_diverged_experts_are_refused_by_the_stage_that_trains_them(project: Path):
    from distiller.methods import experts

    real = experts.train_many

    def diverging(nets, *args, **kwargs):  # as a far too large lr does: the first update overflows
        with torch.no_grad():
            next(nets[-1].parameters()).fill_(float("inf"))
        real(nets, *args, **kwargs)

    with patch.object(experts, "train_many", diverging):
        refused(stage("expert-buffer", project, "-S", "expert.parallel=1"), "expert 0 diverged", "after epoch 1")


def test_a_run_whose_every_step_was_bad_is_refused(project: Path):
    with patch.object(mtt, "mtt_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True)):
        refused(stage("distill", project), "all 3 steps were skipped or rolled back")
    assert (project / "artifacts/distill").exists()  # the previous output stays


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ({"iteration": "x"}, "not a distiller checkpoint"),
        ({"iteration": -5}, "not a distiller checkpoint"),
        ({"iteration": 10**6}, "does not fit this run"),
    ],
)
def test_forged_checkpoint_state_is_refused(project: Path, state, fragment):
    real, calls = mtt.mtt_loss, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    with patch.object(mtt, "mtt_loss", interrupted):
        assert stage("distill", project, "-S", "distill.checkpoint_every=1").exit_code == 130
    path = Layout(project).checkpoints("distill") / "mtt.safetensors"
    forge_tensors(path, ckpt.FORMAT, ckpt.FORMAT_VERSION, lambda t, m: m["state"].update(state))
    refused(stage("distill", project, "-S", "distill.checkpoint_every=1"), "mtt.safetensors", fragment)


def _nan_group(t, m) -> None:
    m["state"]["param_groups"]["opt_img"][0]["lr"] = float("nan")


@pytest.mark.parametrize(
    ("forge", "fragment"),
    [
        (lambda t, m: t["images"].view(-1)[0].fill_(float("nan")), "images holds NaN or infinite values"),
        (lambda t, m: t["syn_lr"].fill_(float("inf")), "syn_lr holds NaN or infinite values"),
        (lambda t, m: next(v for k, v in t.items() if k.startswith("opt/")).fill_(float("nan")), "NaN or infinite"),
        (_nan_group, "an optimiser's settings hold NaN"),
        (lambda t, m: m["state"]["loop"].__setitem__("bad", -1), "bad is -1"),
    ],
    ids=["images", "lr", "momentum", "optimiser lr", "guard count"],
)
def test_a_checkpoint_holding_nan_is_refused_by_name_not_resumed(project: Path, forge, fragment):
    """A run never checkpoints NaN (its guard rolls such steps back), so a checkpoint holding one was forged: it is
    refused by name, not resumed into a run that would fail and blame mtt.lr_img; the outputs stay."""
    real, calls = mtt.mtt_loss, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    with patch.object(mtt, "mtt_loss", interrupted):
        assert stage("distill", project, "-S", "distill.checkpoint_every=1").exit_code == 130
    path = Layout(project).checkpoints("distill") / "mtt.safetensors"
    forge_tensors(path, ckpt.FORMAT, ckpt.FORMAT_VERSION, forge)
    before = _files(project / "artifacts/distill")
    with patch.object(mtt, "mtt_loss", side_effect=AssertionError("resumed")):
        refused(stage("distill", project, "-S", "distill.checkpoint_every=1"), "mtt.safetensors", fragment)
    assert _files(project / "artifacts/distill") == before


@pytest.mark.parametrize(
    ("forge", "fragment"),
    [
        (lambda t, m: m["state"].update(accuracy=5.0), "its parameters or accuracy"),
        (lambda t, m: m["state"].update(accuracy="high"), "its parameters or accuracy"),
        (lambda t, m: t.update({k: v[:1] for k, v in t.items() if k.endswith("classifier.bias")}), "its parameters"),
        (lambda t, m: [t.pop(k) for k in [k for k in t if k.startswith("epoch003/")]], "its parameters"),
        (lambda t, m: next(iter(t.values())).fill_(float("nan")), "NaN or infinite"),
    ],
    ids=["accuracy above 1", "accuracy not a number", "other shapes", "an epoch short", "NaN"],
)
def test_a_forged_finished_expert_is_refused_not_written(project: Path, forge, fragment):
    """A finished expert kept in .checkpoints is checked as a freshly trained one would be before it enters the
    buffer: nothing is written with an accuracy of 5 or a network of other shapes."""
    from distiller.methods import experts

    real, calls = experts.train_experts, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    args = ("-S", "expert.parallel=1", "-S", "expert.checkpoint_every=1")
    with patch.object(experts, "train_experts", interrupted):
        assert stage("expert-buffer", project, *args).exit_code == 130
    path = Layout(project).checkpoints("expert-buffer") / "done-expert_000.safetensors"
    forge_tensors(path, ckpt.FORMAT, ckpt.FORMAT_VERSION, forge)
    before = _files(project / "artifacts/experts")
    refused(stage("expert-buffer", project, *args), "done-expert_000.safetensors", fragment)
    assert _files(project / "artifacts/experts") == before


def test_a_checkpoint_of_other_shapes_is_refused(project: Path):
    real, calls = mtt.mtt_loss, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    with patch.object(mtt, "mtt_loss", interrupted):
        assert stage("distill", project, "-S", "distill.checkpoint_every=1").exit_code == 130
    path = Layout(project).checkpoints("distill") / "mtt.safetensors"
    forge_tensors(path, ckpt.FORMAT, ckpt.FORMAT_VERSION, lambda t, m: t.__setitem__("images", t["images"][:1]))
    refused(stage("distill", project, "-S", "distill.checkpoint_every=1"), "does not fit this run", "images")


@pytest.mark.parametrize("what", ["file", "symlink"])
def test_an_output_path_taken_by_a_file_or_link_is_replaced_leaving_nothing_behind(project: Path, tmp_path, what):
    p = params_from_dict(RAW)
    folder = Layout(project).package_dir(p.package.folder(p.data.source, p.distill.ipc))
    shutil.rmtree(folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    folder.write_text("in the way") if what == "file" else folder.symlink_to(outside, target_is_directory=True)
    assert stage("package", project).exit_code == 0
    assert folder.is_dir() and not folder.is_symlink() and (folder / "README.md").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no .old left over
    assert (outside / "keep.txt").read_text() == "mine"  # a link is replaced, never followed


def test_an_output_path_that_is_a_directory_names_it_not_a_temporary(project: Path):
    Layout(project).evaluate_metrics.unlink()
    Layout(project).evaluate_metrics.mkdir()
    result = stage("evaluate", project)
    refused(result, str(Layout(project).evaluate_metrics))
    assert ".tmp" not in result.stderr


def test_usage_errors_are_one_line():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "distiller", "distill", "--ipc", "abc"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--ipc" in out.stderr and "distiller distill --help" in out.stderr


def test_metrics_json_stays_valid_json():
    """A NaN final loss is written as null, never as the NaN that JSON has no word for."""
    from distiller.core.files import write_json

    with pytest.raises(ValueError):
        json.dumps(float("nan"), allow_nan=False)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"distiller-nan-{os.getpid()}.json"
    write_json(path, {"final_loss": float("nan"), "curve": [1.0, float("inf")]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "final_loss": None,
        "curve": [1.0, None],
    }
    path.unlink()
