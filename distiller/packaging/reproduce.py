"""`distiller reproduce`: train fresh networks on a packaged set exactly as its card says, test them on the source's
test split as the card names it, and compare with the accuracy the card claims.

The card is the contract, so everything comes from it and its sidecars, nothing from the pipeline that made it: the
network (the ConvNet the card describes, built here), the optimiser, epochs, batch, lr (the config's), schedule,
weight decay and DSA (implemented here from the card's constants, not by `distiller.nets.augment`: a bug there would
otherwise hide itself), the labels to train on, the preprocessing (the card's mean and std, or the ZCA sidecar) and
the test images (the source's canonical test split, or the indices of the split sidecar). Only the reading of the
source's files is shared with `download` (`distiller.data.sources`). A Hub repo id is fetched at `revision` first.
Before any training, the preprocessing is checked against the training split it claims to come from: the mean and
std recomputed, or the ZCA transform fitted again with the card's eps (`fit_zca`, shared with `download`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distiller.core.errors import DistillerError
from distiller.core.files import load_safetensors
from distiller.core.params import DataParams
from distiller.core.runtime import SILENT, Reporter, generator, quiet_datasets
from distiller.packaging.contract import Architecture, Augmentation, Budget, Contract


@dataclass(frozen=True)
class Row:
    config: str
    claimed: float  # the card's mean accuracy (fraction)
    accs: tuple[float, ...]  # this reproduction's networks

    @property
    def measured(self) -> float:
        return statistics.fmean(self.accs)

    def line(self) -> str:
        spread = statistics.pstdev(self.accs) if len(self.accs) > 1 else 0.0
        return (
            f"{self.config}: measured {100 * self.measured:.2f} +- {100 * spread:.2f} % ({len(self.accs)} networks), "
            f"card {100 * self.claimed:.2f} %, difference {100 * (self.measured - self.claimed):+.2f} points"
        )


def fetch(target: str, revision: str | None) -> Path:
    """A local folder, or a Hub dataset repo id (org/name) downloaded at `revision`."""
    if Path(target).is_dir():
        return Path(target)
    if target.count("/") != 1 or target.startswith(("/", ".")):
        raise DistillerError(f"{target}: neither a dataset folder nor a Hub repo id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(target, repo_type="dataset", revision=revision))
    except Exception as e:  # RepositoryNotFoundError, RevisionNotFoundError, offline, ...
        why = f"{revision or 'main'} ({type(e).__name__})"
        raise DistillerError(f"{target}: cannot fetch it from the Hub at {why}") from None


def test_set(c: Contract, folder: Path, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The real test images in the space of pixel_values, and their labels, as the card names them."""
    from distiller.data.prepare import resize
    from distiller.data.sources import load

    _, h, w = c.protocol.architecture.input_shape
    root = root.resolve()  # data.root is resolved against root again: a relative --root would be doubled
    raw = load(DataParams(source=c.source.name, root=str(root / "data" / "raw"), resolution=h if h == w else 0), root)
    split = c.source.test_split
    train = raw.train_images
    if split.kind == "indices":
        idx = load_safetensors(folder / str(split.file), "distiller.split", "1", "split sidecar")[0][str(split.tensor)]
        x, y = raw.train_images[idx], raw.train_labels[idx]
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[idx] = False
        train = train[keep]
    elif raw.test_images is not None and raw.test_labels is not None:
        x, y = raw.test_images, raw.test_labels
    else:
        raise DistillerError(f"{c.source.name}: the card names its '{split.split}' split, which the source lacks")
    x = resize(x, h)
    pre = c.preprocessing
    if pre.kind == "zca":
        t = load_safetensors(folder / pre.file, "distiller.zca", "1", "ZCA sidecar")[0]
        check_zca(c, folder / pre.file, t, resize(train, h))
        return (x.flatten(1) - t["mean"]).mm(t["matrix"]).view(x.shape), y
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (pre.mean or (), pre.std or ()))
    check_normalisation(c, mean.flatten(), std.flatten(), resize(train, h))
    return (x - mean) / std, y


def check_normalisation(c: Contract, mean: torch.Tensor, std: torch.Tensor, train: torch.Tensor) -> None:
    """The card's mean and std are the training split's. Accuracy alone cannot tell: an instance-normalised ConvNet
    barely notices a constant shift of its input (a mean off by 1.3 std cost digits 1.5 points)."""
    for name, card, real in (("mean", mean, train.mean(dim=(0, 2, 3))), ("std", std, train.std(dim=(0, 2, 3)))):
        if card.shape != real.shape or not torch.allclose(card.double(), real.double(), rtol=1e-3, atol=1e-4):
            found = ", ".join(f"{v:.6g}" for v in real.tolist())
            raise DistillerError(
                f"{c.source.name}: the card's preprocessing {name} {card.tolist()} is not its training split's "
                f"({found}): the card is wrong, or this is not the source it was made from"
            )


def check_zca(c: Contract, path: Path, sidecar: dict[str, torch.Tensor], train: torch.Tensor) -> None:
    """The ZCA sidecar is the transform of the training split (fitted again here with the card's eps), not one fitted
    on other images: like a wrong mean, a wrong whitening would cost a ConvNet too little to show in its accuracy."""
    from distiller.data.prepare import fit_zca

    fitted = fit_zca(train, c.preprocessing.eps or 0.0)
    for name in ("mean", "matrix"):
        mine, real = sidecar[name].double(), fitted[f"zca_{name}"].double()
        if mine.shape != real.shape or (mine - real).abs().max() > 1e-3 * real.abs().max():
            raise DistillerError(
                f"{path}: the ZCA {name} is not that of {c.source.name}'s training split (fitted again with eps "
                f"{c.preprocessing.eps}): the sidecar is wrong, or this is not the source it was made from"
            )


