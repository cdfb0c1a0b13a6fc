"""The MTT ConvNet, built without touching the global RNG.

ConvNet (Cazenavette et al. 2022, after Gidaris & Komodakis): D blocks of conv3x3 -> norm -> ReLU -> pool2, then one
linear head. "instancenorm" is `GroupNorm(C, C, affine=True)`: one group per channel and no running buffers, so a
functional unroll over the parameter dict is the whole network state. For 28x28 single-channel inputs the first conv
pads by 3 so the network sees 32x32, as in the reference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distiller.params import ModelParams


class ConvNet(nn.Module):
    def __init__(self, p: ModelParams, image_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = image_shape
        pad = 3 if (channels == 1 and height == width == 28) else 1
        height, width = height + 2 * pad - 2, width + 2 * pad - 2
        layers: list[nn.Module] = []
        in_ch = channels
        for d in range(p.depth):
            if height < 2 or width < 2:
                raise ValueError(f"model.depth {p.depth} is too deep for {image_shape[1]}x{image_shape[2]} images")
            layers.append(nn.Conv2d(in_ch, p.width, 3, padding=pad if d == 0 else 1))
            if p.norm == "instancenorm":
                layers.append(nn.GroupNorm(p.width, p.width, affine=True))
            layers.append(nn.ReLU())
            layers.append(nn.AvgPool2d(2) if p.pooling == "avgpool" else nn.MaxPool2d(2))
            in_ch, height, width = p.width, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(p.width * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


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
) -> ConvNet:
    """A freshly initialised network; the draw comes from the CPU generator `gen` only, so the same seed gives the
    same network on every device (built on `meta`, materialised on the CPU, then moved)."""
    with torch.device("meta"):
        model = ConvNet(p, image_shape, num_classes)
    model = model.to_empty(device="cpu")
    init_parameters(model, gen)
    return model.to(device)


def describe(p: ModelParams, image_shape: tuple[int, int, int], num_classes: int) -> dict[str, object]:
    """The architecture as plain data, for manifests, metrics and dataset cards."""
    return {
        "arch": p.arch,
        "depth": p.depth,
        "width": p.width,
        "norm": p.norm + (" (GroupNorm(C, C), affine)" if p.norm == "instancenorm" else ""),
        "pooling": p.pooling,
        "activation": "relu",
        "input_shape": list(image_shape),
        "num_classes": num_classes,
    }
