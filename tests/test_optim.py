"""The differentiable inner optimisers match torch.optim step for step, and stay finite through ReLU zeros."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from distiller.core.params import ModelParams
from distiller.core.runtime import generator
from distiller.nets.models import build_model
from distiller.nets.optim import SGD, Adam


def _run_both(functional, reference_cls, steps=6, **kw):
    """Both optimisers get the very same gradients each step (computed at our parameters)."""
    model = build_model(ModelParams(width=6), (1, 8, 8), 10, generator(0, "net"))
    x, y = torch.randn(30, 1, 8, 8, generator=generator(1)), torch.arange(10).repeat(3)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = functional.init(params)
    reference = reference_cls(model.parameters(), **kw)
    for i in range(steps):
        batch = slice(10 * (i % 3), 10 * (i % 3) + 10)
        theta = {k: v.requires_grad_(True) for k, v in params.items()}
        loss = F.cross_entropy(functional_call(model, theta, (x[batch],)), y[batch])
        grads = dict(zip(theta, torch.autograd.grad(loss, list(theta.values())), strict=True))
        params, state = functional.step({k: v.detach() for k, v in theta.items()}, grads, state)
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        reference.step()
    return params, dict(model.named_parameters())


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_adam_matches_torch_optim_step_for_step(lr):
    ours, theirs = _run_both(Adam(lr=lr), torch.optim.Adam, lr=lr)
    for name in theirs:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_torch_optim_step_for_step(momentum):
    ours, theirs = _run_both(SGD(lr=0.05, momentum=momentum), torch.optim.SGD, lr=0.05, momentum=momentum)
    for name in theirs:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6, rtol=1e-5), name


def test_adam_meta_gradient_is_finite_when_gradients_are_exactly_zero():
    """sqrt(v) at v = 0 has an infinite derivative; a gradient entry that is exactly 0 must not poison the graph."""
    w = torch.tensor([1.0, -1.0], requires_grad=True)
    x = torch.tensor([2.0, 3.0], requires_grad=True)
    opt = Adam(lr=0.1)
    params = {"w": w}
    state = opt.init(params)
    for _ in range(3):
        loss = (torch.relu(params["w"]) * x).sum()  # d loss / d w[1] is exactly 0 (ReLU off)
        (g,) = torch.autograd.grad(loss, [params["w"]], create_graph=True)
        params, state = opt.step(params, {"w": g}, state)
    (gx,) = torch.autograd.grad(params["w"].sum(), [x])
    assert torch.isfinite(gx).all()
