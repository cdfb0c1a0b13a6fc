"""Parity of the functional unroll with torch.optim, and the meta-gradient against finite differences."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from distiller._runtime import generator
from distiller.buffer import ExpertBuffer
from distiller.experts import train_expert
from distiller.models import build_model
from distiller.mtt import distill, minibatches, mtt_loss, student_unroll
from distiller.params import AugmentParams, Families, ModelParams
from distiller.run import Context


def test_functional_unroll_matches_torch_optim_sgd_on_the_module():
    model = build_model(ModelParams(width=8), (1, 8, 8), 10, generator(0, "net"))
    images, labels = torch.randn(20, 1, 8, 8), torch.arange(10).repeat(2)
    theta0 = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    lr = 0.1
    theta_n = student_unroll(model, theta0, images, labels, torch.tensor(lr), 5, 0, None, generator(0, "b"))

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(5):  # full batch: the permutation does not change the loss
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    for name, p in model.named_parameters():
        assert torch.allclose(theta_n[name], p, atol=1e-6), name


def test_minibatches_cover_the_set_then_redraw():
    it = minibatches(10, 4, generator(0))
    first_pass = torch.cat([next(it), next(it)])
    assert len(set(first_pass.tolist())) == 8  # two chunks of one permutation, no repeats
    assert len(next(it)) == 4


def test_mtt_loss_is_one_at_the_start_and_zero_at_the_target():
    start = {"w": torch.zeros(3), "b": torch.zeros(1)}
    target = {"w": torch.ones(3), "b": torch.ones(1)}
    assert mtt_loss(start, start, target) == 1.0
    assert mtt_loss(target, start, target) == 0.0
    half = {k: v / 2 for k, v in target.items()}
    assert torch.isclose(mtt_loss(half, start, target), torch.tensor(0.25))


def test_meta_gradient_matches_finite_differences_in_float64():
    """d L / d (S, alpha) through N second-order steps, with DSA in the loop, against central differences."""
    p = ModelParams(width=3, depth=1)
    model = build_model(p, (1, 4, 4), 2, generator(0, "net")).double()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    target = {k: v + 0.1 * torch.randn(v.shape, generator=generator(1, k), dtype=v.dtype) for k, v in start.items()}
    labels = torch.tensor([0, 1, 0, 1])
    augment = dataclasses.replace(AugmentParams(), strategy=Families.parse("scale_rotate_color"))

    def loss_fn(images: torch.Tensor, syn_lr: torch.Tensor) -> torch.Tensor:
        theta0 = {k: v.clone().requires_grad_(True) for k, v in start.items()}
        theta_n = student_unroll(model, theta0, images, labels, syn_lr, 3, 2, augment, generator(7, "aug"))
        return mtt_loss(theta_n, start, target)

    images = torch.randn(4, 1, 4, 4, dtype=torch.float64, generator=generator(2)).requires_grad_(True)
    syn_lr = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss_fn, (images, syn_lr), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_distill_is_bitwise_reproducible_and_keeps_syn_lr_positive(digits, tiny):
    """Same params and seed: identical images; a huge lr_lr would drive alpha negative without the floor."""
    device = torch.device("cpu")
    trajectories = [train_expert(digits, tiny.model, tiny.expert, tiny.augment, 0, i, device)[0] for i in range(2)]
    buffer = ExpertBuffer(trajectories, {})
    ctx = Context(digits, tiny.model, tiny.augment, tiny.seed, device)
    a, curves_a = distill(ctx, buffer, tiny.mtt, 1, tiny.expert.lr)
    b, _ = distill(ctx, buffer, tiny.mtt, 1, tiny.expert.lr)
    assert torch.equal(a.images, b.images) and a.lr == b.lr and curves_a["loss"]
    wild = dataclasses.replace(tiny.mtt, lr_lr=10.0, syn_lr_floor=1e-4)
    c, curves = distill(ctx, buffer, wild, 1, tiny.expert.lr)
    assert min(curves["syn_lr"]) == pytest.approx(1e-4) and c.lr > 0  # clamped at the floor (float32)
