"""Helpers shared by the tests (importable because pytest puts tests/ on sys.path): tiny params and one project
factory."""

from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import Any

import yaml

from distiller.core.params import Params, params_from_dict, to_dict
from distiller.core.paths import Layout

# Tiny settings: every stage runs in about a second on the CPU. DISTILLER_TEST_DEVICE=cuda runs them on a GPU.
TINY: dict = {
    "seed": 0,
    "device": os.environ.get("DISTILLER_TEST_DEVICE", "cpu"),
    "model": {"width": 8},
    "expert": {"num_experts": 2, "epochs": 3},
    "distill": {"ipc": 1},
    "mtt": {"iterations": 3, "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 2},
    "ratbptt": {"iterations": 2, "horizon": 4, "window": 2, "real_batch": 32},
    "evaluate": {"num_eval": 2, "epochs": 4, "ratbptt_epochs": 4, "full_data_runs": 1, "full_data_epochs": 1},
}
STAGES = ("download", "expert-buffer", "distill", "evaluate", "package")


def tiny(**sections: dict[str, Any]) -> dict:
    """TINY with some sections' keys replaced, e.g. tiny(distill={"ipc": 2})."""
    raw = copy.deepcopy(TINY)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def resolved(raw: dict) -> dict:
    """Every key, defaults filled in: DVC insists that each param a stage lists is present in the file."""
    return to_dict(params_from_dict(raw))


def run_stage(stage: str, p: Params, root: Path) -> Any:
    """One stage through its module (`distiller.stages.<stage>.run`), as `distiller <stage>` runs it."""
    return importlib.import_module(f"distiller.stages.{stage.replace('-', '_')}").run(p, Layout(root))


def make_project(root: Path, raw: dict | None = None, *stages: str) -> Path:
    """A project folder with params.yaml (TINY by default) and the given stages run in order."""
    root.mkdir(parents=True, exist_ok=True)
    raw = TINY if raw is None else raw
    write_params(root / "params.yaml", raw)
    for stage in stages:
        run_stage(stage, params_from_dict(raw), root)
    return root
