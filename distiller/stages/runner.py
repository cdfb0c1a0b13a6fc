"""What a stage command runs around its stage module: params, the progress display and error contract, the project
lock, and the torchrun job when the stage is spread over processes.

`distiller <stage>` parses its options (`distiller.cli.app`) and calls `run_stage`, so everything here runs with the
stage and `dvc.yaml` lists it among every stage's deps (tests/test_dvc_deps.py checks it, by the imports and by
running each stage command).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any

import typer

from distiller.core.errors import DistillerError
from distiller.core.launch import LAUNCHED, in_torchrun, launch, rank, share_cores
from distiller.core.paths import Layout
from distiller.core.session import project_lock, session


def load(params: Path | None, overrides: list[str] | None, extra: dict[str, Any] | None = None) -> Any:
    """The params file with `-S` overrides and the command's own options (those not None) applied."""
    from distiller.core.config import parse_override
    from distiller.core.params import load_params

    pairs = dict(parse_override(o) for o in overrides or [])
    pairs.update({k: v for k, v in (extra or {}).items() if v is not None})
    return load_params(params, pairs)


def resolved(p: Any) -> Any:
    """`model.precision: auto` resolved for the device the stage runs on, so that what the stage stamps on its outputs
    (and the card states) is the arithmetic it used."""
    if p.model.precision != "auto":
        return p
    from distiller.core.runtime import resolve_device
    from distiller.nets.precision import resolve

    model = dataclasses.replace(p.model, precision=resolve("auto", resolve_device(p.device)))
    return dataclasses.replace(p, model=model)


def run_stage(
    name: str,
    params: Path,
    overrides: list[str] | None,
    root: Path,
    extra: dict[str, Any] | None = None,
    **options: Any,
) -> None:
    """Run the stage module `distiller.stages.<name>` and print its summary line (rank 0 prints it).
    With `expert.nproc`, `distill.nproc` (RaT-BPTT) or `evaluate.nproc` above 1 (outside torchrun), the stage runs as
    a torchrun job of that many processes (`distiller.core.launch`), at most one per core or GPU (`processes`)."""
    share_cores()  # before the stage module imports torch
    with session() as reporter:
        p = resolved(load(params, overrides, extra))
        stage = importlib.import_module(f"distiller.stages.{name}")
        if root.exists() and not root.is_dir():
            raise DistillerError(f"--root {root}: not a directory (the project folder that holds artifacts/)")
        layout = Layout(root)
        locked = rank() == 0 and LAUNCHED not in os.environ  # the launcher, or rank 0 of a plain torchrun, holds it
        with project_lock(layout.lock) if locked else contextlib.nullcontext():
            nproc = 1 if in_torchrun() else processes(p, name)  # in a torchrun job, torchrun said how many
            if nproc > 1:
                launch(name.replace("_", "-"), nproc, params, overrides or [], root)
                return  # rank 0 printed the summary
            result = stage.run(p, layout, reporter, **options)
    if rank() == 0:
        typer.echo(stage.summary(result))


NPROC = {"expert_buffer": "expert", "distill": "distill", "evaluate": "evaluate"}  # stage -> section of its nproc


def processes(p: Any, name: str) -> int:
    """How many processes the stage runs as: its `<section>.nproc` (an MTT distillation is one unit of work: one),
    refused in one line above what this machine can run at once (one process per CPU core, or per GPU on CUDA).
    The outputs are the same for any count, so a smaller one loses nothing but time."""
    section = NPROC.get(name)
    if section is None:
        return 1
    key, nproc = f"{section}.nproc", getattr(p, section).nproc
    if nproc > 1:
        cap, what = _slots(p.device)
        if nproc > cap:
            raise DistillerError(
                f"{key} {nproc}: more processes than this machine runs at once ({cap} {what}); set {key} to at "
                f"most {cap} (the outputs are the same for any value), or use torchrun --nnodes for more machines"
            )
    return 1 if name == "distill" and p.distill.method != "ratbptt" else nproc


def _slots(device: str) -> tuple[int, str]:
    """How many processes this machine runs side by side: its GPUs (one per rank) on CUDA, else its CPU cores."""
    import torch

    from distiller.core.runtime import resolve_device

    if resolve_device(device).type == "cuda":
        return torch.cuda.device_count(), "GPUs, one per process"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1, "CPU cores"
