"""The MTT ConvNet and MTT's evaluation model zoo, built without touching the global RNG.

ConvNet (Cazenavette et al. 2022, after Gidaris & Komodakis): D blocks of conv3x3 -> norm -> ReLU -> pool2, then one
linear head. "instancenorm" is `GroupNorm(C, C, affine=True)`: one group per channel and no running buffers, so a
functional unroll over the parameter dict is the whole network state. For 28x28 single-channel inputs the first conv
pads by 3 so the network sees 32x32, as in the reference.

The cross-architecture networks follow the definitions in MTT's `networks.py` (ResNet18, ResNet18_AP, VGG11, AlexNet)
with its default "instancenorm" (AlexNet has no norm), so none of them has a buffer either. They are fixed networks:
`model.depth`, `width`, `norm` and `pooling` shape the ConvNet only. Where the reference hard-codes a head size for
32x32 inputs, the head here is sized from the actual feature map, which gives the same network at 32x32 and 28x28.
MTT widens the first padding of VGG11 and AlexNet for every single-channel input; here, as for the ConvNet, only for
1x28x28 (other grey sizes keep the usual padding). A network refuses inputs so small that a pooling would leave no
pixel or an instance norm would normalise a 1x1 map (which erases the signal), naming the smallest side it takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distiller.core.errors import DistillerError
from distiller.core.params import ModelParams
from distiller.nets import precision

INSTANCENORM = "instancenorm (GroupNorm(C, C), affine)"


def first_padding(image_shape: tuple[int, ...]) -> int:
    """The padding of the ConvNet's first conv for inputs of `image_shape` (C, H, W); every later conv pads by 1."""
    channels, height, width = image_shape
    return _first_pad((channels, height, width), 3, 1)


def _first_pad(image_shape: tuple[int, int, int], wide: int, usual: int) -> int:
    """MNIST-sized inputs (1x28x28) get a wider first padding, so the network sees them as 32x32."""
    channels, height, width = image_shape
    return wide if (channels == 1 and height == width == 28) else usual


def _require(arch: str, image_shape: tuple[int, int, int], fits: Callable[[int], bool], why: str) -> None:
    """Refuse an input side that `fits` rejects, naming the smallest side that works."""
    _, height, width = image_shape
    if not (fits(height) and fits(width)):
        need = next(s for s in range(1, 4097) if fits(s))
        raise DistillerError(f"model.arch {arch} needs images of at least {need}x{need} ({why}); got {height}x{width}")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels, channels, affine=True)  # instancenorm: no running buffers


