"""Reproduce a packaged dataset's accuracy from its folder alone: `datasets`, `torch` and what the card says.

    python examples/train_from_card.py datasets/digits-distilled-ipc10 ipc10 [runs]

None of distiller's training code: the network, optimiser, schedule, lr, augmentation, normalisation and test split
all come from the card's `distiller:` mapping, read as the typed card contract (`distiller.contract`, a module of
plain dataclasses), and its safetensors sidecars. The source's own loader (here scikit-learn's digits, as
`source.loader` says) supplies the real test images.
"""

import math
import random
import sys

import torch
import torch.nn.functional as F
from datasets import load_dataset
from huggingface_hub import DatasetCard
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn

from distiller.contract import Contract

folder, config = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
card = Contract.from_dict(DatasetCard.load(f"{folder}/README.md").data.to_dict()["distiller"])
proto, arch, aug, budget = card.protocol, card.protocol.architecture, card.protocol.augmentation, card.budgets[config]
if (card.source.name, card.preprocessing.kind, arch.arch, arch.input_shape) != (
    "digits",
    "normalize",
    "convnet",
    (1, 8, 8),
):
    sys.exit(
        "this example rebuilds 8x8 digits sets made with `normalize` on the convnet; the card has "
        f"{card.source.name}, {card.preprocessing.kind}, {arch.arch} on {arch.input_shape}"
    )

cols = load_dataset(folder, config, split="train").with_format("torch")[:]
x, y = cols["pixel_values"], cols[card.labels.train_on]  # already normalised
mean = torch.tensor(card.preprocessing.mean).view(1, -1, 1, 1)
std = torch.tensor(card.preprocessing.std).view(1, -1, 1, 1)
test_idx = load_file(f"{folder}/{card.source.test_split.file}")["test_indices"]
digits = load_digits()
test_x = (torch.tensor(digits.images, dtype=torch.float32)[test_idx].unsqueeze(1) / 16 - mean) / std  # value / 16
test_y = torch.tensor(digits.target)[test_idx]


def dsa(x: torch.Tensor) -> torch.Tensor:
    """DSA as the card's protocol.augmentation says: one family per minibatch, each image its own parameters."""
    n, h = len(x), x.shape[-1]
    u = lambda: torch.rand(n, 1, 1, 1)
    family = random.choice(aug.strategy.split("_"))
    if family == "color":  # brightness, saturation, contrast in turn
        x = x + (u() - 0.5) * aug.brightness
        m = x.mean(1, keepdim=True)
        x = (x - m) * u() * aug.saturation + m
        m = x.mean((1, 2, 3), keepdim=True)
        return (x - m) * (u() + aug.contrast) + m
    if family == "cutout":  # zero a square of side cutout * h at a random centre
        s = int(h * aug.cutout + 0.5)
        top, left = torch.randint(0, h, (2, n, 1, 1)) - s // 2
        r = torch.arange(h)
        inside = (r.view(1, h, 1) >= top) & (r.view(1, h, 1) < top + s) & (r.view(1, 1, h) >= left)
        return x * ~(inside & (r.view(1, 1, h) < left + s)).unsqueeze(1)
    theta = torch.eye(2, 3).repeat(n, 1, 1)  # scale, rotate and crop (integer shift) are affine resamplings
    if family == "scale":
        lo = 1 / aug.scale
        theta[:, 0, 0], theta[:, 1, 1] = torch.rand(2, n) * (aug.scale - lo) + lo
    if family == "rotate":
        a = (torch.rand(n) - 0.5) * 2 * math.radians(aug.rotate_degrees)
        theta[:, :, :2] = torch.stack([torch.stack([a.cos(), a.sin()], 1), torch.stack([-a.sin(), a.cos()], 1)], 1)
    if family == "crop":
        s = int(h * aug.crop + 0.5)
        theta[:, :, 2] = torch.randint(-s, s + 1, (n, 2)) * 2 / (h - 1)
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=True), align_corners=True)


def convnet() -> nn.Module:
    """protocol.architecture: [conv3x3 -> GroupNorm(C, C) -> ReLU -> pool2] x depth -> linear."""
    layers, c, w = [], x.shape[1], arch.width
    for _ in range(arch.depth):
        pool = nn.AvgPool2d(2) if arch.pooling == "avgpool" else nn.MaxPool2d(2)
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(w, w), nn.ReLU(), pool]
        c = w
    net = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(arch.num_classes))
    net(x[:1])  # materialise the linear layer
    return net


accs = []
for run in range(runs):
    torch.manual_seed(run)
    random.seed(run)
    net = convnet()
    opt = torch.optim.SGD(net.parameters(), budget.lr, momentum=proto.momentum or 0, weight_decay=proto.weight_decay)
    for epoch in range(proto.epochs):
        if epoch == proto.epochs // 2 and "x0.1" in proto.lr_schedule:
            opt.param_groups[0]["lr"] *= 0.1
        for i in torch.randperm(len(x)).split(proto.batch_size):
            opt.zero_grad()
            F.cross_entropy(net(dsa(x[i]) if aug else x[i]), y[i]).backward()
            opt.step()
    with torch.no_grad():
        accs.append((net.eval()(test_x).argmax(1) == test_y).float().mean().item())

acc, claimed = torch.tensor(accs), budget.accuracy
print(
    f"{config}: reproduced {100 * acc.mean():.2f} +- {100 * acc.std(unbiased=False):.2f} % ({runs} networks); "
    f"card {100 * claimed.mean:.2f} +- {100 * claimed.std:.2f} % ({claimed.runs} networks)"
)
