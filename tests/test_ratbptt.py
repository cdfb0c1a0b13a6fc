"""RaT-BPTT's meta-gradient, its seeded window draws, and Boost-DD's nesting."""

import dataclasses

import pytest
import torch

from distiller.core.params import (
    AugmentParams,
    Families,
    ModelParams,
    Params,
    RatBPTTParams,
    effective_budgets,
    params_from_dict,
)
from distiller.core.runtime import generator
from distiller.methods import boost, ratbptt
from distiller.methods.ratbptt import MetaBatch, draw_warmup, inner_optimizer, ratbptt_meta_loss, real_loss, unroll
from distiller.methods.run import Context
from distiller.methods.synthetic import initial_images
from distiller.nets.models import build_model


def _window_problem(optimizer: str):
    """float64, a tiny ConvNet on 3 classes, DSA on, one graph-free warm-up step already taken."""
    model = build_model(ModelParams(width=3), (1, 8, 8), 3, generator(0, "net")).double()
    theta0 = {k: v.detach() for k, v in model.named_parameters()}
    p = RatBPTTParams(horizon=3, window=2, inner_optimizer=optimizer, inner_lr=0.05, batch_per_class=2, real_batch=12)
    aug = AugmentParams(strategy=Families.parse("crop_scale_rotate"))
    real_x = torch.randn(12, 1, 8, 8, dtype=torch.float64, generator=generator(1))
    real_y = torch.arange(3).repeat(4)
    labels = torch.arange(3).repeat_interleave(2)
    images = torch.randn(6, 1, 8, 8, dtype=torch.float64, generator=generator(4))
    return model, theta0, p, aug, real_x, real_y, labels, images


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_meta_gradient_through_a_short_window_matches_finite_differences(optimizer):
    """The window's gradient w.r.t. the pixels (differentiating through the inner optimiser and its state) equals
    central differences of the window's meta-loss; every evaluation replays the same batches and augmentations."""
    model, theta0, p, aug, real_x, real_y, labels, images = _window_problem(optimizer)
    opt = inner_optimizer(p)
    gen, aug_gen = generator(2), generator(3)
    warm = MetaBatch(images, labels, ipc=2, num_classes=3)
    theta_s, state_s = unroll(model, theta0, opt.init(theta0), opt, warm, p, aug, 1, gen, aug_gen, differentiable=False)
    snapshot = gen.get_state(), aug_gen.get_state()

    def window_loss(x: torch.Tensor) -> torch.Tensor:
        g, a = torch.Generator().set_state(snapshot[0]), torch.Generator().set_state(snapshot[1])
        syn = MetaBatch(x, labels, ipc=2, num_classes=3)
        theta, _ = unroll(model, theta_s, state_s, opt, syn, p, aug, p.window, g, a, differentiable=True)
        return real_loss(model, theta, real_x, real_y, aug, a)

    assert torch.autograd.gradcheck(
        window_loss, (images.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, fast_mode=True
    )

    # and the full RaT-BPTT meta-loss differentiates exactly that window (the warm-up is truncated away)
    x = images.clone().requires_grad_(True)
    full = ratbptt_meta_loss(
        model, theta0, MetaBatch(x, labels, 2, 3), real_x, real_y, p, aug, 1, generator(2), generator(3)
    )
    y = images.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(full, x)
    (g_window,) = torch.autograd.grad(window_loss(y), y)
    assert torch.allclose(g_full, g_window, rtol=1e-10, atol=1e-14)


def test_the_warm_up_steps_carry_no_meta_gradient():
    """Only the W window steps are differentiated: with the whole horizon as warm-up the images get no gradient path
    except through the window, so a window of 1 step gives a gradient, and it differs from a window of 2."""
    model = build_model(ModelParams(width=3), (1, 8, 8), 3, generator(0, "net"))
    theta0 = {k: v.detach() for k, v in model.named_parameters()}
    images = torch.randn(3, 1, 8, 8, generator=generator(4)).requires_grad_(True)
    syn = MetaBatch(images, torch.arange(3), ipc=1, num_classes=3)
    real_x, real_y = torch.randn(9, 1, 8, 8, generator=generator(1)), torch.arange(3).repeat(3)
    grads = []
    for window in (1, 2):
        p = RatBPTTParams(horizon=4, window=window, real_batch=9)
        loss = ratbptt_meta_loss(model, theta0, syn, real_x, real_y, p, None, 4 - window, generator(2), generator(3))
        grads.append(torch.autograd.grad(loss, images)[0])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert not torch.equal(grads[0], grads[1])


def test_window_start_is_uniform_on_its_range_and_reproducible_from_the_seed():
    p = RatBPTTParams(horizon=10, window=4)
    draws = [draw_warmup(p, generator(7, "ratbptt-window", "direct-1")) for _ in range(2)]
    assert draws[0] == draws[1]
    g = generator(7, "ratbptt-window", "direct-1")
    seq = [draw_warmup(p, g) for _ in range(300)]
    assert set(seq) == set(range(0, 7))  # {0 .. T - W}, both ends included
    other = generator(8, "ratbptt-window", "direct-1")
    assert [draw_warmup(p, other) for _ in range(300)] != seq
    assert draw_warmup(dataclasses.replace(p, placement="end"), g) == 6
    assert draw_warmup(dataclasses.replace(p, placement="fixed", warmup_steps=3), g) == 3


def _tiny(**overrides: object) -> Params:
    raw: dict = {
        "seed": 3,
        "device": "cpu",
        "model": {"width": 4},
        "distill": {"method": "ratbptt", "ipc": 3, "budgets": [1, 2, 3]},
        "ratbptt": {"iterations": 3, "horizon": 4, "window": 2, "real_batch": 32, "outer_lr": 0.05},
        "boost": {"beta": 0.0, "stage_iterations": 2},
    }
    for key, value in overrides.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    return params_from_dict(raw)


def context(digits, p: Params) -> Context:
    return Context(digits, p.model, p.augment, p.seed, torch.device("cpu"), p.guard)


def boosted(digits, p: Params, references: bool) -> boost.BoostResult:
    return boost.boost(context(digits, p), p.ratbptt, p.boost, effective_budgets(p.distill), references=references)


def test_distill_is_bitwise_reproducible_and_window_draws_are_recorded(digits):
    p = _tiny()
    runs = [ratbptt.distill(context(digits, p), p.ratbptt, 2, iterations=4, key="k") for _ in range(2)]
    (a, ca), (b, cb) = runs
    assert torch.equal(a.images, b.images)
    assert ca["warmup_steps"] == cb["warmup_steps"] and all(0 <= s <= 2 for s in ca["warmup_steps"])
    assert not torch.equal(a.images, initial_images(digits, 2, "real", generator(3, "ratbptt-init", "k")))


def test_boosting_with_beta_zero_is_nested(digits):
    """With beta = 0 the earlier blocks are frozen: the budget-k prefix of the final set is the set after stage k."""
    result = boosted(digits, _tiny(), references=False)
    assert result.boosted.budgets == (1, 2, 3)
    for stage in result.stages:
        prefix = result.boosted.prefix(stage.ipc)
        assert torch.equal(prefix.images, stage.images), stage.ipc
        assert torch.equal(prefix.labels, stage.labels)
    # and the later stages did train their own block
    assert not torch.equal(result.stages[-1].images, result.stages[-2].images[:1])


def test_boosting_with_beta_one_moves_earlier_blocks_and_references_are_direct(digits):
    result = boosted(digits, _tiny(**{"boost.beta": 1.0}), references=True)
    assert not torch.equal(result.boosted.prefix(1).images, result.stages[0].images)
    assert sorted(result.direct) == [1, 2, 3]
    assert result.direct[1] is result.stages[0]
    assert all(result.direct[b].ipc == b and result.direct[b].budgets == () for b in (2, 3))


def test_soft_labels_are_learned_and_stay_non_negative(digits):
    p = _tiny(**{"ratbptt.soft_labels": True, "ratbptt.outer_lr": 0.5})
    syn, _ = ratbptt.distill(context(digits, p), p.ratbptt, 1, iterations=3, key="soft")
    assert syn.soft_labels is not None and syn.soft_labels.shape == (10, 10)
    assert (syn.soft_labels >= 0).all()
    assert not torch.equal(syn.soft_labels, torch.eye(10))
