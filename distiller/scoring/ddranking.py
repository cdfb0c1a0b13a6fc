"""Fair scores beside accuracy: DD-Ranking's Label-Robust Score and Augmentation-Robust Score.

Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation" (arXiv 2505.13300), and its package
`ddranking` (metrics/hard_label.py, soft_label.py, aug_robust.py). Soft labels and augmentation raise a distilled
set's accuracy without the images being more informative; the two scores take them out. With accuracies as fractions
and a weight w = 0.5:

- HLR (hard-label recovery) = Acc(full real data) - Acc(synthetic, trained on hard labels): how much is left to
  recover; IOR (improvement over random) = Acc(synthetic, its own labels) - Acc(random real subset of the same size).
- a = w * IOR - (1 - w) * HLR, and LRS = (e^a - e^-1) / (e - e^-1): a lies in [-1, 1], so LRS lies in [0, 1].
- ARS: b = w * (Acc(syn, with aug) - Acc(random, with aug)) + (1 - w) * (Acc(syn, without) - Acc(random, without)),
  mapped the same way.

Every accuracy comes from this project's evaluation protocol, network i of every set with the same seeds, so the
scores are computed network by network and reported as mean and std over the networks.

A set that trains on learned soft labels (RaT-BPTT's) is compared, as in the package, with a random real subset
soft-labelled by a teacher (`teacher_labels`): a network trained on the full training set under the protocol, whose
softmax at the package's temperature (1) labels each random image. Against the random subset's hard labels, IOR and
ARS would credit the set with what soft labels alone give, the gain the scores exist to take out. A set with hard
labels is compared with the random subset on its hard labels, as in the package. Where we still differ from the
package: it feeds the same expressions accuracies in percent (so its scores can leave [0, 1]), keeps the best test
accuracy seen during training, tunes the lr of the random set and loads pretrained teachers; we use fractions, the
final network, the protocol's lr and the teacher trained here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

from distiller.core.params import Params
from distiller.core.runtime import generator
from distiller.data.prepared import Prepared
from distiller.nets import models
from distiller.nets.train import train_many
from distiller.scoring.evaluate import Protocol

WEIGHT = 0.5
TEMPERATURE = 1.0  # the package's soft-label losses (loss_fn_kwargs.temperature in its configs)


def robust(x: float) -> float:
    """(e^x - e^-1) / (e - e^-1): maps [-1, 1] onto [0, 1], increasing."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def lrs(full: float, syn_hard: float, syn: float, random: float, w: float = WEIGHT) -> tuple[float, float, float]:
    """(LRS, HLR, IOR) of one network's accuracies: full real data, the set on hard labels, the set on its labels,
    and a random real subset of the same size."""
    hlr, ior = full - syn_hard, syn - random
    return robust(w * ior - (1 - w) * hlr), hlr, ior


def ars(syn_aug: float, random_aug: float, syn_plain: float, random_plain: float, w: float = WEIGHT) -> float:
    """ARS of one network's accuracies with and without augmentation, for the set and the random subset."""
    return robust(w * (syn_aug - random_aug) + (1 - w) * (syn_plain - random_plain))


def summary(values: Sequence[float]) -> dict[str, object]:
    """mean, population std and the values, rounded like every accuracy of the metrics."""
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 6), "std": round(std, 6), "values": [round(v, 6) for v in values]}


def scores(
    full: Sequence[float],
    syn_hard: Sequence[float],
    syn: Sequence[float],
    random: Sequence[float],
    syn_plain: Sequence[float],
    random_plain: Sequence[float],
) -> dict[str, object]:
    """The scores of every network i (its accuracies in the other sequences; `full` averaged, as the full-data
    baseline has its own number of networks), summarised."""
    acc_full = statistics.fmean(full)
    per = [lrs(acc_full, *accs) for accs in zip(syn_hard, syn, random, strict=True)]
    robust_aug = [ars(*accs) for accs in zip(syn, random, syn_plain, random_plain, strict=True)]
    return {
        "lrs": summary([s for s, _, _ in per]),
        "ars": summary(robust_aug),
        "hlr": summary([h for _, h, _ in per]),
        "ior": summary([i for _, _, i in per]),
        "weight": WEIGHT,
    }


def soft_labels(logits: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """A teacher's label distributions: softmax(logits / T) per row, as the package's losses read its outputs."""
    return torch.softmax(logits.double() / temperature, dim=1).float()


def teacher_labels(
    images: torch.Tensor, data: Prepared, p: Params, proto: Protocol, device: torch.device
) -> torch.Tensor:
    """`images` labelled by the teacher: one network trained on the full training set under `proto` with the seeds,
    epochs and lr of the full-data baseline's first network (so it is that network), its softmax at TEMPERATURE."""
    cfg = proto.config(proto.real_lr, p.evaluate.full_data_epochs or None)
    net = models.build_model(p.model, data.image_shape, data.num_classes, generator(p.seed, "eval-init", 0), device)
    gen = generator(p.seed, "eval-train", 0, device=device)
    train_many([net], data.train_images.to(device), data.train_labels.to(device), cfg, proto.augment, [gen])
    net.eval()
    with torch.inference_mode():
        logits = torch.cat([net(x) for x in images.to(device).split(p.evaluate.test_batch_size)])
    return soft_labels(logits)
