"""Stage 1 of MTT: the experts.

K networks, each freshly initialised and trained with plain SGD (no momentum, no decay) and DSA on the real training
set; the parameters are recorded before training (theta*_0) and after every epoch (theta*_1 .. theta*_E). Their file
format is `distiller.buffer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from distiller import batched, models
from distiller._runtime import generator
from distiller.buffer import Trajectory, trajectory_from_tensors, trajectory_tensors
from distiller.checkpoint import Store
from distiller.params import AugmentParams, ExpertParams, ModelParams
from distiller.prepared import Prepared
from distiller.train import SGDConfig, accuracy, epoch_ticks, networks_at_once, train_many


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


def train_buffer(
    data: Prepared,
    model_p: ModelParams,
    expert_p: ExpertParams,
    augment_p: AugmentParams,
    seed: int,
    device: torch.device,
    store: Store | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Iterator[tuple[int, Trajectory, float]]:
    """(index, trajectory, final test accuracy) of every expert in order, trained `expert.parallel` at a time (0: all
    at once); only one group is held in memory. With `store`, finished experts are kept whole (every
    `store.every`-th of them) and a later call trains only the ones it lacks."""
    n, at_once = expert_p.num_experts, networks_at_once(expert_p.parallel, expert_p.num_experts)
    for first in range(0, n, at_once):
        group = range(first, min(first + at_once, n))
        results: dict[int, tuple[Trajectory, float]] = {}
        for i in group:
            saved = store.finished(f"expert_{i:03d}") if store is not None else None
            if saved is not None:
                results[i] = trajectory_from_tensors(saved.tensors), saved.state["accuracy"]
                advance(expert_p.epochs)
        missing = [i for i in group if i not in results]
        tick = epoch_ticks(advance, len(missing))
        fresh = train_experts(data, model_p, expert_p, augment_p, seed, missing, device, tick) if missing else []
        for i, (trajectory, acc) in zip(missing, fresh, strict=True):
            results[i] = trajectory, acc
            if store is not None and store.due(i + 1):
                store.finish(f"expert_{i:03d}", trajectory_tensors(trajectory), {"accuracy": acc})
        for i in group:
            yield i, *results.pop(i)
