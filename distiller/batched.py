"""K networks of one architecture as one forward pass: stacked parameters, `vmap` over `functional_call`.

`forward(model, params, x)` runs network k on x[k] with params[name][k] for every k at once. Parameter-free ops (ReLU,
pooling, flatten, residual adds) fold the K networks into the batch, where they act image by image, so each network's
numbers are those it would get alone.

Parameterised ops are the catch: vmap's own rules turn K convolutions into one grouped convolution and a batched-weight
GroupNorm into a normalisation followed by a separate scale and shift. Both round differently from the one-network call
(on the CPU, oneDNN's grouped convolution even differs per group from the plain one), and the differences grow over
training. With `kernels="exact"` (the default), conv2d, linear and group_norm are redirected to custom ops whose vmap
rule makes the plain call once per network on that network's slice: training K networks at once then gives bitwise
the numbers of training each alone with `train.train` (tested on the CPU). With `kernels="grouped"`, vmap's own rules
run: fewer kernel launches, which can pay on a GPU, and equal to one-at-a-time only up to rounding. Other parameterised
ops (none in `models`) always take vmap's rules.

The networks must hold no buffers: a functional call over the parameter dict is then the whole network state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

Kernels = Literal["exact", "grouped"]


def check_stackable(model: nn.Module) -> None:
    if next(model.buffers(), None) is not None:
        names = [name for name, _ in model.named_buffers()]
        raise ValueError(f"{type(model).__name__} has buffers ({', '.join(names[:3])}): cannot train several at once")


def stack(models: Sequence[nn.Module]) -> dict[str, Tensor]:
    """{name: (K, *shape)} from K networks of one architecture, differentiable w.r.t. each network's parameters."""
    per_model = [dict(m.named_parameters()) for m in models]
    return {name: torch.stack([p[name] for p in per_model]) for name in per_model[0]}


def forward(model: nn.Module, params: dict[str, Tensor], x: Tensor, kernels: Kernels = "exact") -> Tensor:
    """Outputs (K, N, ...) of `model`'s architecture with params[name][k] on x[k], x (K, N, C, H, W)."""

    def one(theta: dict[str, Tensor], xk: Tensor) -> Tensor:
        with _PerNetworkKernels() if kernels == "exact" else nullcontext():
            return functional_call(model, theta, (xk,))

    return vmap(one)(params, x)


# ---------------------------------------------------------------------------------------------------------------------
# stacked forward: one pass of the architecture over all K minibatches, parameterised ops split per network


def stackable(model: nn.Module) -> bool:
    """Whether every parameter is a weight or bias of a layer whose forward takes the activations first (Conv2d,
    Linear, GroupNorm): those calls are the only ones `stacked_forward` has to split per network."""
    owners = (nn.Conv2d, nn.Linear, nn.GroupNorm)
    return all(isinstance(m, owners) for m in model.modules() if next(m.parameters(recurse=False), None) is not None)


def stacked_forward(models: Sequence[nn.Module], x: Tensor) -> Tensor:
    """Outputs (K * B, ...) of network k on x[k * B : (k + 1) * B] for every k, x (K * B, C, H, W).

    `models[0]` runs once on the whole stack. Every call that takes one of its parameters (a convolution, a linear
    layer, a norm) runs once per network instead, on that network's B rows with that network's own parameters, and the
    K results are concatenated; every parameter-free op (ReLU, pooling, flatten, residual adds) runs once over all
    K * B images, where it acts image by image. Each network therefore makes exactly the parameterised calls it makes
    alone, on tensors of the same shape and layout, and gets the same bits."""
    per_network = {id(ps[0]): ps for ps in zip(*(m.parameters() for m in models), strict=True)}
    with _SplitPerNetwork(len(models), per_network):
        return models[0](x)