def convnet(a: Architecture, gen: torch.Generator) -> nn.Module:
    """The card's ConvNet: [conv3x3 -> norm -> ReLU -> pool2] x depth -> linear, the first conv padded by
    `first_padding` (so MNIST's 28x28 becomes 32x32), the others by 1; PyTorch's default initialisation drawn from
    `gen`."""
    if a.arch != "convnet" or a.depth is None or a.width is None or a.first_padding is None:
        raise DistillerError(f"the card's network is {a.arch}: reproduce rebuilds the ConvNet that sets train on")
    layers: list[nn.Module] = []
    c, side = a.input_shape[0], a.input_shape[1] + 2 * a.first_padding - 2
    for d in range(a.depth):
        norm: nn.Module = nn.GroupNorm(a.width, a.width) if a.norm.startswith("instancenorm") else nn.Identity()
        pool = nn.AvgPool2d(2) if a.pooling == "avgpool" else nn.MaxPool2d(2)
        layers += [nn.Conv2d(c, a.width, 3, padding=a.first_padding if d == 0 else 1), norm, nn.ReLU(), pool]
        c, side = a.width, side // 2
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * side * side, a.num_classes))
    with torch.no_grad():
        for m in net.modules():  # PyTorch's default scheme, drawn from `gen`: U(+-1/sqrt(fan_in)) weights and biases
            if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                bound = 1 / math.sqrt(m.weight[0].numel())
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.uniform_(-bound, bound, generator=gen)
    return net


def card_dsa(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """DSA with the card's constants: one family per minibatch (mode single) or each in turn, per-image draws."""
    names = aug.strategy.split("_") if aug.strategy != "none" else []
    if aug.mode == "single" and names:
        names = [names[int(torch.randint(len(names), (1,), generator=gen))]]
    for family in names:
        x = _family(x, family, aug, gen)
    return x


def _family(x: torch.Tensor, family: str, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    n, h = len(x), x.shape[-1]
    u = lambda: torch.rand(n, 1, 1, 1, generator=gen)
    if family == "color":  # brightness, saturation, contrast in turn
        x = x + (u() - 0.5) * aug.brightness
        m = x.mean(1, keepdim=True)
        x = (x - m) * u() * aug.saturation + m
        m = x.mean((1, 2, 3), keepdim=True)
        return (x - m) * (u() + aug.contrast) + m
    if family == "cutout":  # zero a square of side cutout * h around a random centre
        s = int(h * aug.cutout + 0.5)
        top, left = torch.randint(0, h, (2, n, 1, 1), generator=gen) - s // 2
        r = torch.arange(h)
        rows, cols = r.view(1, h, 1), r.view(1, 1, h)
        inside = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
        return x * ~inside.unsqueeze(1)
    if family == "flip":
        flip = torch.rand(n, generator=gen) < aug.flip
        return torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    theta = torch.eye(2, 3).repeat(n, 1, 1)  # scale, rotate, crop: affine resamplings
    if family == "scale":
        lo = 1 / aug.scale
        theta[:, 0, 0], theta[:, 1, 1] = torch.rand(2, n, generator=gen) * (aug.scale - lo) + lo
    elif family == "rotate":
        a = (torch.rand(n, generator=gen) - 0.5) * 2 * math.radians(aug.rotate_degrees)
        theta[:, :, :2] = torch.stack([torch.stack([a.cos(), a.sin()], 1), torch.stack([-a.sin(), a.cos()], 1)], 1)
    elif family == "crop":
        s = int(h * aug.crop + 0.5)
        theta[:, :, 2] = torch.randint(-s, s + 1, (n, 2), generator=gen) * 2 / (h - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=aug.align_corners)
    return F.grid_sample(x, grid, align_corners=aug.align_corners)


def train_and_test(
    c: Contract, budget: Budget, x: torch.Tensor, y: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor], seed: int
) -> float:
    """One network trained on (x, y) as the card's protocol says; its accuracy on the test set."""
    proto, gen = c.protocol, generator(seed, "reproduce")
    net = convnet(proto.architecture, gen)
    params = list(net.parameters())
    if proto.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, budget.lr, weight_decay=proto.weight_decay)
    else:
        opt = torch.optim.SGD(params, budget.lr, momentum=proto.momentum or 0.0, weight_decay=proto.weight_decay)
    for epoch in range(proto.epochs):
        if epoch == proto.epochs // 2 and proto.lr_schedule.startswith("x0.1"):
            opt.param_groups[0]["lr"] *= 0.1
        for i in torch.randperm(len(x), generator=gen).split(proto.batch_size):
            batch = card_dsa(x[i], proto.augmentation, gen) if proto.augmentation else x[i]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(batch), y[i]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pairs = zip(test[0].split(1024), test[1].split(1024), strict=True)
        correct = sum(int((net(a).argmax(1) == b).sum()) for a, b in pairs)
    return correct / len(test[1])


def reproduce(
    folder: Path, c: Contract, configs: list[str], runs: int, root: Path, progress: Reporter = SILENT
) -> list[Row]:
    """Each config of `configs` trained `runs` times from the card; the rows to compare with its claims."""
    import datasets

    test = test_set(c, folder, root)
    rows = []
    for name in configs:
        with quiet_datasets():
            cols = datasets.load_dataset(str(folder), name, split="train").with_format("torch")[:]
        x, y = cols["pixel_values"].float(), cols[c.labels.train_on]
        advance = progress.task(f"reproduce {name}", runs)
        accs = []
        for run in range(runs):
            accs.append(train_and_test(c, c.budgets[name], x, y, test, run))
            advance(1)
        rows.append(Row(name, c.budgets[name].accuracy.mean, tuple(accs)))
    return rows
