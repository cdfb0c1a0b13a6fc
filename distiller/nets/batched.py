"""K networks of one architecture as one vmapped forward: stacked parameters, `vmap` over `functional_call`.

This is `train_many`'s "grouped" mode. `forward(model, params, x)` runs network k on x[k] with params[name][k] for every
k at once, and vmap's own rules turn the K convolutions into one grouped convolution and a batched-weight GroupNorm
into a normalisation followed by a separate scale and shift. That means fewer kernel launches, which can pay on a GPU,
but the results equal one-at-a-time training only up to rounding (on the CPU, oneDNN's grouped convolution even
differs per group from the plain one), and the differences grow over training. The "exact" mode of `train_many` does
not come here: it calls each network's own forward on its own minibatch (see `train.train_many`).

The networks must hold no buffers: a functional call over the parameter dict is then the whole network state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

Kernels = Literal["exact", "grouped"]


def check_stackable(model: nn.Module) -> None:
    if next(model.buffers(), None) is not None:
        names = [name for name, _ in model.named_buffers()]
        raise ValueError(f"{type(model).__name__} has buffers ({', '.join(names[:3])}): vmap cannot stack them")


def stack(models: Sequence[nn.Module]) -> dict[str, Tensor]:
    """{name: (K, *shape)} from K networks of one architecture, differentiable w.r.t. each network's parameters."""
    per_model = [dict(m.named_parameters()) for m in models]
    return {name: torch.stack([p[name] for p in per_model]) for name in per_model[0]}


def forward(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Outputs (K, N, ...) of `model`'s architecture with params[name][k] on x[k], x (K, N, C, H, W)."""
    return vmap(lambda theta, xk: functional_call(model, theta, (xk,)))(params, x)
