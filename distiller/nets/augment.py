"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021), batched and seeded.

Every op is a pure function of the batch and uniform draws, differentiable w.r.t. the pixels, and never clamps (the
tensors are normalised, not in [0, 1]). Draws come from an explicit generator:

* per-sample (`shared=False`, how MTT calls DSA everywhere): one family per call, each image its own parameters;
* shared (`shared=True`, DSA's siamese mode): one family and one parameter set for the whole batch. `augment_pair`
  uses it to give a real and a synthetic batch the very same transform, as gradient matching needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distiller.core.params import AugmentParams, Families

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


# Each family is a draw, which turns uniform and integer draws into per-image parameters (N leading), and an apply,
# a pure function of the batch and those parameters. Draws depend on the batch only through its shape, so several
# networks can draw from their own generators and then share one apply over all their images (`dsa_many`).
Drawn = tuple[Tensor, ...]


def _scale_draw(d: _Draw, p: AugmentParams, h: int, w: int) -> Drawn:
    lo = 1.0 / p.scale
    sx, sy = d.uniform() * (p.scale - lo) + lo, d.uniform() * (p.scale - lo) + lo
    zero = torch.zeros_like(sx)
    return (torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1),)  # (N, 2, 3)


def _rotate_draw(d: _Draw, p: AugmentParams, h: int, w: int) -> Drawn:
    angle = (d.uniform() - 0.5) * 2 * math.radians(p.rotate)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    return (torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1),)  # (N, 2, 3)


def _affine_apply(x: Tensor, params: Drawn, p: AugmentParams) -> Tensor:
    return _affine(x, params[0])


def _flip_draw(d: _Draw, p: AugmentParams, h: int, w: int) -> Drawn:
    return ((d.uniform() < p.flip).view(-1, 1, 1, 1),)


def _flip_apply(x: Tensor, params: Drawn, p: AugmentParams) -> Tensor:
    return torch.where(params[0], x.flip(3), x)


def _color_draw(d: _Draw, p: AugmentParams, h: int, w: int) -> Drawn:
    """Brightness, saturation, contrast factors, each with its own draw, in that order."""
    return (
        ((d.uniform() - 0.5) * p.brightness).view(-1, 1, 1, 1),
        (d.uniform() * p.saturation).view(-1, 1, 1, 1),
        (d.uniform() + p.contrast).view(-1, 1, 1, 1),
    )


def _color_apply(x: Tensor, params: Drawn, p: AugmentParams) -> Tensor:
    brightness, saturation, contrast = params
    x = x + brightness
    mean = x.mean(dim=1, keepdim=True)  # per-pixel mean over channels
    x = (x - mean) * saturation + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # per-image mean
    return (x - mean) * contrast + mean


def _crop_draw(d: _Draw, p: AugmentParams, h: int, w: int) -> Drawn:
    """Integer shifts of up to round(crop * side) pixels."""
    sh, sw = int(h * p.crop + 0.5), int(w * p.crop + 0.5)
    return d.integers(-sh, sh + 1), d.integers(-sw, sw + 1)


def _crop_apply(x: Tensor, params: Drawn, p: AugmentParams) -> Tensor:
    """Translate by the drawn shifts; vacated pixels are 0. A gather keeps the result in plain NCHW layout (a permuted
    one makes a single-channel batch look channels-last to the convolution, which then rounds differently)."""
    ty, tx = params
    n, c, h, w = x.shape
    sh, sw = int(h * p.crop + 0.5), int(w * p.crop + 0.5)
    padded = F.pad(x, [sw, sw, sh, sh])  # (N, C, H + 2 sh, W + 2 sw)
    rows = torch.arange(h, device=x.device)[None, :] + ty[:, None] + sh  # (N, H)
    cols = torch.arange(w, device=x.device)[None, :] + tx[:, None] + sw  # (N, W)
    flat = (rows[:, :, None] * (w + 2 * sw) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, flat).view(n, c, h, w)


def _cutout_draw(d: _Draw, p: AugmentParams, h: int, w: int) -> Drawn:
    ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
    return d.integers(0, h + (1 - ch % 2)), d.integers(0, w + (1 - cw % 2))


