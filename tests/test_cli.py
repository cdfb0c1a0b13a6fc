"""The CLI contract: helpful --help, each command one call into the library, a working pipeline, and one-line errors
with exit code 2 that write nothing."""

import json
import re
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
import typer
from helpers import TINY, tiny, write_params
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.params import Families, load_params
from distiller.core.paths import Layout
from distiller.methods.synthetic import load as load_synthetic

runner = CliRunner()
COMMANDS = ["check", "download", "expert-buffer", "distill", "evaluate", "package"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_help_explains_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout
    for command in COMMANDS:
        result = invoke(command, "--help")
        assert result.exit_code == 0, result.output
        assert "--params" in result.stdout and "--set" in result.stdout
    assert "MTT" in invoke("distill", "--help").stdout and "RaT-BPTT" in invoke("distill", "--help").stdout
    assert invoke("--version").stdout.startswith("distiller ")
    for command in ("validate", "publish"):
        assert invoke(command, "--help").exit_code == 0


PLACEHOLDER = re.compile(r"<[A-Za-z_][A-Za-z0-9_.-]*>")  # datasets/<source>-..., v<version>, hf:<repo_id>


def every_command(cmd=None, path: tuple[str, ...] = ()):
    """(path, command) for the app and every command and subcommand under it."""
    cmd = cmd or typer.main.get_command(app)
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from every_command(sub, (*path, name))


def test_every_placeholder_of_the_help_texts_is_rendered():
    """The app renders help as Markdown, where a bare <name> is an HTML tag and vanishes ("datasets/-distilled-ipc/",
    "tagged v"): every placeholder written in a command's help, an option's or an argument's, and in the first line
    a group lists for each subcommand, appears in the rendered --help."""
    checked = 0
    for path, cmd in every_command():
        texts = [cmd.help or "", *(getattr(param, "help", None) or "" for param in cmd.params)]
        texts += [(sub.help or "").split("\n")[0] for sub in getattr(cmd, "commands", {}).values()]
        wanted = set(PLACEHOLDER.findall("\n".join(texts)))
        result = runner.invoke(app, [*path, "--help"], terminal_width=250, env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        missing = sorted(w for w in wanted if w not in result.stdout)
        assert not missing, f"distiller {' '.join(path)} --help drops {missing}"
        checked += len(wanted)
    assert checked >= 6  # the package, publish and download texts have them (a vacuous pass would prove nothing)


def test_check_refuses_a_typo_in_one_line_and_writes_no_marker(tiny_yaml: Path):
    raw = {**TINY, "distill": {**TINY["distill"], "ipcc": 3}}
    write_params(tiny_yaml, raw)
    result = invoke("check", "--params", str(tiny_yaml), "--root", str(tiny_yaml.parent))
    assert_clean_error(result, "unknown key 'distill.ipcc' (did you mean 'distill.ipc'?)")
    assert not Layout(tiny_yaml.parent).params_checked.exists()
    write_params(tiny_yaml, TINY)
    result = invoke("check", "--params", str(tiny_yaml), "--root", str(tiny_yaml.parent))
    assert result.exit_code == 0 and result.stdout.startswith("params valid"), result.output
    assert Layout(tiny_yaml.parent).params_checked.is_file()


@pytest.mark.parametrize(
    ("args", "stage", "expected"),
    [
        (["check", "-S", "distill.ipc=3"], "check", {"distill.ipc": 3}),
        (["evaluate"], "evaluate", {}),
        (["expert-buffer", "-S", "expert.epochs=2"], "expert_buffer", {"expert.epochs": 2}),
        (["distill", "--ipc", "3", "--iterations", "7"], "distill", {"distill.ipc": 3, "mtt.iterations": 7}),
        (
            ["distill", "-S", "distill.method=ratbptt", "--iterations", "9"],
            "distill",
            {"distill.method": "ratbptt", "ratbptt.iterations": 9},
        ),
        (["download", "--source", "mnist"], "download", {"data.source": "mnist"}),
        (["package", "-S", "augment.strategy=crop"], "package", {"augment.strategy": "crop"}),
    ],
)
def test_each_stage_command_is_one_call_into_its_stage_module(tiny_yaml: Path, args, stage, expected):
    """fastapi-cli style: the library call patched, the exact params it receives and the summary it prints asserted."""
    with (
        patch(f"distiller.stages.{stage}.run", return_value="RESULT") as run,
        patch(f"distiller.stages.{stage}.summary", return_value="the summary") as summary,
    ):
        result = invoke(*args, "--params", str(tiny_yaml), "--root", str(tiny_yaml.parent))
    assert result.exit_code == 0, result.output
    assert result.stdout == "the summary\n"
    (p, layout, _reporter), options = run.call_args
    assert p == load_params(tiny_yaml, expected) and layout == Layout(tiny_yaml.parent)
    assert options == ({"from_dir": None} if stage == "download" else {})
    summary.assert_called_once_with("RESULT")
    if stage == "package":
        assert p.augment.strategy == Families(("crop",))


def test_download_from_dir_is_passed_through(tiny_yaml: Path, tmp_path: Path):
    with patch("distiller.stages.download.run") as run, patch("distiller.stages.download.summary", return_value=""):
        result = invoke("download", "--params", str(tiny_yaml), "--from", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert run.call_args.kwargs == {"from_dir": tmp_path}


def test_params_command_prints_every_key_with_its_help(tiny_yaml: Path):
    result = invoke("params")
    assert result.exit_code == 0 and "  ipc: 10" in result.stdout and "# synthetic images per class" in result.stdout
    shown = invoke("params", "--params", str(tiny_yaml), "-S", "distill.ipc=4").stdout
    assert "  ipc: 4 " in shown and "  width: 8 " in shown


@pytest.fixture
def project(tmp_path, tiny_yaml):
    return tmp_path


def run_stage(project, command, *extra):
    result = invoke(command, "--params", str(project / "params.yaml"), "--root", str(project), *extra)
    assert result.exit_code == 0, result.output
    return result


def test_stages_run_in_order_and_write_their_outputs(project):
    write_params(project / "params.yaml", tiny(distill={"ipc": 2}, evaluate={"prefixes": True}))
    layout = Layout(project)
    assert "1347 train / 450 test" in run_stage(project, "download").stdout
    assert "2 experts" in run_stage(project, "expert-buffer").stdout
    assert sorted(p.name for p in layout.experts_dir.iterdir()) == [
        "expert_000.safetensors",
        "expert_001.safetensors",
        "manifest.json",
    ]
    assert "distilled 20 images" in run_stage(project, "distill").stdout
    assert {p.name for p in layout.distill_dir.iterdir()} == {
        "synthetic.safetensors",
        "curves.csv",
        "curves.png",
        "grid.png",
    }
    assert layout.curves.read_text().splitlines()[0] == "iteration,loss,syn_lr,expert,start_epoch,skipped"
    out = run_stage(project, "evaluate").stdout
    assert "distilled (mtt, ipc 2)" in out and "random real" in out and "full data" in out and "ipc   1:" in out

    metrics = json.loads(layout.evaluate_metrics.read_text())
    assert {"dataset", "method", "ipc", "accuracy", "baselines", "protocol", "seal"} <= set(metrics)
    assert "seconds" in json.loads(layout.log("evaluate").read_text())  # timings live apart from the outputs
    assert metrics["dataset"] == "digits" and metrics["method"] == "mtt" and metrics["ipc"] == 2
    assert set(metrics["budgets"]) == {"1", "2"}  # evaluate.prefixes: the prefix of the MTT set is scored too
    for result in (metrics["accuracy"], metrics["baselines"]["random_real"]):
        assert len(result["runs"]) == TINY["evaluate"]["num_eval"]
        assert all(0 <= a <= 1 for a in result["runs"]) and 0 <= result["mean"] <= 1
    assert len(metrics["baselines"]["full_data"]["runs"]) == 1
    assert metrics["protocol"]["momentum"] == 0.9 and metrics["protocol"]["augmentation"]["kind"] == "dsa"

    assert "packaged" in run_stage(project, "package").stdout
    for k in (1, 2):
        assert (project / "datasets" / "digits-distilled-ipc2" / f"ipc{k}" / "train-00000-of-00001.parquet").is_file()

    # no temporary files are left beside the outputs
    leftovers = [p for p in project.rglob(".*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []


def test_distill_twice_gives_bitwise_identical_images(project):
    run_stage(project, "download")
    run_stage(project, "expert-buffer")
    run_stage(project, "distill")
    first, _ = load_synthetic(Layout(project).synthetic)
    run_stage(project, "distill")
    second, _ = load_synthetic(Layout(project).synthetic)
    assert torch.equal(first.images, second.images) and first.lr == second.lr


def assert_clean_error(result, *fragments):
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message


def test_ipc_zero_is_a_one_line_error_and_writes_nothing(project):
    run_stage(project, "download")
    run_stage(project, "expert-buffer")
    result = invoke("distill", "--params", str(project / "params.yaml"), "--root", str(project), "--ipc", "0")
    assert_clean_error(result, "distill.ipc must be >= 1, got 0")
    assert not Layout(project).distill_dir.exists()


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        ({"distill": {"ipcc": 1}}, ["unknown key 'distill.ipcc'", "did you mean 'distill.ipc'"]),
        ({"distill": {"ipc": "ten"}}, ["distill.ipc must be an integer"]),
        ({"evaluate": {"num_eval": -1}}, ["evaluate.num_eval must be >= 1"]),
    ],
)
def test_bad_params_file_is_a_one_line_error(project, edit, fragments):
    raw = json.loads(json.dumps(TINY))
    for section, values in edit.items():
        raw.setdefault(section, {}).update(values)
    write_params(project / "params.yaml", raw)
    for command in COMMANDS:
        assert_clean_error(
            invoke(command, "--params", str(project / "params.yaml"), "--root", str(project)), *fragments
        )
    assert not (project / "artifacts").exists() and not (project / "metrics").exists()


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("expert-buffer", "prepared data not found"),
        ("distill", "prepared data not found"),
        ("evaluate", "prepared data not found"),
        ("package", "prepared data not found"),
    ],
)
def test_missing_inputs_are_named(project, command, fragment):
    result = invoke(command, "--params", str(project / "params.yaml"), "--root", str(project))
    assert_clean_error(result, fragment, "artifacts/data/prepared.safetensors")


def test_missing_experts_and_params_file_are_named(project, tmp_path):
    run_stage(project, "download")
    result = invoke("distill", "--params", str(project / "params.yaml"), "--root", str(project))
    assert_clean_error(result, "expert buffer not found", "manifest.json")
    assert_clean_error(invoke("download", "--params", str(tmp_path / "nope.yaml")), "params file not found")
    assert_clean_error(invoke("download", "--params", str(project / "params.yaml"), "-S", "distill.ipc"), "key=value")


def test_ratbptt_boosts_writes_references_and_scores_every_budget(project):
    layout = Layout(project)
    rat = ("-S", "distill.method=ratbptt", "-S", "distill.ipc=2", "-S", "distill.budgets=[1, 2]")
    run_stage(project, "download")
    assert "no experts needed" in run_stage(project, "expert-buffer", *rat).stdout
    assert [p.name for p in layout.experts_dir.iterdir()] == ["manifest.json"]
    assert "nested budgets [1, 2]" in run_stage(project, "distill", *rat).stdout
    syn, prov = load_synthetic(layout.synthetic)
    assert syn.budgets == (1, 2) and syn.lr is None and prov["method"] == "ratbptt"
    assert sorted(p.name for p in layout.references_dir.iterdir()) == [
        "direct_ipc1.safetensors",
        "direct_ipc2.safetensors",
    ]
    assert "run,run_iteration,loss" in layout.curves.read_text().splitlines()[0]
    out = run_stage(project, "evaluate", *rat).stdout
    assert "ipc   1:" in out and "naive_subset" in out

    metrics = json.loads(layout.evaluate_metrics.read_text())
    assert metrics["method"] == "ratbptt" and metrics["ipc"] == 2
    assert set(metrics["budgets"]) == {"1", "2"}
    for row in metrics["budgets"].values():
        assert set(row) == {"boosted", "direct", "naive_subset", "random_real"}
        assert all(len(r["runs"]) == TINY["evaluate"]["num_eval"] for r in row.values())
    # the top-level fields describe the largest budget; the naive subset at the largest budget is the direct set
    assert metrics["accuracy"] == metrics["budgets"]["2"]["boosted"]
    assert metrics["budgets"]["2"]["naive_subset"] == metrics["budgets"]["2"]["direct"]
    header = layout.budgets_csv.read_text().splitlines()[0]
    assert header == "budget,boosted,direct,naive_subset,random_real"
    assert layout.budgets_png.stat().st_size > 0

    # MTT on the empty buffer RaT-BPTT left is refused, by name
    result = invoke("distill", "--params", str(project / "params.yaml"), "--root", str(project))
    assert_clean_error(result, "expert buffer is empty", "distill.method is ratbptt")


def test_bad_budgets_are_a_one_line_error(project):
    result = invoke("distill", "--params", str(project / "params.yaml"), "-S", "distill.budgets=[2, 1]")
    assert_clean_error(result, "distill.budgets must be increasing")
