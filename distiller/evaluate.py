"""Honest evaluation: train fresh networks on a set and test them on the held-out test split.

The MTT protocol (`utils.evaluate_synset`): `num_eval` networks, SGD with momentum 0.9 and weight decay 5e-4, batch
256, lr x0.1 at half of the epochs, DSA on while training. Network i of every set evaluated in one run uses the same
initialisation and the same stream of minibatch orders and augmentations, so sets differ only in their images.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from distiller import augment, models
from distiller._runtime import SILENT, Reporter, generator
from distiller.data import Prepared
from distiller.params import Params
from distiller.train import SGDConfig, accuracy, train


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


def score(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: Prepared,
    p: Params,
    *,
    lr: float,
    runs: int,
    epochs: int,
    device: torch.device,
    progress: Reporter = SILENT,
    description: str = "evaluate",
) -> EvalResult:
    """Train `runs` fresh networks on (images, labels) with the protocol in `p.evaluate` and test each one."""
    e = p.evaluate
    cfg = SGDConfig(
        epochs=epochs,
        lr=lr,
        batch_size=e.batch_size,
        momentum=e.momentum,
        weight_decay=e.weight_decay,
        decay_at_half=True,
    )
    advance = progress.task(description, runs * epochs)
    accs = []
    for i in range(runs):
        model = models.build_model(
            p.model, data.image_shape, data.num_classes, generator(p.seed, "eval-init", i), device
        )
        gen = generator(p.seed, "eval-train", i, device=device)
        train(
            model,
            images.to(device),
            labels.to(device),
            cfg,
            p.augment if e.augment else None,
            gen,
            on_epoch=lambda _: advance(1),
        )
        accs.append(accuracy(model, data.test_images.to(device), data.test_labels.to(device), e.test_batch_size))
    return EvalResult(tuple(accs))


def protocol(p: Params, data: Prepared) -> dict[str, object]:
    """The evaluation protocol as plain data (for metrics and dataset cards)."""
    e = p.evaluate
    return {
        "name": "mtt",
        "architecture": models.describe(p.model, data.image_shape, data.num_classes),
        "optimizer": "sgd",
        "momentum": e.momentum,
        "weight_decay": e.weight_decay,
        "batch_size": e.batch_size,
        "epochs": e.epochs,
        "lr_schedule": "x0.1 at epochs // 2",
        "lr": "learned syn_lr for the distilled set; real_lr for real-image baselines",
        "real_lr": e.real_lr,
        "augmentation": augment.describe(p.augment) if e.augment else None,
        "num_eval": e.num_eval,
        "full_data": {"runs": e.full_data_runs, "epochs": e.full_data_epochs or e.epochs},
        "std": "population (numpy default)",
        "test_split": f"{len(data.test_labels)} held-out images",
    }
