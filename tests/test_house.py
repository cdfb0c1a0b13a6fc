"""The house rules a newcomer relies on: short functions and modules, no repeated code, references that resolve."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "distiller").rglob("*.py"))


def test_no_function_is_longer_than_80_lines_and_no_module_than_300():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in MODULES if (n := len(p.read_text().splitlines())) > 300]
    assert not big, big


def test_every_distill_driver_fits_on_a_screen():
    for name in ("mtt", "ratbptt"):
        tree = ast.parse((ROOT / "distiller" / "methods" / f"{name}.py").read_text())
        (driver,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "distill"]
        assert driver.end_lineno - driver.lineno + 1 <= 60, name


@pytest.mark.skipif(shutil.which("duplicates") is None, reason="the duplicates tool is not on this machine")
def test_duplicates_finds_no_repeated_code_in_the_package():
    out = subprocess.run(["duplicates", "--repo", "distiller"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("no duplicates"), out.stdout


_REFERENCE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.(?:md|py|yaml|toml|sh))\b")
_OUTSIDE = ("methods.md", "ecosystem.md", "style.md")


def test_references_in_code_tests_and_benchmarks_resolve_inside_the_repository():
    """Files named in docstrings and comments exist here; the team's notes outside the repository are not cited."""
    files = [*MODULES, *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    files += [
        *(ROOT / "examples").glob("*.py"),
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        ROOT / "dvc.yaml",
        ROOT / "params.yaml",
    ]
    for path in files:
        if path == Path(__file__):
            continue  # this test names the notes it looks for
        text = path.read_text()
        for name in _OUTSIDE:
            assert re.search(rf"(?<!docs/){re.escape(name)}", text) is None or (ROOT / "docs" / name).is_file(), (
                f"{path.relative_to(ROOT)} cites {name}, which is not in this repository"
            )
        for ref in _REFERENCE.findall(text):
            if "/" in ref and not ref.startswith(("http", "www.")):
                candidates = [ROOT / ref, path.parent / ref, ROOT / "distiller" / ref]  # modules by package path
                assert any(c.exists() for c in candidates) or _generated(ref), f"{path.relative_to(ROOT)}: {ref}"


def _generated(ref: str) -> bool:
    """Paths the pipeline or a user creates (outputs, examples of user files), not files of the repository."""
    return ref.startswith(
        (
            "artifacts/",
            "metrics/",
            "datasets/",
            "runs/",
            "data/",
            ".checkpoints/",
            "ipc",
            "images/",
            "preprocessing/",
            "my-",
            "path/",
            "org/",
            "tmp/",
            "/",
        )
    )


LAYERS = ("cli", "stages", "packaging", "scoring", "methods", "nets", "data", "core")  # top to bottom


def test_every_module_lives_in_a_layer_that_says_what_it_holds():
    """The folders show the architecture: no loose modules, and each layer's __init__ says what lives there and what
    it may import (pyproject.toml's import-linter contract enforces it: `lint-imports` in .ci/run)."""
    package = ROOT / "distiller"
    loose = sorted(p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, loose
    folders = sorted(p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(LAYERS)
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((package / layer / "__init__.py").read_text()))
        assert doc and "May import:" in doc, f"distiller/{layer}/__init__.py"


def test_no_import_cycle_between_modules():
    """No module reaches itself through imports (lazy imports inside functions included)."""
    from test_dvc_deps import imported, module_file

    graph = {
        p: {f for f in map(module_file, imported(p)) if f is not None and f != p and f.name != "__init__.py"}
        for p in MODULES
    }

    def reaches(start: Path, goal: Path) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return False

    cycles = [str(p.relative_to(ROOT)) for p in MODULES if reaches(p, p)]
    assert not cycles, cycles
