"""Plain supervised training with SGD on a tensor dataset: shared by the expert buffer and evaluation.

Data stays resident on the device as one tensor; each epoch is a permutation drawn from the run's generator cut into
minibatches (the last one may be short, as a shuffling DataLoader gives).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distiller.augment import dsa
from distiller.params import AugmentParams


@dataclass(frozen=True)
class SGDConfig:
    epochs: int
    lr: float
    batch_size: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    decay_at_half: bool = False  # lr x 0.1 once, at epochs // 2 (MTT's evaluation schedule)
    optimizer: str = "sgd"  # sgd | adam (RaT-BPTT's inner optimiser; momentum is then unused)


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
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n = len(images)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        if cfg.decay_at_half and epoch == cfg.epochs // 2 + 1:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.1
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


@torch.inference_mode()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)