class ConvNet(nn.Module):
    def __init__(self, p: ModelParams, image_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = image_shape
        pad = first_padding(image_shape)  # what the card states, so a consumer rebuilds this very network
        height, width = height + 2 * pad - 2, width + 2 * pad - 2
        layers: list[nn.Module] = []
        in_ch = channels
        for d in range(p.depth):
            if height < 2 or width < 2:
                raise DistillerError(f"model.depth {p.depth} is too deep for {image_shape[1]}x{image_shape[2]} images")
            layers.append(precision.Conv2d(in_ch, p.width, 3, padding=pad if d == 0 else 1))
            if p.norm == "instancenorm":
                layers.append(precision.GroupNorm(p.width, p.width, affine=True))
            layers.append(nn.ReLU())
            layers.append(nn.AvgPool2d(2) if p.pooling == "avgpool" else nn.MaxPool2d(2))
            in_ch, height, width = p.width, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.classifier = precision.Linear(p.width * height * width, num_classes)
        self.dtype = precision.DTYPES[precision.resolve(p.precision, "cpu")]  # build_model resolves auto per device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return precision.run(x, self.dtype, lambda x: self.classifier(self.features(x).flatten(1)))


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut, then ReLU (no bias: the norms have one).

    A downsampling block halves the side with a stride-2 first conv and a stride-2 1x1 shortcut conv; in the AP
    variant (`avgpool_down`) both convs keep stride 1 and an AvgPool2d(2) follows them instead."""

    def __init__(self, c_in: int, c_out: int, down: bool, avgpool_down: bool) -> None:
        super().__init__()
        stride = 2 if down and not avgpool_down else 1
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(c_out)
        pool = lambda: nn.AvgPool2d(2) if down and avgpool_down else nn.Identity()
        self.pool = pool()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if down or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), pool(), _norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(F.relu(self.norm1(self.conv1(x))))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: a 3x3 stride-1 stem without max-pool, BasicBlocks [2, 2, 2, 2] at 64/128/256/512
    channels, the last three stages halving the side.

    Head: ResNet18 averages the last map to 512 features (the reference's `avg_pool2d(out, 4)` is this at 32x32 and
    28x28); ResNet18_AP flattens it into a linear head (512 * 4 * 4 at 32x32, 512 * 3 * 3 at 28x28)."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, avgpool_down: bool = False) -> None:
        super().__init__()
        arch = "resnet18_ap" if avgpool_down else "resnet18"

        def last(side: int) -> int:  # the side after three halvings: floor (avg-pool) or ceil (stride-2 conv)
            for _ in range(3):
                side = side // 2 if avgpool_down else (side + 1) // 2
            return side

        _require(arch, image_shape, lambda s: last(s) >= 2, "its last stage normalises each channel over its map")
        self.avgpool_head = not avgpool_down
        self.stem = nn.Sequential(nn.Conv2d(image_shape[0], 64, 3, padding=1, bias=False), _norm(64), nn.ReLU())
        stages: list[nn.Module] = []
        c_in = 64
        for i, c_out in enumerate((64, 128, 256, 512)):  # MTT's layer1 .. layer4
            stages.append(
                nn.Sequential(
                    BasicBlock(c_in, c_out, i > 0, avgpool_down), BasicBlock(c_out, c_out, False, avgpool_down)
                )
            )
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        features = 512 if self.avgpool_head else 512 * last(image_shape[1]) * last(image_shape[2])
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))  # (N, 512, h, w)
        if self.avgpool_head:
            out = F.adaptive_avg_pool2d(out, 1)
        return self.classifier(out.flatten(1))


VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11: conv3x3 -> instancenorm -> ReLU per entry of `VGG11_CFG`, max-pool 2 at each "M", then a linear head
    on the flattened map (512 features at 32x32; 1x28x28 inputs are padded to 32x32 by the first conv)."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        pad = _first_pad(image_shape, 3, 1)
        size = lambda side, pools: (side + 2 * pad - 2) // 2**pools
        _require("vgg11", image_shape, lambda s: size(s, 4) >= 2, "its last convs normalise each channel over its map")
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for i, v in enumerate(VGG11_CFG):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c_in, v, 3, padding=pad if i == 0 else 1), _norm(v), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * size(image_shape[1], 5) * size(image_shape[2], 5), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AlexNet(nn.Module):
    """MTT's small AlexNet, no norm: conv5x5 128 -> pool -> conv5x5 192 -> pool -> conv3x3 256 -> 192 -> 192 -> pool,
    ReLU after each conv, then a linear head (192 * 4 * 4 at 32x32; the first conv pads 1x28x28 inputs to 32x32)."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        pad = _first_pad(image_shape, 4, 2)
        pooled = lambda side: (side + 2 * pad - 4) // 8  # after three 2x2 max-pools
        _require("alexnet", image_shape, lambda s: pooled(s) >= 1, "three 2x2 max-pools")
        self.features = nn.Sequential(
            nn.Conv2d(image_shape[0], 128, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(192, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 192, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(192 * pooled(image_shape[1]) * pooled(image_shape[2]), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _construct(p: ModelParams, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if p.arch == "convnet":
        return ConvNet(p, image_shape, num_classes)
    if p.arch in ("resnet18", "resnet18_ap"):
        return ResNet18(image_shape, num_classes, avgpool_down=p.arch == "resnet18_ap")
    if p.arch == "vgg11":
        return VGG11(image_shape, num_classes)
    if p.arch == "alexnet":
        return AlexNet(image_shape, num_classes)
    raise DistillerError(f"model.arch: unknown architecture '{p.arch}'")


def check_distillable(p: ModelParams) -> None:
    """Experts and distillation run on the ConvNet (the card's training snippet rebuilds it); the zoo evaluates."""
    if p.arch != "convnet":
        raise DistillerError(
            f"model.arch is {p.arch}: experts and distillation use the convnet; list other architectures in "
            "evaluate.archs to score the distilled set on them"
        )


def init_parameters(model: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default initialisation, drawn from `gen`.

    Conv/Linear: kaiming_uniform(a=sqrt(5)) weights and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) biases; norms: ones/zeros.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in)
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def build_model(
    p: ModelParams,
    image_shape: tuple[int, int, int],
    num_classes: int,
    gen: torch.Generator,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A freshly initialised `model.arch` network; the draw comes from the CPU generator `gen` only, so the same seed
    gives the same network on every device. PyTorch's own initialisation runs on the CPU with the global RNG saved and
    restored around it, then `init_parameters` overwrites every parameter. (Building on `meta` and materialising with
    `to_empty` instead imports sympy, seconds in every process.)"""
    with torch.random.fork_rng(devices=[]):
        model = _construct(p, image_shape, num_classes)
    init_parameters(model, gen)
    if isinstance(model, ConvNet):  # model.precision shapes the ConvNet only
        model.dtype = precision.DTYPES[precision.resolve(p.precision, device)]
    return model.to(device)


_ZOO = {
    "resnet18": "ResNet-18 (MTT's ResNet18): 3x3 stride-1 stem, no max-pool; BasicBlocks [2, 2, 2, 2] at "
    "64/128/256/512 channels, stride-2 convs downsample; global average pool; linear head",
    "resnet18_ap": "ResNet-18 AP (MTT's ResNet18_AP): as ResNet-18, but each stride-2 conv is a stride-1 conv followed "
    "by AvgPool2d(2); the last map is flattened into the linear head",
    "vgg11": "VGG-11 (MTT's VGG11): convs 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M (M: MaxPool2d(2)), "
    "each conv3x3 -> norm -> ReLU; linear head",
    "alexnet": "AlexNet (MTT's AlexNet): conv5x5 128, pool, conv5x5 192, pool, conv3x3 256, 192, 192, pool (ReLU after "
    "each conv, MaxPool2d(2)); linear head",
}


def describe(p: ModelParams, image_shape: tuple[int, int, int], num_classes: int) -> dict[str, object]:
    """The architecture as plain data, for manifests, metrics and dataset cards; refuses inputs it cannot take."""
    with torch.device("meta"):
        model = _construct(p, image_shape, num_classes)  # checks the input size; costs no memory
    if p.arch == "convnet":
        return {
            "arch": p.arch,
            "depth": p.depth,
            "width": p.width,
            "norm": p.norm + (" (GroupNorm(C, C), affine)" if p.norm == "instancenorm" else ""),
            "pooling": p.pooling,
            "activation": "relu",
            "input_shape": list(image_shape),
            "num_classes": num_classes,
            **({"precision": p.precision} if p.precision != "fp32" else {}),  # no key: fp32, as before the param
        }
    head = model.classifier
    assert isinstance(head, nn.Linear)
    return {
        "arch": p.arch,
        "definition": _ZOO[p.arch],
        "norm": "none" if p.arch == "alexnet" else INSTANCENORM,
        "activation": "relu",
        "head_features": head.in_features,
        "parameters": sum(t.numel() for t in model.parameters()),
        "input_shape": list(image_shape),
        "num_classes": num_classes,
    }
