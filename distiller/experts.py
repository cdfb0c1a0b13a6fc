"""Stage 1 of MTT: the expert buffer.

K networks, each freshly initialised and trained with plain SGD (no momentum, no decay) and DSA on the real training
set; the parameters are recorded before training (theta*_0) and after every epoch (theta*_1 .. theta*_E). Each
trajectory is one safetensors file of named tensors, keyed `epoch{e:03d}/{param_name}`, so nothing depends on the
order of `parameters()`. A JSON manifest says what the experts were trained on and with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from distiller import augment, batched, models
from distiller._runtime import DistillerError, generator, load_safetensors, save_safetensors, sha256_tensors
from distiller.data import Prepared
from distiller.params import AugmentParams, ExpertParams, ModelParams
from distiller.train import SGDConfig, accuracy, train_many

TRAJECTORY_FORMAT = "distiller.trajectory"
FORMAT_VERSION = "1"
MANIFEST = "manifest.json"

Trajectory = list[dict[str, torch.Tensor]]  # trajectory[e] = {param_name: tensor} after epoch e (e = 0: init)


@dataclass(frozen=True)
class ExpertBuffer:
    trajectories: list[Trajectory]
    manifest: dict[str, object]


def train_expert(
    data: Prepared,
    model_p: ModelParams,
    expert_p: ExpertParams,
    augment_p: AugmentParams,
    seed: int,
    index: int,
    device: torch.device,
    on_epoch: Callable[[int], None] | None = None,
) -> tuple[Trajectory, float]:
    """One expert's trajectory theta*_0 .. theta*_E (on the CPU) and its final test accuracy."""
    return train_experts(data, model_p, expert_p, augment_p, seed, [index], device, on_epoch)[0]


def train_experts(
    data: Prepared,
    model_p: ModelParams,
    expert_p: ExpertParams,
    augment_p: AugmentParams,
    seed: int,
    indices: Sequence[int],
    device: torch.device,
    on_epoch: Callable[[int], None] | None = None,
    kernels: batched.Kernels = "exact",
) -> list[tuple[Trajectory, float]]:
    """The experts `indices`, trained at once (`train_many`): each trajectory and accuracy is what `train_expert`
    gives for that index alone. `on_epoch(e)` runs once per epoch for all of them."""
    nets = [
        models.build_model(model_p, data.image_shape, data.num_classes, generator(seed, "expert-init", i), device)
        for i in indices
    ]
    snapshot = lambda net: {k: v.detach().cpu().clone() for k, v in net.named_parameters()}
    trajectories = [[snapshot(net)] for net in nets]

    def record(epoch: int) -> None:
        for trajectory, net in zip(trajectories, nets, strict=True):
            trajectory.append(snapshot(net))
        if on_epoch is not None:
            on_epoch(epoch)

    cfg = SGDConfig(epochs=expert_p.epochs, lr=expert_p.lr, batch_size=expert_p.batch_size)
    gens = [generator(seed, "expert-train", i, device=device) for i in indices]
    aug = augment_p if expert_p.augment else None
    train_many(nets, data.train_images, data.train_labels, cfg, aug, gens, record, kernels)
    return [(t, accuracy(net, data.test_images, data.test_labels)) for t, net in zip(trajectories, nets, strict=True)]


def trajectory_tensors(trajectory: Trajectory) -> dict[str, torch.Tensor]:
    return {f"epoch{e:03d}/{name}": t for e, params in enumerate(trajectory) for name, t in params.items()}


def save_trajectory(trajectory: Trajectory, path: Path) -> None:
    tensors = trajectory_tensors(trajectory)
    meta = {"content_hash": sha256_tensors(*(tensors[k] for k in sorted(tensors)))}
    save_safetensors(path, tensors, TRAJECTORY_FORMAT, FORMAT_VERSION, meta)


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


def load_trajectory(path: Path) -> Trajectory:
    tensors, meta = load_safetensors(path, TRAJECTORY_FORMAT, FORMAT_VERSION, "expert trajectory")
    if sha256_tensors(*(tensors[k] for k in sorted(tensors))) != meta.get("content_hash"):
        raise DistillerError(f"{path}: content hash mismatch (file corrupted or edited); re-run expert-buffer")
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
        "architecture": models.describe(model_p, data.image_shape, data.num_classes),
        "lr": expert_p.lr,
        "epochs": expert_p.epochs,
        "batch_size": expert_p.batch_size,
        "optimizer": "sgd (momentum 0, weight decay 0, constant lr)",
        "augment": augment.describe(augment_p) if expert_p.augment else None,
        "seed": seed,
        "num_experts": expert_p.num_experts,
    }


def write_manifest(directory: Path, info: dict[str, object], accuracies: list[float]) -> None:
    files = [f"expert_{i:03d}.safetensors" for i in range(len(accuracies))]
    body = {**info, "files": files, "test_accuracy": accuracies}
    (directory / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")


def load_buffer(directory: Path, data: Prepared, model_p: ModelParams, min_epochs: int) -> ExpertBuffer:
    """Load every trajectory, refusing a buffer made for other data or another architecture, or too short."""
    path = directory / MANIFEST
    if not path.is_file():
        raise DistillerError(f"expert buffer not found: {path} (run `distiller expert-buffer` first)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DistillerError(f"{path}: not valid JSON") from None
    if info.get("format") != "distiller.experts" or info.get("format_version") != FORMAT_VERSION:
        raise DistillerError(f"{path}: not a distiller expert manifest of format version {FORMAT_VERSION}")
    if info.get("dataset_hash") != data.content_hash:
        raise DistillerError(
            f"{path}: experts were trained on other data ({info.get('dataset')}); re-run expert-buffer"
        )
    arch = models.describe(model_p, data.image_shape, data.num_classes)
    if info.get("architecture") != arch:
        raise DistillerError(f"{path}: experts have another architecture than model params; re-run expert-buffer")
    if int(info.get("epochs", 0)) < min_epochs:
        raise DistillerError(f"{path}: experts have {info.get('epochs')} epochs, distillation needs {min_epochs}")
    if not info.get("files"):
        why = info.get("skipped", "it holds no trajectories")
        raise DistillerError(f"{path}: the expert buffer is empty ({why}); MTT needs experts: re-run expert-buffer")
    trajectories = [load_trajectory(directory / f) for f in info["files"]]
    return ExpertBuffer(trajectories=trajectories, manifest=info)
