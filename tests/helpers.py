"""Helpers shared by the tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import yaml

# Tiny settings: every stage runs in about a second on the CPU.
TINY: dict = {
    "seed": 0,
    "device": "cpu",
    "model": {"width": 8},
    "expert": {"num_experts": 2, "epochs": 3},
    "distill": {"ipc": 1},
    "mtt": {"iterations": 3, "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 2},
    "ratbptt": {"iterations": 2, "horizon": 4, "window": 2, "real_batch": 32},
    "evaluate": {"num_eval": 2, "epochs": 4, "ratbptt_epochs": 4, "full_data_runs": 1, "full_data_epochs": 1},
}


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def resolved(raw: dict) -> dict:
    """Every key, defaults filled in: DVC insists that each param a stage lists is present in the file."""
    from distiller.params import params_from_dict, to_dict

    return to_dict(params_from_dict(raw))
