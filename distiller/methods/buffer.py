"""The expert buffer on disk: one safetensors trajectory per expert and a JSON manifest.

Each trajectory holds an expert's parameters before training (theta*_0) and after every epoch (theta*_1 ..
theta*_E), keyed `epoch{e:03d}/{param_name}`, so nothing depends on the order of `parameters()`, with a content hash.
The manifest says what the experts were trained on and with; `load_buffer` refuses a buffer made for other data,
another architecture, or too few epochs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from distiller.core.errors import DistillerError
from distiller.core.files import load_safetensors, read_sealed_json, save_safetensors, write_sealed_json
from distiller.core.params import AugmentParams, ExpertParams, ModelParams
from distiller.data.prepared import Prepared
from distiller.nets import augment, models

TRAJECTORY_FORMAT = "distiller.trajectory"
FORMAT_VERSION = "2"  # 2: sealed trajectories and manifest, each trajectory naming its data
MANIFEST = "manifest.json"

Trajectory = list[dict[str, torch.Tensor]]  # trajectory[e] = {param_name: tensor} after epoch e (e = 0: init)


@dataclass(frozen=True)
class ExpertBuffer:
    trajectories: list[Trajectory]
    manifest: dict[str, object]


def trajectory_tensors(trajectory: Trajectory) -> dict[str, torch.Tensor]:
    return {f"epoch{e:03d}/{name}": t for e, params in enumerate(trajectory) for name, t in params.items()}


IDENTITY = ("dataset_hash", "architecture", "lr", "epochs", "seed")  # what each trajectory shares with its manifest


def save_trajectory(trajectory: Trajectory, path: Path, info: dict[str, object]) -> str:
    """One expert's trajectory, sealed, with the identity of its buffer (`manifest`); returns its seal."""
    meta = {k: info[k] for k in IDENTITY}
    return save_safetensors(path, trajectory_tensors(trajectory), TRAJECTORY_FORMAT, FORMAT_VERSION, meta)


_KEY = re.compile(r"^epoch(\d{3})/(.+)$")


def trajectory_from_tensors(tensors: dict[str, torch.Tensor], path: Path | str = "trajectory") -> Trajectory:
    epochs: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise DistillerError(f"{path}: unexpected tensor name '{key}' in a trajectory")
        epochs.setdefault(int(m.group(1)), {})[m.group(2)] = t
    if sorted(epochs) != list(range(len(epochs))):
        raise DistillerError(f"{path}: trajectory epochs are not contiguous from 0")
    return [epochs[e] for e in range(len(epochs))]


def load_trajectory(path: Path, info: dict[str, object] | None = None, seal: str | None = None) -> Trajectory:
    """A trajectory, verified; with `info` (a manifest), refused unless it was trained for that very buffer, and with
    `seal` (the manifest's record of it) unless it is that very file."""
    tensors, meta = load_safetensors(
        path, TRAJECTORY_FORMAT, FORMAT_VERSION, "expert trajectory", "re-run expert-buffer"
    )
    if seal is not None and meta["seal"] != seal:
        raise DistillerError(f"{path}: not the expert the manifest lists under this name (swapped or copied)")
    if info is not None and any(meta.get(k) != info.get(k) for k in IDENTITY):
        raise DistillerError(
            f"{path}: this expert was trained for another buffer (other data, network or lr); re-run expert-buffer"
        )
    bad = next((k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise DistillerError(f"{path}: {bad} holds NaN or infinite values (a diverged expert); re-run expert-buffer")
    return trajectory_from_tensors(tensors, path)


def manifest(
    data: Prepared, model_p: ModelParams, expert_p: ExpertParams, augment_p: AugmentParams, seed: int
) -> dict[str, object]:
    """What identifies a buffer: checked by `load_buffer` against what the caller needs."""
    return {
        "format": "distiller.experts",
        "format_version": FORMAT_VERSION,
        "dataset": data.source,
        "dataset_hash": data.content_hash,
        "preprocess": data.preprocess + (f" (eps {data.zca_eps})" if data.preprocess == "zca" else ""),
        "architecture": models.describe(model_p, data.image_shape, data.num_classes),
        "lr": expert_p.lr,
        "epochs": expert_p.epochs,
        "batch_size": expert_p.batch_size,
        "optimizer": "sgd (momentum 0, weight decay 0, constant lr)",
        "augment": augment.describe(augment_p) if expert_p.augment else None,
        "seed": seed,
        "num_experts": expert_p.num_experts,
    }


def expert_file(i: int) -> str:
    return f"expert_{i:03d}.safetensors"


def write_manifest(directory: Path, info: dict[str, object], accuracies: list[float], seals: list[str]) -> None:
    files = [expert_file(i) for i in range(len(accuracies))]
    write_sealed_json(directory / MANIFEST, {**info, "files": files, "seals": seals, "test_accuracy": accuracies})


def load_buffer(directory: Path, data: Prepared, model_p: ModelParams, min_epochs: int) -> ExpertBuffer:
    """Load every trajectory, refusing a buffer made for other data or another architecture, or too short."""
    path = directory / MANIFEST
    info = read_sealed_json(path, "expert buffer", "run `distiller expert-buffer`")
    if info.get("format") != "distiller.experts" or info.get("format_version") != FORMAT_VERSION:
        raise DistillerError(f"{path}: not a distiller expert manifest of format version {FORMAT_VERSION}")
    if info.get("dataset_hash") != data.content_hash:
        raise DistillerError(
            f"{path}: experts were trained on other data ({info.get('dataset')}); re-run expert-buffer"
        )
    arch = models.describe(model_p, data.image_shape, data.num_classes)
    if info.get("architecture") != arch:
        raise DistillerError(f"{path}: experts have another architecture than model params; re-run expert-buffer")
    epochs, files, seals = info.get("epochs"), info.get("files"), info.get("seals")
    if not isinstance(epochs, int) or not isinstance(files, list) or not isinstance(seals, list):
        raise DistillerError(f"{path}: not a distiller expert manifest (epochs, files or seals of the wrong type)")
    if epochs < min_epochs:
        raise DistillerError(f"{path}: experts have {epochs} epochs, distillation needs {min_epochs}")
    if not files:
        why = info.get("skipped", "it holds no trajectories")
        raise DistillerError(f"{path}: the expert buffer is empty ({why}); MTT needs experts: re-run expert-buffer")
    if files != [expert_file(i) for i in range(len(files))] or len(seals) != len(files):
        raise DistillerError(f"{path}: its list of expert files is not distiller's; re-run expert-buffer")
    template = models.build_model(model_p, data.image_shape, data.num_classes, torch.Generator().manual_seed(0))
    shapes = {k: v.shape for k, v in template.named_parameters()}
    trajectories = [load_trajectory(directory / f, info, seal) for f, seal in zip(files, seals, strict=True)]
    for f, trajectory in zip(files, trajectories, strict=True):
        if len(trajectory) != epochs + 1 or any({k: v.shape for k, v in t.items()} != shapes for t in trajectory):
            raise DistillerError(f"{directory / f}: its parameters are not those of the network; re-run expert-buffer")
    return ExpertBuffer(trajectories=trajectories, manifest=info)
