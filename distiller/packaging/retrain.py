"""What `distiller reproduce` trains, built from a card's constants alone: the ConvNet, DSA and the training loop.

None of it is distiller's training code (`distiller.nets`): a bug there would otherwise hide itself. `BUILT` lists, for
every card value that says how a network trains, the values built here; `refuse_unbuilt` refuses any other with one
line naming the key, before anything trains, so that a value the card contract allows but this module does not build
(the zoo networks, say, or inputs that are not square) never trains as something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distiller.core.errors import DistillerError
from distiller.core.runtime import generator
from distiller.packaging.contract import Architecture, Augmentation, Budget, Contract

INSTANCENORM = "instancenorm (GroupNorm(C, C), affine)"
BUILT: dict[str, tuple[Any, ...]] = {  # key under `distiller.` -> the values built here
    "protocol.optimizer": ("sgd", "adam"),
    "protocol.lr_schedule": ("x0.1 at epochs // 2", "constant"),
    "protocol.std": ("population (numpy default)",),
    "protocol.architecture.arch": ("convnet",),
    "protocol.architecture.norm": (INSTANCENORM, "none"),
    "protocol.architecture.pooling": ("avgpool", "maxpool"),
    "protocol.architecture.activation": ("relu",),
    "protocol.architecture.precision": ("fp32", "bf16"),
    "protocol.augmentation.kind": ("dsa",),
    "protocol.augmentation.mode": ("single", "all"),
    "protocol.augmentation.draws": ("per-sample",),
    "preprocessing.kind": ("normalize", "zca"),
    "labels.train_on": ("label", "soft_label"),
    "source.test_split.kind": ("canonical", "indices"),
    "source.test_split.split": ("test", None),
    "source.test_split.tensor": ("test_indices", None),
}


def value(c: Contract, key: str) -> Any:
    """The card's value at the dotted `key` under `distiller.` (None below an absent section)."""
    node: Any = c
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def refuse_unbuilt(c: Contract, where: str) -> None:
    """Every value of `BUILT`'s keys is one built here, and every DSA family of the card is; else one line."""
    for key, built in BUILT.items():
        if key.startswith("protocol.augmentation.") and c.protocol.augmentation is None:
            continue
        if value(c, key) not in built:
            words = ", ".join(repr(v) for v in built)
            raise DistillerError(f"{where}: distiller.{key} is {value(c, key)!r}; reproduce builds {words}")
    for family in _families(c.protocol.augmentation):
        if family not in FAMILIES:
            raise DistillerError(f"{where}: distiller.protocol.augmentation.strategy: reproduce builds no '{family}'")
    _, h, w = c.protocol.architecture.input_shape
    if h != w:
        raise DistillerError(
            f"{where}: distiller.protocol.architecture.input_shape is {h}x{w}; reproduce builds square inputs only"
        )


def convnet(a: Architecture, gen: torch.Generator) -> nn.Module:
    """The card's ConvNet: [conv3x3 -> norm -> ReLU -> pool2] x depth -> linear, the first conv padded by
    `first_padding` (so MNIST's 28x28 becomes 32x32), the others by 1; PyTorch's default initialisation drawn from
    `gen`. The card was checked first (`refuse_unbuilt`, and `validate`'s network check)."""
    assert a.depth is not None and a.width is not None and a.first_padding is not None
    layers: list[nn.Module] = []
    c, side = a.input_shape[0], a.input_shape[1] + 2 * a.first_padding - 2
    for d in range(a.depth):
        norm: nn.Module = nn.GroupNorm(a.width, a.width) if a.norm == INSTANCENORM else nn.Identity()
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


