"""Plain supervised training with SGD on a tensor dataset: shared by the expert buffer and evaluation.

Data stays resident on the device as one tensor; each epoch is a permutation drawn from the run's generator cut into
minibatches (the last one may be short, as a shuffling DataLoader gives). `train_many` trains several networks of one
architecture at once, one shared step per minibatch, each exactly as `train` would train it alone with its own
generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distiller.core.params import AugmentParams
from distiller.nets import batched
from distiller.nets.augment import dsa, dsa_many


@dataclass(frozen=True)
class SGDConfig:
    epochs: int
    lr: float
    batch_size: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    decay_at_half: bool = False  # lr x 0.1 once, at epochs // 2 (MTT's evaluation schedule)
    optimizer: Literal["sgd", "adam"] = "sgd"  # adam: RaT-BPTT's inner optimiser (momentum is then unused)


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: SGDConfig,
    augment: AugmentParams | None,
    gen: torch.Generator,
    on_epoch: Callable[[int], None] | None = None,
) -> None:
    """Train `model` in place; `on_epoch(e)` runs after epoch e = 1 .. epochs; `gen` draws order and augmentation."""
    opt = _optimizer(list(model.parameters()), cfg)
    n = len(images)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        _schedule(opt, cfg, epoch)
        order = torch.randperm(n, generator=gen, device=gen.device).to(images.device)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x = images[idx]
            if augment is not None:
                x = dsa(x, augment, gen)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch)


# Above this many input values in the K minibatches, K graphs alive at once outgrow the CPU's caches and one backward
# per network beats one for all: for 5 default ConvNets on 8x8 digits (a 2-core Xeon), one backward is 1.28x faster
# than `train` one at a time at 10 images per network, 1.09x at 30 and 0.94x at 50, against 1.16x, 1.06x and 1.04x.
_SHARED_GRAPH_MAX_INPUTS = 8192


def train_many(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: SGDConfig,
    augment: AugmentParams | None,
    gens: Sequence[torch.Generator],
    on_epoch: Callable[[int], None] | None = None,
    kernels: batched.Kernels = "exact",
) -> None:
    """Train K networks of one architecture in place at once, network k exactly as `train(models[k], ..., gens[k])`.

    Every network keeps its own initialisation, generator (minibatch order, augmentation draws) and optimiser state.
    What is shared is the per-step bookkeeping, not the arithmetic: one gather of the K minibatches, one `dsa_many`
    call, one loss and one backward (on the CPU, for small minibatches only; see `_SHARED_GRAPH_MAX_INPUTS`) and one
    optimiser step over all K parameter lists. The optimiser runs its `foreach` implementation, which makes the
    per-tensor calls of the loop that `train` runs on the CPU.

    kernels "exact": each network runs its own forward on its own minibatch, the very calls it makes alone (buffers
    such as running statistics included), so the numbers are bitwise those of `train` (tested on the CPU). The loss
    is the sum over networks of each one's mean cross-entropy over its own minibatch: d(sum)/d(loss_k) = 1, so each
    network gets the gradient of its own loss. Stacking the networks' parameter-free ops (ReLU, pooling) into one
    call saves nothing on the CPU, where their cost is per image. kernels "grouped": one vmapped forward
    (`batched.forward`) of buffer-free networks, equal only up to rounding.
    `on_epoch(e)` runs once per epoch for all."""
    if len(models) == 1:
        train(models[0], images, labels, cfg, augment, gens[0], on_epoch)
        return
    if kernels == "grouped":
        batched.check_stackable(models[0])
    k, n = len(models), len(images)
    opt = _optimizer([p for m in models for p in m.parameters()], cfg, foreach=True)
    for m in models:
        m.train()
    for epoch in range(1, cfg.epochs + 1):
        _schedule(opt, cfg, epoch)
        order = torch.stack([torch.randperm(n, generator=g, device=g.device).to(images.device) for g in gens])  # (K, n)
        for start in range(0, n, cfg.batch_size):
            idx = order[:, start : start + cfg.batch_size]  # (K, B)
            x = images[idx]  # (K, B, C, H, W)
            if augment is not None:
                x = dsa_many(x, augment, gens)
            opt.zero_grad(set_to_none=True)
            if kernels == "exact" and images.device.type == "cpu" and x.numel() > _SHARED_GRAPH_MAX_INPUTS:
                for m, xk, yk in zip(models, x.unbind(), labels[idx].unbind(), strict=True):
                    F.cross_entropy(m(xk), yk).backward()  # frees each network's graph before the next forward
            else:
                if kernels == "exact":
                    logits = torch.cat([m(xk) for m, xk in zip(models, x.unbind(), strict=True)])  # (K * B, classes)
                else:
                    logits = batched.forward(models[0], batched.stack(models), x).flatten(0, 1)
                y = labels[idx].flatten(0, 1)  # (K * B) hard labels or (K * B, classes) distributions
                F.cross_entropy(logits, y, reduction="none").view(k, -1).mean(1).sum().backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch)


def networks_at_once(parallel: int, count: int) -> int:
    """How many of `count` networks to train at once: `parallel`, or with 0 all of them (on the CPU the gain is
    modest, 1.1-1.4x, because each network's convolutions dominate; see docs/benchmarks.md)."""
    if parallel == 0:
        return count
    return max(1, min(parallel, count))


def epoch_ticks(advance: Callable[[int], None], k: int) -> Callable[[int], None]:
    """An `on_epoch` for k networks trained at once: k network-epochs of progress after each epoch."""
    return lambda _epoch: advance(k)


def _optimizer(params: list[torch.Tensor], cfg: SGDConfig, foreach: bool | None = None) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=foreach)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=foreach)


def _schedule(opt: torch.optim.Optimizer, cfg: SGDConfig, epoch: int) -> None:
    if cfg.decay_at_half and epoch == cfg.epochs // 2 + 1:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.1


@torch.inference_mode()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)
