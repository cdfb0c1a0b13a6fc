"""RaT-BPTT: random truncated backpropagation through time (Feng, Vedantam & Kempe, ICLR 2024, arXiv 2311.07025).

Symbols: T the inner horizon (`horizon`), W the differentiable window (`window`), s the warm-up steps before the
window (`warmup_steps`), eta the inner lr (fixed), B the real batch of the meta-loss (`real_batch`).

One outer step: a freshly initialised network and inner optimiser; s ~ U{0 .. T - W} (redrawn every `redraw_every`
steps); s inner steps without a meta-graph; W differentiable inner steps (the optimiser state is differentiated
through); the meta-loss is cross-entropy of the final network on an augmented real batch. The outer update is Adam on
the pixels, with the pixel gradient clipped against a running average of its norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distiller.core.params import AugmentParams, RatBPTTParams
from distiller.methods.run import Context, Curves, Guard, finite
from distiller.methods.synthetic import SyntheticSet, class_major_labels, initial_images
from distiller.nets.augment import dsa, with_families
from distiller.nets.optim import SGD, Adam, InnerOptimizer, ParamDict, State, detach_state


def inner_optimizer(p: RatBPTTParams) -> InnerOptimizer:
    if p.inner_optimizer == "adam":
        return Adam(lr=p.inner_lr)
    return SGD(lr=p.inner_lr, momentum=p.inner_momentum)


def draw_warmup(p: RatBPTTParams, gen: torch.Generator) -> int:
    """The window start s: uniform on {0 .. T - W} ('random'), T - W ('end', truncated BPTT) or fixed."""
    if p.placement == "random":
        return int(torch.randint(p.horizon - p.window + 1, (1,), generator=gen))
    if p.placement == "end":
        return p.horizon - p.window
    return p.warmup_steps


def inner_batch(num_classes: int, ipc: int, p: RatBPTTParams, gen: torch.Generator) -> torch.Tensor:
    """Indices into a class-major set: `batch_per_class` images from each of `classes_per_step` classes."""
    classes = torch.arange(num_classes)
    if 0 < p.classes_per_step < num_classes:
        classes = torch.randperm(num_classes, generator=gen)[: p.classes_per_step].sort().values
    per_class = min(p.batch_per_class, ipc)
    picks = torch.stack([torch.randperm(ipc, generator=gen)[:per_class] for _ in classes])  # (classes, per_class)
    return (classes[:, None] * ipc + picks).flatten()


@dataclass(frozen=True)
class MetaBatch:
    images: torch.Tensor  # (n, C, H, W) synthetic, requires grad
    targets: torch.Tensor  # (n,) int64 or (n, classes) float
    ipc: int
    num_classes: int


def unroll(
    model: nn.Module,
    theta: ParamDict,
    state: State,
    opt: InnerOptimizer,
    syn: MetaBatch,
    p: RatBPTTParams,
    augment: AugmentParams | None,
    steps: int,
    gen: torch.Generator,
    aug_gen: torch.Generator,
    *,
    differentiable: bool,
) -> tuple[ParamDict, State]:
    """`steps` inner optimiser steps on synthetic minibatches. Differentiable: every update, the optimiser state
    included, stays in the graph (and so do the images). Otherwise each step starts from detached tensors."""
    if differentiable:  # the window starts from a cut: nothing before it is differentiated
        theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        state = detach_state(state)
    for _ in range(steps):
        if not differentiable:
            theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        idx = inner_batch(syn.num_classes, syn.ipc, p, gen).to(syn.images.device)
        x, targets = syn.images[idx], syn.targets[idx]
        if not differentiable:
            x, targets = x.detach(), targets.detach()
        if augment is not None:
            x = dsa(x, augment, aug_gen)
        loss = F.cross_entropy(functional_call(model, theta, (x,)), targets)  # hard or soft targets
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=differentiable)
        theta, state = opt.step(theta, dict(zip(theta, grads, strict=True)), state)
    if not differentiable:
        theta, state = {k: v.detach() for k, v in theta.items()}, detach_state(state)
    return theta, state


def real_loss(
    model: nn.Module,
    theta: ParamDict,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    augment: AugmentParams | None,
    aug_gen: torch.Generator,
) -> torch.Tensor:
    """The meta-loss: cross-entropy of the trained network on an augmented real batch."""
    x = dsa(real_x, augment, aug_gen) if augment is not None else real_x
    return F.cross_entropy(functional_call(model, theta, (x,)), real_y)


def ratbptt_meta_loss(
    model: nn.Module,
    theta0: ParamDict,
    syn: MetaBatch,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    p: RatBPTTParams,
    augment: AugmentParams | None,
    warmup_steps: int,
    gen: torch.Generator,
    aug_gen: torch.Generator,
) -> torch.Tensor:
    """Meta-loss after `warmup_steps` graph-free inner steps and W differentiable ones from theta0."""
    opt = inner_optimizer(p)
    state = opt.init(theta0)
    # 1. warm-up: s ordinary steps, no meta-graph
    theta, state = unroll(model, theta0, state, opt, syn, p, augment, warmup_steps, gen, aug_gen, differentiable=False)
    # 2. the window: W steps whose updates (optimiser state included) stay in the graph
    theta, state = unroll(model, theta, state, opt, syn, p, augment, p.window, gen, aug_gen, differentiable=True)
    # 3. meta-loss on an augmented real batch
    return real_loss(model, theta, real_x, real_y, augment, aug_gen)


CURVES = ("iteration", "meta_loss", "grad_norm", "warmup_steps", "skipped")


@dataclass(frozen=True)
class Boosting:
    """Boost-DD's start: a set of fewer images per class kept as the first ones of every class, its updates scaled
    by `beta` (of the Adam step, or of the gradient)."""

    start: SyntheticSet
    beta: float
    scales: Literal["update", "gradient"] = "update"


def distill(
    ctx: Context, p: RatBPTTParams, ipc: int, *, iterations: int, key: str, boosting: Boosting | None = None
) -> tuple[SyntheticSet, Curves]:
    """Distill `ipc` images per class in `iterations` outer steps (boosting from `boosting.start` when given).

    `key` names the random streams, so two calls with the same key and inputs draw the same numbers. Guarded
    (`MetaGradientClip`); with `ctx.store`, checkpointed under `key` every `store.every` steps and resumed."""
    syn, hard, weight = initial_set(ctx, p, ipc, key, boosting)
    outer = OuterAdam(p, syn)
    model = ctx.network(ctx.generator("ratbptt-arch"))
    gens = {name: ctx.generator(f"ratbptt-{name}", key) for name in ("net", "window", "batch")}
    gens["augment"] = ctx.generator("ratbptt-augment", key, on_device=True)
    augment = with_families(ctx.augment, p.augment)
    curves, guard = Curves(CURVES), Guard(ctx.guard, f"RaT-BPTT ({key})")
    clip = MetaGradientClip(p, ctx.guard.explode_factor)
    learned = {"images": syn.images, **({"targets": syn.targets} if p.soft_labels else {})}
    state, warmup = ctx.resumable(key, learned, outer.optimizers, gens), 0
    if (saved := state.resume(iterations)) is not None:  # the rest of the run is what it would have been
        curves, guard.bad = Curves(CURVES, saved["curves"]), saved["bad"]
        clip.shadow, warmup = saved["shadow"], saved["warmup"]
    what = f"RaT-BPTT ipc {ipc}" + (f" (boost from {boosting.start.ipc})" if boosting else "")
    advance = ctx.progress.task(what, iterations)
    advance(len(curves))

    for it in range(len(curves) + 1, iterations + 1):
        outer.schedule(it, iterations)
        if (it - 1) % p.redraw_every == 0:
            warmup = draw_warmup(p, gens["window"])
        theta0 = {k: v.detach() for k, v in ctx.network(gens["net"]).named_parameters()}
        real_idx = torch.randperm(len(ctx.data.train_labels), generator=gens["batch"])[: p.real_batch].to(ctx.device)
        real_x, real_y = ctx.data.train_images[real_idx], ctx.data.train_labels[real_idx]
        meta = ratbptt_meta_loss(model, theta0, syn, real_x, real_y, p, augment, warmup, gens["batch"], gens["augment"])
        grads = torch.autograd.grad(meta, list(learned.values()))
        problem, norm = meta_step(meta, grads, syn, outer, clip, weight, boosting)

        guard.check(problem, f"step {it}")
        skipped = int(problem is not None)
        curves.add(iteration=it, meta_loss=meta.item(), grad_norm=norm, warmup_steps=warmup, skipped=skipped)
        advance(1)
        if state.due(it, iterations):
            state.save(it, bad=guard.bad, shadow=clip.shadow, warmup=warmup, curves=curves.columns)
    guard.finish(curves["skipped"])
    soft = syn.targets.detach().clone() if p.soft_labels else None
    return SyntheticSet(syn.images.detach().clone(), hard.clone(), None, ipc, soft), curves


class OuterAdam:
    """The outer optimisers: Adam on the pixels and, with soft labels, on the labels (lr outer_lr / label_lr_scale);
    with `outer_schedule` cosine both decay to 0 over a run's steps, so the last updates are small."""

    def __init__(self, p: RatBPTTParams, syn: MetaBatch) -> None:
        self.p = p
        self.images = torch.optim.Adam([syn.images], lr=p.outer_lr)
        self.labels = torch.optim.Adam([syn.targets], lr=p.outer_lr / p.label_lr_scale) if p.soft_labels else None
        self.optimizers = {"outer": self.images, **({"outer_y": self.labels} if self.labels is not None else {})}

    def schedule(self, it: int, iterations: int) -> None:
        if self.p.outer_schedule == "cosine":
            factor = 0.5 * (1 + math.cos(math.pi * (it - 1) / iterations))
            for opt, lr in ((self.images, self.p.outer_lr), (self.labels, self.p.outer_lr / self.p.label_lr_scale)):
                if opt is not None:
                    opt.param_groups[0]["lr"] = lr * factor