def _cutout_apply(x: Tensor, params: Drawn, p: AugmentParams) -> Tensor:
    """Zero one square of side round(cutout * side) centred at the drawn position (clipped at the border)."""
    cy, cx = params
    _, _, h, w = x.shape
    ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
    r = torch.arange(h, device=x.device)[None, :] - (cy[:, None] - ch // 2)  # (N, H)
    c = torch.arange(w, device=x.device)[None, :] - (cx[:, None] - cw // 2)  # (N, W)
    inside = ((r >= 0) & (r < ch))[:, :, None] & ((c >= 0) & (c < cw))[:, None, :]  # (N, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


@dataclass(frozen=True)
class Family:
    draw: Callable[[_Draw, AugmentParams, int, int], Drawn]
    apply: Callable[[Tensor, Drawn, AugmentParams], Tensor]


FAMILIES: dict[str, Family] = {
    "color": Family(_color_draw, _color_apply),
    "crop": Family(_crop_draw, _crop_apply),
    "cutout": Family(_cutout_draw, _cutout_apply),
    "flip": Family(_flip_draw, _flip_apply),
    "scale": Family(_scale_draw, _affine_apply),
    "rotate": Family(_rotate_draw, _affine_apply),
}

Plan = list[tuple[str, Drawn]]  # the families applied in turn, each with its per-image parameters


def with_families(p: AugmentParams, names: Families) -> AugmentParams:
    """The same DSA constants with other families (RaT-BPTT's `ratbptt.augment`)."""
    return dataclasses.replace(p, strategy=names)


def families(p: AugmentParams) -> list[str]:
    return list(p.strategy.names)


def draw(
    p: AugmentParams, gen: torch.Generator, shape: torch.Size, device: torch.device, *, shared: bool = False
) -> Plan:
    """Every random number one augmentation of a batch of `shape` (N, C, H, W) takes from `gen`, in DSA's order.

    Mode 'single' picks one family from `gen`; 'all' applies every one."""
    names = families(p)
    if p.mode == "single" and names:
        pick = int(torch.randint(len(names), (1,), generator=gen, device=gen.device).item())
        names = [names[pick]]
    d = _Draw(gen, shape[0], shared, device)
    return [(name, FAMILIES[name].draw(d, p, shape[2], shape[3])) for name in names]


def apply(x: Tensor, plan: Plan, p: AugmentParams) -> Tensor:
    for name, params in plan:
        x = FAMILIES[name].apply(x, params, p)
    return x


def dsa(x: Tensor, p: AugmentParams, gen: torch.Generator, *, shared: bool = False) -> Tensor:
    """Augment a batch (N, C, H, W). Mode 'single' applies one family drawn from `gen`; 'all' applies every one."""
    if not families(p):
        return x
    return apply(x, draw(p, gen, x.shape, x.device, shared=shared), p)


def dsa_many(x: Tensor, p: AugmentParams, gens: Sequence[torch.Generator]) -> Tensor:
    """Augment K batches at once, x (K, N, C, H, W), batch k exactly as `dsa(x[k], p, gens[k])` would.

    Each network draws from its own generator; networks that drew the same families share one apply over all their
    images (every apply is per image, so the result does not depend on which batches share it)."""
    if not families(p):
        return x
    plans = [draw(p, g, x.shape[1:], x.device) for g in gens]
    out = torch.empty_like(x)
    groups: dict[tuple[str, ...], list[int]] = {}
    for k, plan in enumerate(plans):
        groups.setdefault(tuple(name for name, _ in plan), []).append(k)
    for names, ks in groups.items():
        joint = [
            (name, tuple(torch.cat([plans[k][i][1][j] for k in ks]) for j in range(len(plans[ks[0]][i][1]))))
            for i, name in enumerate(names)
        ]
        index = torch.tensor(ks, device=x.device)
        out[index] = apply(x[index].flatten(0, 1), joint, p).view(len(ks), *x.shape[1:])
    return out


def augment_pair(a: Tensor, b: Tensor, p: AugmentParams, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """DSA's siamese draw: the same family and parameters for every image of both batches (sizes may differ)."""
    out = dsa(torch.cat([a, b]), p, gen, shared=True)
    return out[: len(a)], out[len(a) :]


def describe(p: AugmentParams) -> dict[str, object]:
    """The augmentation as plain data, for metrics and dataset cards."""
    return {
        "kind": "dsa",
        "strategy": p.strategy.to_config(),
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
