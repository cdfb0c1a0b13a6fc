"""dvc.yaml lists, for every stage, exactly the modules of distiller/ its stage command can import (by the AST of its
module and of the stage runner), and every module the command imports when it runs (by running it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import STAGES, TINY, tiny, write_params

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distiller"


def module_file(name: str) -> Path | None:
    """The file of module `distiller.x.y` (a package's __init__.py), or None outside distiller/."""
    parts = name.split(".")
    if parts[0] != "distiller":
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported(path: Path) -> set[str]:
    """Every module an import statement anywhere in `path` names (lazy imports inside functions included), with the
    packages the import system runs on the way (`distiller.stages.x` runs `distiller/stages/__init__.py`)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = list(parts[:-1])  # the package a relative import starts from (a module's, or an __init__'s own)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from distiller import x` imports x
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def closure(path: Path) -> set[Path]:
    """The files of distiller/ that importing `path` can run."""
    seen: set[Path] = set()
    todo = [path, *[ROOT / p / "__init__.py" for p in path.relative_to(ROOT).parents if p.parts]]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [f for f in map(module_file, imported(current)) if f is not None]
    return seen


def stage_module(cmd: str) -> Path:
    """`distiller expert-buffer` -> distiller/stages/expert_buffer.py"""
    program, stage = cmd.split()
    assert program == "distiller", cmd
    return PACKAGE / "stages" / f"{stage.replace('-', '_')}.py"


RUNNER = PACKAGE / "stages" / "runner.py"  # what every stage command runs around its module (lock, torchrun, errors)


def stage_closure(cmd: str) -> set[Path]:
    """The files of distiller/ a stage command can run: its module's imports and the runner's."""
    return closure(stage_module(cmd)) | closure(RUNNER)


def test_every_stage_lists_exactly_the_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        files = {str(f.relative_to(ROOT)) for f in stage_closure(stage["cmd"])}
        listed = {d for d in stage["deps"] if d.startswith("distiller/") and d.endswith(".py")}
        assert not files - listed, f"stage {name}: dvc.yaml misses {sorted(files - listed)}"
        assert not listed - files, f"stage {name}: dvc.yaml lists {sorted(listed - files)}, which it does not import"
        for dep in stage["deps"]:
            assert dep.startswith(("artifacts/", "metrics/")) or (ROOT / dep).is_file(), f"stage {name}: {dep}?"


DATA_FILES = {"readme.py": "distiller/packaging/templates/card.md"}  # files a module reads at run time


def test_data_files_a_stage_reads_are_listed():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for module in stage_closure(stage["cmd"]):
            if module.name in DATA_FILES:
                assert DATA_FILES[module.name] in stage["deps"], f"stage {name} reads {DATA_FILES[module.name]}"


def test_closures_are_tight():
    """A stage imports only what it runs: evaluate never sees the sources or the distillation methods."""
    evaluate = {f.name for f in closure(PACKAGE / "stages" / "evaluate.py")}
    assert not evaluate & {"mtt.py", "ratbptt.py", "boost.py", "archives.py", "images.py", "card.py", "app.py"}
    download = {f.name for f in closure(PACKAGE / "stages" / "download.py")}
    assert not download & {"models.py", "train.py", "evaluate.py", "mtt.py"}


def imported_when_running(cmd: str, params: Path, root: Path) -> set[str]:
    """The files of distiller/ that `cmd` imported as it ran (python -X importtime names every module it imports)."""
    args = [sys.executable, "-X", "importtime", "-m", "distiller", *cmd.split()[1:], "-p", str(params)]
    done = subprocess.run([*args, "--root", str(root)], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    files = {module_file(n) for n in names if n.startswith("distiller")}
    return {str(f.relative_to(ROOT)) for f in files if f is not None and "cli" not in f.relative_to(ROOT).parts}


@pytest.mark.integration
def test_every_module_a_stage_command_runs_is_listed(tmp_path: Path):
    """The command, not only its module: whatever `distiller <stage>` imports outside distiller/cli/ (which parses
    options and prints) is a dep, the lock and the torchrun launcher included. The params check and every stage of an
    MTT run, then RaT-BPTT's distill (Boost-DD and its references)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    runs = [(TINY, "check")] + [(TINY, name) for name in STAGES]  # check: the params file alone, first
    runs += [(tiny(distill={"method": "ratbptt", "ipc": 2, "budgets": [1, 2]}), "distill")]
    for raw, name in runs:
        params = write_params(tmp_path / "params.yaml", raw)
        ran = imported_when_running(stages[name]["cmd"], params, tmp_path)
        assert not ran - set(stages[name]["deps"]), f"stage {name} ran {sorted(ran - set(stages[name]['deps']))}"