def initial_set(
    ctx: Context, p: RatBPTTParams, ipc: int, key: str, boosting: Boosting | None
) -> tuple[MetaBatch, torch.Tensor, torch.Tensor | None]:
    """The learnable set (class-major; with `boosting`, its images and labels first in every class), its hard labels,
    and with `boosting` each row's update weight (beta for the earlier blocks, 1 for the new ones)."""
    n, shape = ctx.data.num_classes, ctx.data.image_shape
    init = initial_images(ctx.data, ipc, p.init, ctx.generator("ratbptt-init", key), unit_norm=True)
    fresh, old = init.view(n, ipc, *shape), boosting.start.ipc if boosting else 0
    if boosting is not None:
        fresh[:, :old] = boosting.start.images.detach().cpu().view(n, old, *shape)
    images = fresh.reshape(n * ipc, *shape).to(ctx.device).requires_grad_(True)
    hard = class_major_labels(n, ipc).to(ctx.device)
    targets = hard
    if p.soft_labels:  # learned label distributions, one-hot at first
        targets = F.one_hot(hard, n).float()
        if boosting is not None and boosting.start.soft_labels is not None:
            targets.view(n, ipc, n)[:, :old] = boosting.start.soft_labels.to(ctx.device).view(n, old, -1)
        targets.requires_grad_(True)
    weight = None
    if boosting is not None:  # Boost-DD: earlier blocks move beta times as far
        weight = torch.ones(n, ipc, 1, 1, 1, device=ctx.device)
        weight[:, :old] = boosting.beta
        weight = weight.view(n * ipc, 1, 1, 1)
    return MetaBatch(images, targets, ipc, n), hard, weight


