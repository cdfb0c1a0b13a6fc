"""Stage 1 of MTT: the experts.

K networks, each freshly initialised and trained with plain SGD (no momentum, no decay) and DSA on the real training
set; the parameters are recorded before training (theta*_0) and after every epoch (theta*_1 .. theta*_E). Their file
format is `distiller.methods.buffer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from distiller.core.checkpoint import Store
from distiller.core.distributed import SINGLE, World, broadcast_flags, to_root
from distiller.core.errors import DistillerError
from distiller.core.params import AugmentParams, ExpertParams, ModelParams
from distiller.core.runtime import generator
from distiller.data.prepared import Prepared
from distiller.methods.buffer import Trajectory, trajectory_from_tensors, trajectory_tensors
from distiller.nets import batched, models
from distiller.nets.train import SGDConfig, accuracy, epoch_ticks, networks_at_once, train_many


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
    for i, trajectory in zip(indices, trajectories, strict=True):
        diverged = next((e for e, params in enumerate(trajectory) if not all_finite(params.values())), None)
        if diverged is not None:
            raise DistillerError(
                f"expert {i} diverged: its parameters are NaN or infinite after epoch {diverged}; lower expert.lr"
            )
    return [(t, accuracy(net, data.test_images, data.test_labels)) for t, net in zip(trajectories, nets, strict=True)]


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def train_buffer(
    data: Prepared,
    model_p: ModelParams,
    expert_p: ExpertParams,
    augment_p: AugmentParams,
    seed: int,
    device: torch.device,
    store: Store | None = None,
    advance: Callable[[int], None] = lambda n: None,
    w: World = SINGLE,
) -> Iterator[tuple[int, Trajectory, float]]:
    """(index, trajectory, final test accuracy) of every expert in order, trained `expert.parallel` at a time (0: all
    at once); only a round's worth is held in memory. With `store`, finished experts are kept whole (every
    `store.every`-th of them) and a later call trains only the ones it lacks.

    In a torchrun job every rank trains its share of the missing experts, a group per round, and sends them to rank
    0, which alone holds the store and yields; the other ranks yield nothing."""
    n = expert_p.num_experts
    done = torch.tensor([store is not None and store.finished(_name(i)) is not None for i in range(n)])
    missing = [i for i in range(n) if not broadcast_flags(w, done)[i]]
    at_once = networks_at_once(expert_p.parallel, n)
    groups = [missing[g : g + at_once] for g in range(0, len(missing), at_once)]
    template = models.build_model(model_p, data.image_shape, data.num_classes, generator(seed, "shapes"))
    shapes = [(k, v.shape) for k, v in template.named_parameters()]
    received: dict[int, tuple[Trajectory, float]] = {}
    ready = 0  # experts below this index are yielded

    def in_order() -> Iterator[tuple[int, Trajectory, float]]:
        nonlocal ready
        while w.root and ready < n and (ready in received or ready not in missing):
            yield (
                ready,
                *(received.pop(ready) if ready in received else _stored(store, ready, expert_p, advance, shapes)),
            )
            ready += 1

    for first in range(0, len(groups), w.size):
        round_ = groups[first : first + w.size]  # rank r trains round_[r]
        mine = round_[w.rank] if w.rank < len(round_) else []
        tick = epoch_ticks(advance, len(mine))
        trained = train_experts(data, model_p, expert_p, augment_p, seed, mine, device, tick) if mine else []
        for i, (trajectory, acc) in _gather(w, round_, dict(zip(mine, trained, strict=True)), shapes, expert_p.epochs):
            received[i] = trajectory, acc
            if store is not None and store.due(i + 1):
                store.finish(_name(i), trajectory_tensors(trajectory), {"accuracy": acc})
        yield from in_order()
    yield from in_order()


def _name(i: int) -> str:
    return f"expert_{i:03d}"


def _stored(
    store: Store | None, i: int, expert_p: ExpertParams, advance: Callable[[int], None], shapes: Shapes
) -> tuple[Trajectory, float]:
    """A finished expert an earlier run kept, checked as one trained now would be: the network's parameters after
    every epoch (finite: `Store.load`) and an accuracy in [0, 1]; else refused by name, before anything is written."""
    saved = store.finished(_name(i)) if store is not None else None
    assert store is not None and saved is not None  # it was there when the run started
    path, acc = store.path(f"done-{_name(i)}"), saved.state.get("accuracy")
    trajectory = trajectory_from_tensors(saved.tensors, path)
    fits = len(trajectory) == expert_p.epochs + 1 and all(
        {k: v.shape for k, v in t.items()} == dict(shapes) for t in trajectory
    )
    if not fits or not isinstance(acc, (int, float)) or isinstance(acc, bool) or not 0 <= acc <= 1:
        raise DistillerError(f"{path}: not a finished expert of this run (its parameters or accuracy); delete it")
    advance(expert_p.epochs)
    return trajectory, float(acc)


Shapes = list[tuple[str, torch.Size]]  # the network's parameters by name, in order


def _gather(
    w: World, round_: list[list[int]], mine: dict[int, tuple[Trajectory, float]], shapes: Shapes, epochs: int
) -> list[tuple[int, tuple[Trajectory, float]]]:
    """On rank 0, every expert of the round with its accuracy, in index order; on the others, nothing (they send
    theirs). An expert travels as one float32 vector: every epoch's parameters, then the accuracy's float64 bits."""
    if w.size == 1:
        return sorted(mine.items())
    numel = (epochs + 1) * sum(shape.numel() for _, shape in shapes) + 2
    got = []
    for position in range(max(map(len, round_))):  # one expert per sending rank at a time
        senders = [r for r, group in enumerate(round_) if position < len(group)]
        own = _pack(*mine[round_[w.rank][position]]) if w.rank in senders else None
        flats = to_root(w, own, senders, numel)
        if w.root:  # the other ranks only send
            got += [(round_[r][position], _unpack(f, shapes, epochs)) for r, f in zip(senders, flats, strict=True)]
    return sorted(got, key=lambda item: item[0])


def _pack(trajectory: Trajectory, acc: float) -> torch.Tensor:
    bits = torch.tensor([acc], dtype=torch.float64).view(torch.float32)  # exact: the bits travel, not a rounding
    return torch.cat([t.reshape(-1) for params in trajectory for t in params.values()] + [bits])


def _unpack(flat: torch.Tensor, shapes: Shapes, epochs: int) -> tuple[Trajectory, float]:
    trajectory, pos = [], 0
    for _ in range(epochs + 1):
        params = {}
        for name, shape in shapes:
            params[name] = flat[pos : pos + shape.numel()].view(shape).clone()
            pos += shape.numel()
        trajectory.append(params)
    return trajectory, float(flat[pos:].view(torch.float64).item())
