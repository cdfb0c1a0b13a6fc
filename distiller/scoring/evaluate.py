"""Honest evaluation: train fresh networks on a set and test them on the held-out test split.

Two protocols, chosen by the method that made the set and applied to the set and all its references alike:
- MTT (`utils.evaluate_synset`): SGD with momentum 0.9 and weight decay 5e-4, the learned lr, batch 256, lr x0.1 at
  half of the epochs, DSA on while training.
- RaT-BPTT sets (no learned lr): by default the same SGD protocol at real_lr for every set, for
  `evaluate.ratbptt_epochs`; or (`ratbptt_optimizer: inner`) the reference's `base.test`: the inner optimiser at the
  inner lr, constant, no weight decay, RaT-BPTT's augmentation. The reference keeps the best of several test-time
  checkpoints, which selects on the test set; we report the final network.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from distiller.core.params import AugmentParams, Params
from distiller.core.runtime import SILENT, Reporter, generator
from distiller.data.prepared import Prepared
from distiller.nets import augment, models
from distiller.nets.train import SGDConfig, accuracy, epoch_ticks, networks_at_once, train_many


@dataclass(frozen=True)
class EvalResult:
    """Test accuracies (fractions in [0, 1]) of independently trained networks; std is the population std."""

    runs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.runs)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.runs) if len(self.runs) > 1 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"mean": round(self.mean, 6), "std": round(self.std, 6), "runs": [round(a, 6) for a in self.runs]}

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} +- {100 * self.std:.2f} % (n={len(self.runs)})"


@dataclass(frozen=True)
class Protocol:
    """How every network of one evaluation trains: the same for the distilled set and all its references."""

    name: Literal["mtt", "mtt-sgd", "ratbptt-inner"]
    optimizer: Literal["sgd", "adam"]
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float
    decay_at_half: bool
    augment: AugmentParams | None
    real_lr: float  # the lr of every set that has no learned one
    learned_lr: bool  # a set that carries a learned lr (MTT's syn_lr) trains with it

    def lr(self, learned: float | None) -> float:
        return learned if self.learned_lr and learned is not None else self.real_lr

    def config(self, lr: float, epochs: int | None = None) -> SGDConfig:
        return SGDConfig(
            epochs=epochs or self.epochs,
            lr=lr,
            batch_size=self.batch_size,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            decay_at_half=self.decay_at_half,
            optimizer=self.optimizer,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "optimizer": self.optimizer,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "momentum": self.momentum if self.optimizer == "sgd" else None,
            "weight_decay": self.weight_decay,
            "lr_schedule": "x0.1 at epochs // 2" if self.decay_at_half else "constant",
            "lr": "learned syn_lr for the distilled set; real_lr for real-image sets"
            if self.learned_lr
            else "real_lr for every set",
            "real_lr": self.real_lr,
            "augmentation": augment.describe(self.augment) if self.augment is not None else None,
        }


def protocol_for(p: Params, method: str) -> Protocol:
    """MTT sets: MTT's protocol (the learned lr; real_lr for real-image sets), `evaluate.epochs` epochs.

    RaT-BPTT sets learn no lr, so every set of their evaluation trains the same way, for `evaluate.ratbptt_epochs`:
    with `ratbptt_optimizer` sgd, MTT's SGD protocol at real_lr; with `inner`, the inner optimiser the set was distilled
    for at its inner lr, constant, no weight decay, RaT-BPTT's augmentation (as the reference's `base.test` trains)."""
    e = p.evaluate
    mtt_aug = p.augment if e.augment and p.augment.strategy.names else None
    if method == "ratbptt" and e.ratbptt_optimizer == "inner":
        r = p.ratbptt
        aug = augment.with_families(p.augment, r.augment) if e.augment and r.augment.names else None
        return Protocol(
            "ratbptt-inner",
            r.inner_optimizer,
            e.ratbptt_epochs,
            e.batch_size,
            r.inner_momentum,
            0.0,
            False,
            aug,
            r.inner_lr,
            learned_lr=False,
        )
    if method == "ratbptt":
        return Protocol(
            "mtt-sgd",
            "sgd",
            e.ratbptt_epochs,
            e.batch_size,
            e.momentum,
            e.weight_decay,
            True,
            mtt_aug,
            e.real_lr,
            learned_lr=False,
        )
    return Protocol(
        "mtt", "sgd", e.epochs, e.batch_size, e.momentum, e.weight_decay, True, mtt_aug, e.real_lr, learned_lr=True
    )


def score(
    images: torch.Tensor,
    targets: torch.Tensor,
    data: Prepared,
    p: Params,
    proto: Protocol,
    *,
    lr: float,
    runs: int,
    device: torch.device,
    epochs: int | None = None,
    progress: Reporter = SILENT,
    description: str = "evaluate",
    networks: Sequence[int] | None = None,
) -> EvalResult:
    """Train `runs` fresh networks on (images, targets) under `proto` and test each one (only the networks
    `networks` of them, when given: a torchrun rank trains its share).

    Network i of every set in one run starts from the same initialisation and draws the same minibatch orders and
    augmentations, so sets differ only in their images. `targets` are hard labels or label distributions.
    `evaluate.parallel` networks train at once (`train_many`); network i's accuracy does not depend on how many, nor
    on which others train beside it."""
    indices = range(runs) if networks is None else networks
    cfg = proto.config(lr, epochs)
    advance = progress.task(description, len(indices) * cfg.epochs)
    images, targets = images.to(device), targets.to(device)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)
    at_once = networks_at_once(p.evaluate.parallel, len(indices))
    accs = []
    for first in range(0, len(indices), at_once):
        group = indices[first : first + at_once]
        nets = [
            models.build_model(p.model, data.image_shape, data.num_classes, generator(p.seed, "eval-init", i), device)
            for i in group
        ]
        gens = [generator(p.seed, "eval-train", i, device=device) for i in group]
        train_many(nets, images, targets, cfg, proto.augment, gens, on_epoch=epoch_ticks(advance, len(nets)))
        accs += [accuracy(net, test_images, test_labels, p.evaluate.test_batch_size) for net in nets]
    return EvalResult(tuple(accs))


def protocol(p: Params, data: Prepared, proto: Protocol) -> dict[str, object]:
    """The evaluation protocol as plain data (for metrics and dataset cards)."""
    e = p.evaluate
    return {
        **proto.as_dict(),
        "architecture": models.describe(p.model, data.image_shape, data.num_classes),
        "num_eval": e.num_eval,
        "full_data": {"runs": e.full_data_runs, "epochs": e.full_data_epochs or proto.epochs},
        "std": "population (numpy default)",
        "test_split": f"{len(data.test_labels)} held-out images"
        + (" (a validation split carved out of the training set: tuning only)" if data.held_out != "test" else ""),
    }