class MetaGradientClip:
    """RaT-BPTT's clipping: a running average of the pixel meta-gradient norm (shadow <- shadow - ema (shadow - |g|))
    and a clip at `clip_factor` x that average. A norm above `explode_factor` x the average is not clipped but
    reported as exploding."""

    def __init__(self, p: RatBPTTParams, explode_factor: float) -> None:
        self.p, self.explode_factor = p, explode_factor
        self.shadow: float | None = None  # the running average; None before the first step

    def __call__(self, g: torch.Tensor, norm: float) -> tuple[torch.Tensor, str | None]:
        if self.shadow is not None and norm > self.explode_factor * self.shadow:
            return g, (
                "the meta-gradient norm exploded past guard.explode_factor x its running average "
                "(lower ratbptt.inner_lr or ratbptt.window)"
            )
        self.shadow = norm if self.shadow is None else self.shadow - self.p.clip_ema * (self.shadow - norm)
        limit = self.p.clip_factor * self.shadow
        return (g * (limit / norm) if norm > limit > 0 else g), None


def meta_step(
    meta: torch.Tensor,
    grads: tuple[torch.Tensor, ...],
    syn: MetaBatch,
    outer: OuterAdam,
    clip: MetaGradientClip,
    weight: torch.Tensor | None,
    boosting: Boosting | None,
) -> tuple[str | None, float]:
    """The outer Adam step on the pixels (and labels), clipped and, when boosting, beta-weighted. Returns what went
    wrong (the step is then skipped) and the pixel meta-gradient norm."""
    by_gradient = boosting is not None and boosting.scales == "gradient"
    by_update = weight if boosting is not None and boosting.scales == "update" else None
    g_img = grads[0] * weight if by_gradient and weight is not None else grads[0]
    norm = float(g_img.norm())
    if not finite(meta, *grads):
        return "the meta-loss or meta-gradient is not finite (lower ratbptt.outer_lr or ratbptt.inner_lr)", norm
    g_img, problem = clip(g_img, norm)
    if problem is not None:
        return problem, norm
    _outer_step(outer.images, syn.images, g_img, by_update)
    if outer.labels is not None:
        rows = weight.view(-1, 1) if weight is not None else None
        g_y = grads[1] * rows if by_gradient and rows is not None else grads[1]
        _outer_step(outer.labels, syn.targets, g_y, rows if by_update is not None else None)
        with torch.no_grad():
            syn.targets.clamp_(min=0)  # soft labels stay non-negative
    return None, norm


def _outer_step(
    opt: torch.optim.Optimizer, x: torch.Tensor, grad: torch.Tensor, update_weight: torch.Tensor | None
) -> None:
    """One outer step on `x` with `grad`; with `update_weight`, each row moves only that fraction of its step."""
    before = x.detach().clone() if update_weight is not None else None  # copied only when it is needed
    x.grad = grad
    opt.step()
    opt.zero_grad(set_to_none=True)
    if update_weight is not None and before is not None:
        with torch.no_grad():
            x.copy_(before + update_weight * (x - before))
