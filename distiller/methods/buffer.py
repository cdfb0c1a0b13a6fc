"""The expert buffer on disk: one safetensors trajectory per expert and a JSON manifest.

Each trajectory holds an expert's parameters before training (theta*_0) and after every epoch (theta*_1 ..
theta*_E), keyed `epoch{e:03d}/{param_name}`, so nothing depends on the order of `parameters()`, with a content hash.
The manifest says what the experts were trained on and with (`read_manifest` checks each field's type and that its
files are distiller's names inside the buffer); `load_buffer` refuses a buffer made for other data, another
architecture, too few epochs, or other params than the run's (`differing` names them).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distiller.core.errors import DistillerError
from distiller.core.files import load_safetensors, read_sealed_json, save_safetensors, write_sealed_json
from distiller.core.params import AugmentParams, ExpertParams, ModelParams
from distiller.core.paths import inside
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


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _texts(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_FIELDS: dict[str, Callable[[Any], bool]] = {  # what `write_manifest` writes, each of the type it writes
    **dict.fromkeys(("dataset", "dataset_hash", "preprocess", "optimizer"), lambda v: isinstance(v, str)),
    "architecture": lambda v: isinstance(v, dict),
    "augment": lambda v: v is None or isinstance(v, dict),
    "lr": lambda v: _number(v) and v > 0,
    **dict.fromkeys(("epochs", "batch_size", "num_experts"), _count),
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    **dict.fromkeys(("files", "seals"), _texts),
    "test_accuracy": lambda v: isinstance(v, list) and all(_number(a) and 0 <= a <= 1 for a in v),
}


def read_manifest(directory: Path) -> tuple[dict[str, Any], list[Path]]:
    """A buffer's manifest, sealed and holding every field of the type distiller writes, and the paths of its experts:
    each listed under the name distiller gives it, inside `directory`, with one seal and one accuracy. Anything else,
    and a buffer without experts (RaT-BPTT's), is one line naming the manifest."""
    path = directory / MANIFEST
    info = read_sealed_json(path, "expert buffer", "run `distiller expert-buffer`")
    if info.get("format") != "distiller.experts" or info.get("format_version") != FORMAT_VERSION:
        raise DistillerError(f"{path}: not a distiller expert manifest of format version {FORMAT_VERSION}")
    wrong = [k for k, ok in _FIELDS.items() if not ok(info.get(k))]
    if wrong:
        raise DistillerError(
            f"{path}: not distiller's expert manifest ({', '.join(wrong)}: wrong type or out of range); "
            "re-run expert-buffer"
        )
    files = info["files"]
    if not files:
        why = info.get("skipped") or "no trajectories were written"
        raise DistillerError(
            f"{path}: the expert buffer is empty, it holds no experts ({why}); MTT needs experts: re-run expert-buffer"
        )
    paths = [inside(directory, f, "expert file", path) for f in files]
    if files != [expert_file(i) for i in range(len(files))]:
        raise DistillerError(f"{path}: its list of expert files is not distiller's; re-run expert-buffer")
    counts = len(files), len(info["seals"]), len(info["test_accuracy"]), info["num_experts"]
    if len(set(counts)) != 1:
        said = "{} files, {} seals, {} accuracies, num_experts {}".format(*counts)
        raise DistillerError(f"{path}: its experts do not add up ({said}); re-run expert-buffer")
    return info, paths


PARAMS = {  # a manifest's keys -> the params that set them
    "dataset_hash": "data",
    "preprocess": "data.preprocess",
    "architecture": "model",
    "lr": "expert.lr",
    "epochs": "expert.epochs",
    "batch_size": "expert.batch_size",
    "optimizer": "the optimiser",
    "augment": "augment",
    "seed": "seed",
    "num_experts": "expert.num_experts",
}


def differing(info: dict[str, Any], expected: dict[str, object]) -> str:
    """The params a buffer was trained with that are not `expected`'s (this run's `manifest`), one by one:
    'expert.lr 0.01 (this run: 0.05), seed 3 (this run: 0)'; '' when every one agrees."""
    ours = json.loads(json.dumps(expected))  # as the manifest holds them (lists, not tuples)
    out = []
    for key, param in PARAMS.items():
        theirs, mine = info.get(key), ours.get(key)
        if theirs == mine:
            continue
        if key == "augment" and (theirs is None) != (mine is None):
            out.append(f"expert.augment {theirs is not None} (this run: {mine is not None})")
        elif isinstance(theirs, (dict, list)) or isinstance(mine, (dict, list)) or len(str(theirs)) > 24:
            out.append(f"{param} (other settings)")
        else:
            out.append(f"{param} {theirs} (this run: {mine})")
    return ", ".join(out)


def load_buffer(
    directory: Path, data: Prepared, model_p: ModelParams, min_epochs: int, expected: dict[str, object] | None = None
) -> ExpertBuffer:
    """Load every trajectory, refusing a buffer made for other data or another architecture, or too short, and with
    `expected` (this run's `manifest`) one trained with any other param (the card states this run's)."""
    info, paths = read_manifest(directory)
    path = directory / MANIFEST
    if info["dataset_hash"] != data.content_hash:
        raise DistillerError(f"{path}: experts were trained on other data ({info['dataset']}); re-run expert-buffer")
    if info["architecture"] != models.describe(model_p, data.image_shape, data.num_classes):
        raise DistillerError(
            f"{path}: experts have another architecture than model params (model.precision included: the experts' is "
            f"{info['architecture'].get('precision', 'fp32')}); re-run expert-buffer"
        )
    if info["epochs"] < min_epochs:
        raise DistillerError(f"{path}: experts have {info['epochs']} epochs, distillation needs {min_epochs}")
    if expected is not None and (differ := differing(info, expected)):
        raise DistillerError(f"{path}: the experts were trained with other params: {differ}; re-run expert-buffer")
    template = models.build_model(model_p, data.image_shape, data.num_classes, torch.Generator().manual_seed(0))
    shapes = {k: v.shape for k, v in template.named_parameters()}
    trajectories = [load_trajectory(f, info, seal) for f, seal in zip(paths, info["seals"], strict=True)]
    for f, trajectory in zip(paths, trajectories, strict=True):
        if len(trajectory) != info["epochs"] + 1 or any(
            {k: v.shape for k, v in t.items()} != shapes for t in trajectory
        ):
            raise DistillerError(f"{f}: its parameters are not those of the network; re-run expert-buffer")
    return ExpertBuffer(trajectories=trajectories, manifest=info)