def forward(net: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """The network's logits in float32; in bf16 the weights (float32 masters) and the input are cast to bfloat16 for
    the whole forward (autocast on CUDA), as the card's `precision` says its networks trained."""
    if precision == "fp32":
        return net(x)
    if x.is_cuda:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return net(x).float()
    weights = {k: v.to(torch.bfloat16) for k, v in net.named_parameters()}
    return torch.func.functional_call(net, weights, (x.to(torch.bfloat16),)).float()


def _families(aug: Augmentation | None) -> list[str]:
    return aug.strategy.split("_") if aug is not None and aug.strategy != "none" else []


def card_dsa(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """DSA with the card's constants: one family per minibatch (mode single) or each in turn, per-image draws."""
    names = _families(aug)
    if aug.mode == "single" and names:
        names = [names[int(torch.randint(len(names), (1,), generator=gen))]]
    for family in names:
        x = FAMILIES[family](x, aug, gen)
    return x


def _color(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """Brightness, saturation, contrast in turn."""
    u = lambda: torch.rand(len(x), 1, 1, 1, generator=gen)
    x = x + (u() - 0.5) * aug.brightness
    m = x.mean(1, keepdim=True)
    x = (x - m) * u() * aug.saturation + m
    m = x.mean((1, 2, 3), keepdim=True)
    return (x - m) * (u() + aug.contrast) + m


def _cutout(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """Zero a square of side cutout * h around a random centre."""
    n, h = len(x), x.shape[-1]
    s = int(h * aug.cutout + 0.5)
    top, left = torch.randint(0, h, (2, n, 1, 1), generator=gen) - s // 2
    r = torch.arange(h)
    rows, cols = r.view(1, h, 1), r.view(1, 1, h)
    inside = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
    return x * ~inside.unsqueeze(1)


def _flip(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=gen) < aug.flip
    return torch.where(flip.view(len(x), 1, 1, 1), x.flip(3), x)


def _affine(family: str) -> Callable[[torch.Tensor, Augmentation, torch.Generator], torch.Tensor]:
    """Scale, rotate or crop: an affine resampling per image."""

    def apply(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
        n, h = len(x), x.shape[-1]
        theta = torch.eye(2, 3).repeat(n, 1, 1)
        if family == "scale":
            lo = 1 / aug.scale
            theta[:, 0, 0], theta[:, 1, 1] = torch.rand(2, n, generator=gen) * (aug.scale - lo) + lo
        elif family == "rotate":
            a = (torch.rand(n, generator=gen) - 0.5) * 2 * math.radians(aug.rotate_degrees)
            rows = [torch.stack([a.cos(), a.sin()], 1), torch.stack([-a.sin(), a.cos()], 1)]
            theta[:, :, :2] = torch.stack(rows, 1)
        else:  # crop
            s = int(h * aug.crop + 0.5)
            theta[:, :, 2] = torch.randint(-s, s + 1, (n, 2), generator=gen) * 2 / (h - 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=aug.align_corners)
        return F.grid_sample(x, grid, align_corners=aug.align_corners)

    return apply


FAMILIES: dict[str, Callable[[torch.Tensor, Augmentation, torch.Generator], torch.Tensor]] = {
    "color": _color,
    "crop": _affine("crop"),
    "cutout": _cutout,
    "flip": _flip,
    "scale": _affine("scale"),
    "rotate": _affine("rotate"),
}


def train_and_test(
    c: Contract, budget: Budget, x: torch.Tensor, y: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor], seed: int
) -> float:
    """One network trained on (x, y) as the card's protocol says; its accuracy on the test set."""
    proto, gen = c.protocol, generator(seed, "reproduce")
    net, precision = convnet(proto.architecture, gen), proto.architecture.precision
    params = list(net.parameters())
    if proto.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, budget.lr, weight_decay=proto.weight_decay)
    else:
        opt = torch.optim.SGD(params, budget.lr, momentum=proto.momentum or 0.0, weight_decay=proto.weight_decay)
    for epoch in range(proto.epochs):
        if epoch == proto.epochs // 2 and proto.lr_schedule == "x0.1 at epochs // 2":
            opt.param_groups[0]["lr"] *= 0.1
        for i in torch.randperm(len(x), generator=gen).split(proto.batch_size):
            batch = card_dsa(x[i], proto.augmentation, gen) if proto.augmentation else x[i]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(net, batch, precision), y[i]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pairs = zip(test[0].split(1024), test[1].split(1024), strict=True)
        correct = sum(int((forward(net, a, precision).argmax(1) == b).sum()) for a, b in pairs)
    return correct / len(test[1])
