"""Recipes: every file in recipes/ validates against the params schema, `distiller recipe list | show | use` work and
refuse unknown or broken recipes in one line, the accuracy benchmark's settings are the recipes, and the tuning
benchmark scores on a validation split."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.params import load_params
from distiller.core.recipes import catalogue, dotted, merged

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
runner = CliRunner()
NAMES = sorted(p.stem for p in RECIPES.glob("*.yaml"))


def test_every_recipe_validates_and_says_where_its_values_come_from():
    recipes = catalogue(RECIPES)
    assert sorted(recipes) == NAMES and len(NAMES) >= 15
    for name, r in recipes.items():
        assert name.startswith(f"{r.about.dataset}-{r.about.method}-ipc{r.about.ipc}"), name
        assert r.about.values and r.about.published, name  # a paper's table, or ours; a figure, or why none
    papers = {n for n, r in recipes.items() if not r.about.values.startswith("ours")}
    assert {"cifar10-mtt-ipc1", "cifar10-mtt-ipc10", "cifar100-mtt-ipc50", "cifar10-ratbptt-ipc10"} <= papers


CITATION = re.compile(r"(docs/[\w.-]+\.md)(?:#([\w-]+))?")


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_recipe_cites_the_published_figures_page_and_every_citation_resolves():
    """Each recipe's `published:` names its source on docs/published.md (the figure, its paper and table, and whether it
    was checked); every page a recipe cites exists, and so does the heading an anchor names."""
    for name, r in catalogue(RECIPES).items():
        a = r.about
        assert "docs/published.md#" in a.published, f"{name}: published cites no section of docs/published.md"
        for page, anchor in CITATION.findall(" ".join((a.values, a.published, a.measured, a.note))):
            assert (ROOT / page).is_file(), f"{name} cites {page}, which does not exist"
            assert not anchor or anchor in anchors((ROOT / page).read_text()), f"{name} cites {page}#{anchor}"
    assert {"digits", "mnist-and-fashion-mnist", "cifar-10-and-cifar-100"} <= anchors(
        (ROOT / "docs" / "published.md").read_text()
    )


def test_recipe_list_shows_every_recipe():
    result = runner.invoke(app, ["recipe", "list", "--root", str(ROOT)])
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in NAMES)


def test_recipe_show_prints_the_file():
    result = runner.invoke(app, ["recipe", "show", "cifar10-mtt-ipc1", "--root", str(ROOT)])
    assert result.exit_code == 0 and result.stdout == (RECIPES / "cifar10-mtt-ipc1.yaml").read_text()


def test_recipe_use_merges_into_params_yaml_keeping_the_rest(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 7\nevaluate:\n  num_eval: 3\n")
    result = runner.invoke(app, ["recipe", "use", "cifar10-mtt-ipc10", "--root", str(ROOT), "--params", str(params)])
    assert result.exit_code == 0, result.output
    p = load_params(params)
    assert p.seed == 7 and p.evaluate.num_eval == 3  # the user's own values stay
    assert (p.data.source, p.data.preprocess, p.mtt.syn_steps, p.mtt.lr_init) == ("cifar10", "zca", 30, 0.01)
    assert "# " in params.read_text()  # rendered with every key's help


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["use", "cifar10-mtt-ipc100"], ["no recipe 'cifar10-mtt-ipc100'", "did you mean 'cifar10-mtt-ipc10'"]),
        (["show", "nope"], ["no recipe 'nope'"]),
    ],
)
def test_unknown_recipes_are_one_line(args, fragments):
    result = runner.invoke(app, ["recipe", *args, "--root", str(ROOT)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert all(f in result.stderr for f in fragments), result.stderr


@pytest.mark.parametrize("command", ["use", "show"])
@pytest.mark.parametrize("name", ["../x", "../recipes/cifar10-mtt-ipc1", "/tmp/x", "sub/x", "..", "", "a\\b", "c:x"])
def test_a_recipe_name_that_leaves_recipes_is_one_line(tmp_path: Path, command, name):
    """A recipe is a plain name in recipes/: one naming a file elsewhere (which exists here, and is a valid recipe)
    is refused before anything is read, and params.yaml is left as it was."""
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    for target in (tmp_path / "x.yaml", project / "x.yaml", project / "recipes" / "sub" / "x.yaml"):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RECIPES / "cifar10-mtt-ipc1.yaml", target)
    params = project / "params.yaml"
    params.write_text("seed: 7\n")
    args = ["recipe", command, name, "--root", str(project), *(["--params", str(params)] if command == "use" else [])]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "recipe name" in result.stderr and "inside the folder" in result.stderr, result.stderr
    assert "Traceback" not in result.output and params.read_text() == "seed: 7\n"


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (
            lambda r: r["params"]["mtt"].update(syn_stpes=3),
            "unknown key 'mtt.syn_stpes' (did you mean 'mtt.syn_steps'?)",
        ),
        (lambda r: r["params"]["mtt"].update(syn_steps=0), "mtt.syn_steps must be >= 1"),
        (lambda r: r["about"].update(ipc=5), "about says cifar10 mtt ipc 5, its params cifar10 mtt ipc 1"),
        (lambda r: r.update(extra=1), "exactly `about` and `params`"),
    ],
)
def test_a_recipe_that_no_longer_validates_is_one_line(tmp_path: Path, edit, fragment):
    raw = yaml.safe_load((RECIPES / "cifar10-mtt-ipc1.yaml").read_text())
    edit(raw)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "cifar10-mtt-ipc1.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["recipe", "list", "--root", str(tmp_path)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "cifar10-mtt-ipc1.yaml" in result.stderr and fragment in result.stderr, result.stderr


def test_dotted_and_merged_are_inverse_views():
    overrides = {"mtt": {"syn_steps": 50, "lr_img": 100.0}, "seed": 1}
    assert dotted(overrides) == {"mtt.syn_steps": 50, "mtt.lr_img": 100.0, "seed": 1}
    assert merged({"mtt": {"iterations": 9}, "seed": 0}, overrides) == {
        "mtt": {"iterations": 9, "syn_steps": 50, "lr_img": 100.0},
        "seed": 1,
    }


def test_the_accuracy_benchmark_lists_the_recipes():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--list"], capture_output=True, text=True, check=True
    )
    assert [line.split()[0] for line in out.stdout.splitlines()] == NAMES


def test_the_tuning_benchmark_retrains_the_experts_only_for_the_params_they_depend_on():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tune import reuses_experts

    assert all(map(reuses_experts, ["mtt.lr_img", "ratbptt.horizon", "expert.nproc", "expert.parallel", "seeds"]))
    assert not any(map(reuses_experts, ["model.width", "expert.epochs", "data.validation", "augment.strategy", "seed"]))


@pytest.mark.slow
def test_the_tuning_benchmark_scores_on_a_validation_split_and_reuses_the_experts(tmp_path: Path):
    tiny = {
        "expert.num_experts": 1,
        "expert.epochs": 2,
        "mtt.max_start_epoch": 1,
        "mtt.expert_epochs": 1,
        "mtt.iterations": 2,
        "mtt.syn_steps": 3,
        "evaluate.num_eval": 1,
        "evaluate.epochs": 3,
        "evaluate.full_data_runs": 0,
    }
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tune.py"), "digits-mtt-ipc1", "--key", "mtt.lr_img"]
    cmd += ["--values", "100,1000,10000", "--parallel", "2", "--threads", "1", "--no-record"]
    cmd += ["--workdir", str(tmp_path)]
    cmd += [a for k, v in tiny.items() for a in ("-S", f"{k}={v}")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| 1")]
    assert rows == ["100", "1000", "10000"]
    for value in ("100", "1000", "10000"):
        metrics = json.loads((tmp_path / value / "metrics" / "evaluate.json").read_text())
        assert "validation split" in metrics["protocol"]["test_split"]
    trained = (tmp_path / "100" / "artifacts" / "experts" / "manifest.json").read_bytes()
    assert (tmp_path / "10000" / "artifacts" / "experts" / "manifest.json").read_bytes() == trained


@pytest.mark.slow
def test_the_tuning_benchmark_starts_every_value_at_once_when_there_are_no_experts_to_train(tmp_path: Path):
    tiny = {
        "distill.ipc": 1,
        "distill.budgets": "[1]",
        "ratbptt.iterations": 2,
        "evaluate.num_eval": 1,
        "evaluate.ratbptt_epochs": 3,
        "evaluate.full_data_runs": 0,
    }
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tune.py"), "digits-ratbptt-ipc10", "--key", "ratbptt.outer_lr"]
    cmd += ["--values", "0.001,0.01", "--parallel", "2", "--threads", "1", "--no-record", "--workdir", str(tmp_path)]
    cmd += [a for k, v in tiny.items() for a in ("-S", f"{k}={v}")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| 0.0")]
    assert rows == ["0.001", "0.01"]
    first_done = (tmp_path / "0.001" / "metrics" / "evaluate.json").stat().st_mtime
    second_started = min(f.stat().st_mtime for f in (tmp_path / "0.01").rglob("*") if f.is_file())
    assert second_started < first_done  # the second value did not wait for the first
