"""Functional, differentiable inner optimisers over name -> tensor parameter dicts.

`step(params, grads, state)` returns new parameters and a new state without touching its inputs, so when the grads
carry a graph (`create_graph=True`) the update, the optimiser state included, is differentiable. This replaces
`higher`'s DifferentiableAdam for RaT-BPTT. Both follow `torch.optim` exactly (tested step for step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

ParamDict = dict[str, torch.Tensor]
State = dict[str, object]

# sqrt(v + tiny) instead of sqrt(v): the derivative of sqrt at 0 is infinite, and ReLU nets have gradient entries that
# are exactly 0, so a plain sqrt turns the meta-gradient into NaN (0 * inf). 1e-30 is far below float32 resolution at
# any v that matters (eps = 1e-8 is added to sqrt(v) anyway), so the forward value is unchanged in practice.
_SQRT_TINY = 1e-30


class InnerOptimizer(Protocol):
    def init(self, params: ParamDict) -> State: ...

    def step(self, params: ParamDict, grads: ParamDict, state: State) -> tuple[ParamDict, State]: ...


@dataclass(frozen=True)
class Adam:
    """torch.optim.Adam (no weight decay, no amsgrad): p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init(self, params: ParamDict) -> State:
        return {
            "t": 0,
            "m": {k: torch.zeros_like(v) for k, v in params.items()},
            "v": {k: torch.zeros_like(v) for k, v in params.items()},
        }

    def step(self, params: ParamDict, grads: ParamDict, state: State) -> tuple[ParamDict, State]:
        b1, b2 = self.betas
        t = int(state["t"]) + 1  # type: ignore[call-overload]
        m_old, v_old = state["m"], state["v"]
        assert isinstance(m_old, dict) and isinstance(v_old, dict)
        bc1, bc2_sqrt = 1 - b1**t, (1 - b2**t) ** 0.5
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            m = b1 * m_old[k] + (1 - b1) * g
            v = b2 * v_old[k] + (1 - b2) * g * g
            denom = torch.sqrt(v + _SQRT_TINY) / bc2_sqrt + self.eps
            new_p[k] = p - (self.lr / bc1) * m / denom
            new_m[k], new_v[k] = m, v
        return new_p, {"t": t, "m": new_m, "v": new_v}


@dataclass(frozen=True)
class SGD:
    """torch.optim.SGD with momentum (dampening 0, no Nesterov, no weight decay)."""

    lr: float
    momentum: float = 0.0

    def init(self, params: ParamDict) -> State:
        return {"buf": None}

    def step(self, params: ParamDict, grads: ParamDict, state: State) -> tuple[ParamDict, State]:
        if self.momentum == 0:
            return {k: p - self.lr * grads[k] for k, p in params.items()}, state
        old = state["buf"]
        buf = dict(grads) if old is None else {k: self.momentum * old[k] + grads[k] for k in params}  # type: ignore[index]
        return {k: p - self.lr * buf[k] for k, p in params.items()}, {"buf": buf}


def detach_state(state: State) -> State:
    """The same state cut from any graph (the start of a differentiable window)."""

    def cut(x: object) -> object:
        if isinstance(x, torch.Tensor):
            return x.detach()
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        return x

    out = cut(state)
    assert isinstance(out, dict)
    return out
