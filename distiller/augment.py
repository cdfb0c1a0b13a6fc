"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021), batched and seeded.

Every op is a pure function of the batch and uniform draws, differentiable w.r.t. the pixels, and never clamps (the
tensors are normalised, not in [0, 1]). Draws come from an explicit generator:

* per-sample (`shared=False`, how MTT calls DSA everywhere): one family per call, each image its own parameters;
* shared (`shared=True`, DSA's siamese mode): one family and one parameter set for the whole batch. `augment_pair`
  uses it to give a real and a synthetic batch the very same transform, as gradient matching needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distiller.params import AugmentParams

Tensor = torch.Tensor


@dataclass(frozen=True)
class _Draw:
    """Uniform and integer draws for `n` images, or one value broadcast to all of them when shared."""

    gen: torch.Generator
    n: int
    shared: bool
    device: torch.device

    def uniform(self) -> Tensor:
        u = torch.rand(1 if self.shared else self.n, generator=self.gen, device=self.gen.device)
        return u.to(self.device).expand(self.n)

    def integers(self, low: int, high: int) -> Tensor:
        k = torch.randint(low, high, (1 if self.shared else self.n,), generator=self.gen, device=self.gen.device)
        return k.to(self.device).expand(self.n)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample x through per-image 2x3 affine matrices theta (N, 2, 3); DSA uses align_corners=True."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def scale(x: Tensor, d: _Draw, p: AugmentParams) -> Tensor:
    lo = 1.0 / p.scale
    sx, sy = d.uniform() * (p.scale - lo) + lo, d.uniform() * (p.scale - lo) + lo
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)  # (N, 2, 3)
    return _affine(x, theta)


def rotate(x: Tensor, d: _Draw, p: AugmentParams) -> Tensor:
    angle = (d.uniform() - 0.5) * 2 * math.radians(p.rotate)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)  # (N, 2, 3)
    return _affine(x, theta)


def flip(x: Tensor, d: _Draw, p: AugmentParams) -> Tensor:
    mask = (d.uniform() < p.flip).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def color(x: Tensor, d: _Draw, p: AugmentParams) -> Tensor:
    """Brightness, saturation, contrast in turn, each with its own draw."""
    x = x + ((d.uniform() - 0.5) * p.brightness).view(-1, 1, 1, 1)
    mean = x.mean(dim=1, keepdim=True)  # per-pixel mean over channels
    x = (x - mean) * (d.uniform() * p.saturation).view(-1, 1, 1, 1) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # per-image mean
    return (x - mean) * (d.uniform() + p.contrast).view(-1, 1, 1, 1) + mean


def crop(x: Tensor, d: _Draw, p: AugmentParams) -> Tensor:
    """Translate by an integer shift of up to round(crop * side) pixels; vacated pixels are 0."""
    n, _, h, w = x.shape
    sh, sw = int(h * p.crop + 0.5), int(w * p.crop + 0.5)
    ty, tx = d.integers(-sh, sh + 1), d.integers(-sw, sw + 1)
    padded = F.pad(x, [sw, sw, sh, sh])
    rows = (torch.arange(h, device=x.device)[None, :] + ty[:, None] + sh)[:, :, None]  # (N, H, 1)
    cols = (torch.arange(w, device=x.device)[None, :] + tx[:, None] + sw)[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def cutout(x: Tensor, d: _Draw, p: AugmentParams) -> Tensor:
    """Zero one square of side round(cutout * side) centred at a random position (clipped at the border)."""
    _, _, h, w = x.shape
    ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
    cy, cx = d.integers(0, h + (1 - ch % 2)), d.integers(0, w + (1 - cw % 2))
    r = torch.arange(h, device=x.device)[None, :] - (cy[:, None] - ch // 2)  # (N, H)
    c = torch.arange(w, device=x.device)[None, :] - (cx[:, None] - cw // 2)  # (N, W)
    inside = ((r >= 0) & (r < ch))[:, :, None] & ((c >= 0) & (c < cw))[:, None, :]  # (N, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


FAMILIES: dict[str, Callable[[Tensor, _Draw, AugmentParams], Tensor]] = {
    "color": color,
    "crop": crop,
    "cutout": cutout,
    "flip": flip,
    "scale": scale,
    "rotate": rotate,
}


def families(p: AugmentParams) -> list[str]:
    return [] if p.strategy == "none" else [f for f in p.strategy.split("_") if f]


def dsa(x: Tensor, p: AugmentParams, gen: torch.Generator, *, shared: bool = False) -> Tensor:
    """Augment a batch (N, C, H, W). Mode 'single' applies one family drawn from `gen`; 'all' applies every one."""
    names = families(p)
    if not names:
        return x
    if p.mode == "single":
        pick = int(torch.randint(len(names), (1,), generator=gen, device=gen.device).item())
        names = [names[pick]]
    draw = _Draw(gen, x.shape[0], shared, x.device)
    for name in names:
        x = FAMILIES[name](x, draw, p)
    return x


def augment_pair(a: Tensor, b: Tensor, p: AugmentParams, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """DSA's siamese draw: the same family and parameters for every image of both batches (sizes may differ)."""
    out = dsa(torch.cat([a, b]), p, gen, shared=True)
    return out[: len(a)], out[len(a) :]


def describe(p: AugmentParams) -> dict[str, object]:
    """The augmentation as plain data, for metrics and dataset cards."""
    return {
        "kind": "dsa",
        "strategy": p.strategy,
        "mode": p.mode,
        "draws": "per-sample",
        "scale": p.scale,
        "rotate_degrees": p.rotate,
        "crop": p.crop,
        "cutout": p.cutout,
        "flip": p.flip,
        "brightness": p.brightness,
        "saturation": p.saturation,
        "contrast": p.contrast,
        "align_corners": True,
    }