class _SplitPerNetwork(TorchFunctionMode):
    """Runs every call that takes a parameter of the first network once per network (see `stacked_forward`)."""

    def __init__(self, k: int, per_network: dict[int, tuple[Tensor, ...]]) -> None:
        super().__init__()
        self.k, self.per_network = k, per_network

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        pn = self.per_network
        takes_parameter = any(id(a) in pn for a in args) or any(id(a) in pn for a in kwargs.values())
        if not takes_parameter or getattr(func, "__name__", "") == "__get__":  # parameter-free, or e.g. weight.shape
            return func(*args, **kwargs)
        if not args or id(args[0]) in pn:
            raise TypeError(f"{func} takes a parameter first: cannot split it per network")
        x, rest = args[0], args[1:]
        outs = []
        for k, xk in enumerate(x.split(len(x) // self.k)):
            if xk.device.type == "cpu" and xk.data_ptr() % 64:  # where a fresh (B, ...) tensor would start
                xk = xk.clone()
            ak = [pn[id(a)][k] if id(a) in pn else a for a in rest]
            kk = {n: pn[id(a)][k] if id(a) in pn else a for n, a in kwargs.items()}
            outs.append(func(xk, *ak, **kk))
        return torch.cat(outs)


# ---------------------------------------------------------------------------------------------------------------------
# per-network kernels: custom ops whose vmap rule makes the plain call once per network


def _slices(t: Tensor | None, dim: int | None, k: int) -> Sequence[Tensor | None]:
    """The K per-network tensors of a vmapped argument (the same tensor K times when it is not batched)."""
    if t is None or dim is None:
        return [t] * k
    return [s.contiguous() for s in t.unbind(dim)]  # contiguous: the plain call sees the layout it sees alone


def _per_network(
    info: Any, in_dims: tuple[int | None, ...], tensors: tuple[Tensor | None, ...], call: Callable[..., Tensor]
) -> tuple[Tensor, int]:
    k = info.batch_size
    per = [_slices(t, d, k) for t, d in zip(tensors, in_dims, strict=False)]
    return torch.stack([call(*(s[i] for s in per)) for i in range(k)]), 0


@torch.library.custom_op("distiller::conv2d", mutates_args=())
def _conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


@_conv2d.register_vmap
def _conv2d_vmap(info, in_dims, x, weight, bias, stride, padding, dilation, groups):
    return _per_network(
        info, in_dims, (x, weight, bias), lambda a, w, b: F.conv2d(a, w, b, stride, padding, dilation, groups)
    )


@torch.library.custom_op("distiller::linear", mutates_args=())
def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.linear(x, weight, bias)


@_linear.register_vmap
def _linear_vmap(info, in_dims, x, weight, bias):
    return _per_network(info, in_dims, (x, weight, bias), F.linear)


@torch.library.custom_op("distiller::group_norm", mutates_args=())
def _group_norm(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    return F.group_norm(x, num_groups, weight, bias, eps)


@_group_norm.register_vmap
def _group_norm_vmap(info, in_dims, x, num_groups, weight, bias, eps):
    dims = (in_dims[0], in_dims[2], in_dims[3])
    return _per_network(info, dims, (x, weight, bias), lambda a, w, b: F.group_norm(a, num_groups, w, b, eps))


def _pair(v: int | Sequence[int]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _route_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | str | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor | None:
    if isinstance(padding, str):  # 'valid' is 0; 'same' is symmetric for odd effective kernels; else vmap's rule
        reach = [d * (k - 1) for d, k in zip(_pair(dilation), weight.shape[-2:], strict=True)]
        if padding == "same" and any(r % 2 for r in reach):
            return None
        padding = [0, 0] if padding == "valid" else [r // 2 for r in reach]
    return _conv2d(input, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)


def _route_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return _linear(input, weight, bias)


def _route_group_norm(
    input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    return _group_norm(input, num_groups, weight, bias, eps)


_ROUTES: dict[Callable[..., Any], Callable[..., Tensor | None]] = {
    torch.conv2d: _route_conv2d,  # F.conv2d is torch.conv2d
    F.linear: _route_linear,
    F.group_norm: _route_group_norm,
}


class _PerNetworkKernels(TorchFunctionMode):
    """Sends conv2d, linear and group_norm calls of a vmapped forward to the per-network custom ops above."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = _ROUTES.get(func)
        if route is not None:
            out = route(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)
