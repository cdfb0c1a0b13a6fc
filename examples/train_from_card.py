"""Reproduce a packaged dataset's accuracy from its folder alone: `datasets`, `torch` and what the card says.

    python examples/train_from_card.py datasets/digits-distilled-ipc10 ipc10 [runs] [project root]

None of distiller's training code: the network, optimiser, schedule, lr, augmentation, preprocessing and test split
all come from the card's `distiller:` mapping, read as the typed card contract (`distiller.packaging.contract`, a module
of plain dataclasses), and its safetensors sidecars. The source's own loader supplies the real test images, as
`source.loader` and `source.test_split` say: scikit-learn's digits at the split sidecar's indices; torchvision's
MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 test splits from the original archives in <project root>/data/raw;
the `test` split of an `hf:` dataset; the images of an `imagefolder:` source at the split sidecar's indices.
`distiller reproduce` does the same with a table and an exit code.
"""

import contextlib
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import load_dataset
from huggingface_hub import DatasetCard
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from distiller.packaging.contract import Contract

folder, config = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
root = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(".")
card = Contract.from_dict(DatasetCard.load(f"{folder}/README.md").data.to_dict()["distiller"])
proto, arch, aug, budget = card.protocol, card.protocol.architecture, card.protocol.augmentation, card.budgets[config]
if arch.arch != "convnet":
    sys.exit(f"this example rebuilds the ConvNet sets are distilled on; the card has {arch.arch}")
if arch.first_padding is None:
    sys.exit("the card does not say the first conv's padding (first_padding): package the set again")

cols = load_dataset(folder, config, split="train").with_format("torch")[:]
x, y = cols["pixel_values"], cols[card.labels.train_on]  # already preprocessed
split, source = card.source.test_split, card.source.name
indices = load_file(f"{folder}/{split.file}")[split.tensor] if split.kind == "indices" else None


def source_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The source's real images in [0, 1], (N, C, H, W), and labels: its test split, or all of it (then indexed)."""
    if source == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target)  # value / 16
    if source in ("mnist", "fashion-mnist", "cifar10", "cifar100"):
        import torchvision.datasets as tv

        cls = {"mnist": tv.MNIST, "fashion-mnist": tv.FashionMNIST, "cifar10": tv.CIFAR10, "cifar100": tv.CIFAR100}
        # download=True finds the archives already in data/raw (MD5-checked) and only unpacks them
        ds = cls[source](str(root / "data" / "raw"), train=False, download=True)
        pixels = torch.as_tensor(np.asarray(ds.data))
        pixels = pixels.unsqueeze(-1) if pixels.ndim == 3 else pixels  # (N, H, W, C)
        return pixels.permute(0, 3, 1, 2).float() / 255, torch.as_tensor(np.asarray(ds.targets))
    if source.startswith(("hf:", "imagefolder:")):
        if source.startswith("hf:"):
            test = load_dataset(str(root / source[3:].split(":")[0]), split="test" if indices is None else "train")
            image, label = next(k for k, f in test.features.items() if type(f).__name__ == "Image"), "label"
            images, labels = test[image], test[label]
        else:
            dirs = sorted(d for d in (root / source[12:]).iterdir() if d.is_dir() and not d.name.startswith("."))
            files = [
                (f, c)
                for c, d in enumerate(dirs)
                for f in sorted(d.iterdir())
                if f.suffix.lower() in (".png", ".jpg", ".jpeg")
            ]
            images, labels = [Image.open(f) for f, _ in files], [c for _, c in files]
        mode, (_, h, w) = ("L" if arch.input_shape[0] == 1 else "RGB"), arch.input_shape
        arrays = [np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR)) for im in images]
        pixels = torch.from_numpy(np.stack(arrays)).float() / 255
        return (pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)), torch.tensor(labels)
    sys.exit(f"unknown source {source}")


test_x, test_y = source_images()
if indices is not None:
    test_x, test_y = test_x[indices], test_y[indices]
if tuple(test_x.shape[-2:]) != tuple(arch.input_shape[1:]):  # sources resized by data.resolution (tensor sources)
    test_x = F.interpolate(test_x, size=arch.input_shape[1:], mode="bilinear", antialias=True).clamp(0, 1)
if card.preprocessing.kind == "zca":  # whitened with the ZCA sidecar: (x - mean) @ matrix over C*H*W
    zca = load_file(f"{folder}/{card.preprocessing.file}")
    test_x = ((test_x.flatten(1) - zca["mean"]) @ zca["matrix"]).view(test_x.shape)
else:  # normalised with the card's per-channel mean and std
    mean = torch.tensor(card.preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.preprocessing.std).view(1, -1, 1, 1)
    test_x = (test_x - mean) / std


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
    """protocol.architecture: [conv3x3 -> GroupNorm(C, C) -> ReLU -> pool2] x depth -> linear; the first conv pads
    by first_padding (3 on 1x28x28 inputs, which it turns into 32x32), the others by 1."""
    layers, c, w = [], x.shape[1], arch.width
    for d in range(arch.depth):
        pool = nn.AvgPool2d(2) if arch.pooling == "avgpool" else nn.MaxPool2d(2)
        layers += [nn.Conv2d(c, w, 3, padding=arch.first_padding if d == 0 else 1), nn.GroupNorm(w, w), nn.ReLU(), pool]
        c = w
    net = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(arch.num_classes))
    net(x[:1])  # materialise the linear layer
    return net


def mixed() -> contextlib.AbstractContextManager:
    """The card's arithmetic: bf16 networks train their forward in bfloat16 (here torch's autocast), fp32 in float32."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if arch.precision == "bf16" else contextlib.nullcontext()


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
            with mixed():
                logits = net(dsa(x[i]) if aug else x[i])
            F.cross_entropy(logits.float(), y[i]).backward()
            opt.step()
    with torch.no_grad(), mixed():
        accs.append((net.eval()(test_x).argmax(1) == test_y).float().mean().item())

acc, claimed = torch.tensor(accs), budget.accuracy
print(
    f"{config}: reproduced {100 * acc.mean():.2f} +- {100 * acc.std(unbiased=False):.2f} % ({runs} networks); "
    f"card {100 * claimed.mean:.2f} +- {100 * claimed.std:.2f} % ({claimed.runs} networks)"
)
