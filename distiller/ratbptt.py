"""RaT-BPTT: random truncated backpropagation through time (Feng, Vedantam & Kempe, ICLR 2024, arXiv 2311.07025).

Symbols: T the inner horizon (`horizon`), W the differentiable window (`window`), s the warm-up steps before the
window (`warmup_steps`), eta the inner lr (fixed), B the real batch of the meta-loss (`real_batch`).

One outer step: a freshly initialised network and inner optimiser; s ~ U{0 .. T - W} (redrawn every `redraw_every`
steps); s inner steps without a meta-graph; W differentiable inner steps (the optimiser state is differentiated
through); the meta-loss is cross-entropy of the final network on an augmented real batch. The outer update is Adam on
the pixels, with the pixel gradient clipped against a running average of its norm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distiller import checkpoint as ckpt
from distiller import models
from distiller._runtime import SILENT, DistillerError, Reporter, generator
from distiller.augment import dsa
from distiller.checkpoint import Store
from distiller.data import Prepared
from distiller.optim import SGD, Adam, InnerOptimizer, ParamDict, State, detach_state
from distiller.params import AugmentParams, GuardParams, ModelParams, RatBPTTParams
from distiller.synthetic import SyntheticSet, class_major_labels, real_subset


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


def targets_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard labels (int64) or label distributions (float, learned soft labels)."""
    return F.cross_entropy(logits, targets)


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
        loss = targets_loss(functional_call(model, theta, (x,)), targets)
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


@dataclass
class RatCurves:
    iteration: list[int]
    meta_loss: list[float]
    grad_norm: list[float]
    warmup_steps: list[int]
    skipped: list[int]  # 1 where the guard skipped the step

    KEYS = ("iteration", "meta_loss", "grad_norm", "warmup_steps", "skipped")

    def rows(self) -> list[dict[str, float | int]]:
        return [dict(zip(self.KEYS, v, strict=True)) for v in zip(*self.columns(), strict=True)]

    def columns(self) -> list[list]:
        return [getattr(self, k) for k in self.KEYS]


def initial_images(data: Prepared, ipc: int, init: str, gen: torch.Generator) -> torch.Tensor:
    """Class-major images: real ones, or N(0, 1) pixels rescaled to unit L2 norm per image (the paper's default)."""
    if init == "real":
        return real_subset(data, ipc, gen)[0].cpu()
    c, h, w = data.image_shape
    x = torch.randn(data.num_classes * ipc, c, h, w, generator=gen)
    return x / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def augment_params(p: RatBPTTParams, base: AugmentParams) -> AugmentParams | None:
    return None if p.augment == "none" else dataclasses.replace(base, strategy=p.augment)


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


def distill(
    data: Prepared,
    p: RatBPTTParams,
    model_p: ModelParams,
    base_augment: AugmentParams,
    seed: int,
    ipc: int,
    device: torch.device,
    *,
    iterations: int,
    key: str,
    start: SyntheticSet | None = None,
    beta: float = 1.0,
    beta_scales: str = "update",
    progress: Reporter = SILENT,
    on_iteration: Callable[[int], None] | None = None,
    guard: GuardParams | None = None,
    store: Store | None = None,
) -> tuple[SyntheticSet, RatCurves]:
    """Distill `ipc` images per class. With `start` (a set of fewer images per class), its images are kept as the
    first ones of every class and their updates are scaled by `beta` (Boost-DD); the new ones are initialised fresh.

    `key` names the random streams, so two calls with the same key and inputs draw the same numbers. Guarded: a step
    whose meta-loss or meta-gradient is not finite, or whose meta-gradient norm exceeds `guard.explode_factor` times
    its running average, is skipped; `guard.max_bad_steps` in a row stop the run. With `store`, the full state is
    checkpointed under `key` every `store.every` steps and a matching checkpoint is resumed from.
    """
    guard = guard or GuardParams()
    n_classes = data.num_classes
    init_gen = generator(seed, "ratbptt-init", key)
    fresh = initial_images(data, ipc, p.init, init_gen).view(n_classes, ipc, *data.image_shape)
    old = 0
    if start is not None:
        old = start.ipc
        fresh[:, :old] = start.images.detach().cpu().view(n_classes, old, *data.image_shape)
    images = fresh.reshape(n_classes * ipc, *data.image_shape).to(device).requires_grad_(True)
    hard = class_major_labels(n_classes, ipc).to(device)
    if p.soft_labels:
        targets = F.one_hot(hard, n_classes).float()
        if start is not None and start.soft_labels is not None:
            targets.view(n_classes, ipc, n_classes)[:, :old] = start.soft_labels.to(device).view(n_classes, old, -1)
        targets.requires_grad_(True)
    else:
        targets = hard
    weight = torch.ones(n_classes, ipc, 1, 1, 1, device=device)
    weight[:, :old] = beta  # Boost-DD: earlier blocks move beta times as far
    weight = weight.view(n_classes * ipc, 1, 1, 1)

    outer = torch.optim.Adam([images], lr=p.outer_lr)
    outer_y = torch.optim.Adam([targets], lr=p.outer_lr / p.label_lr_scale) if p.soft_labels else None
    model = models.build_model(model_p, data.image_shape, n_classes, generator(seed, "ratbptt-arch"), device)
    net_gen = generator(seed, "ratbptt-net", key)
    window_gen = generator(seed, "ratbptt-window", key)
    batch_gen = generator(seed, "ratbptt-batch", key)
    aug_gen = generator(seed, "ratbptt-augment", key, device=device)
    augment = augment_params(p, base_augment)
    syn = MetaBatch(images, targets, ipc, n_classes)
    curves = RatCurves([], [], [], [], [])
    shadow: float | None = None
    warmup, first, bad = 0, 1, 0
    gens = {"net": net_gen, "window": window_gen, "batch": batch_gen, "augment": aug_gen}
    optimizers = {"outer": outer, "outer_y": outer_y} if outer_y is not None else {"outer": outer}
    advance = progress.task(f"RaT-BPTT ipc {ipc}" + (f" (boost from {old})" if start else ""), iterations)

    saved = store.load(key) if store is not None else None
    if saved is not None:  # resume with every piece of state: the rest of the run is what it would have been
        with torch.no_grad():
            images.copy_(saved.tensors["images"])
            if p.soft_labels:
                targets.copy_(saved.tensors["targets"])
        for name, opt in optimizers.items():
            ckpt.restore_optimizer(name, opt, saved.tensors, saved.state[name])
        ckpt.restore_generators(gens, saved.tensors)
        curves = RatCurves(*saved.state["curves"])
        shadow, warmup, bad = saved.state["shadow"], saved.state["warmup"], saved.state["bad"]
        first = saved.state["iteration"] + 1
        advance(first - 1)

    for it in range(first, iterations + 1):
        if p.outer_schedule == "cosine":  # decay to 0 over this run's steps: the last updates are small
            factor = 0.5 * (1 + math.cos(math.pi * (it - 1) / iterations))
            outer.param_groups[0]["lr"] = p.outer_lr * factor
            if outer_y is not None:
                outer_y.param_groups[0]["lr"] = p.outer_lr / p.label_lr_scale * factor
        if (it - 1) % p.redraw_every == 0:
            warmup = draw_warmup(p, window_gen)
        net = models.build_model(model_p, data.image_shape, n_classes, net_gen, device)
        theta0 = {k: v.detach() for k, v in net.named_parameters()}
        real_idx = torch.randperm(len(data.train_labels), generator=batch_gen)[: p.real_batch].to(device)
        meta = ratbptt_meta_loss(
            model,
            theta0,
            syn,
            data.train_images[real_idx],
            data.train_labels[real_idx],
            p,
            augment,
            warmup,
            batch_gen,
            aug_gen,
        )
        params = [images, targets] if p.soft_labels else [images]
        grads = torch.autograd.grad(meta, params)
        g_img = grads[0]
        if beta_scales == "gradient":
            g_img = g_img * weight
        norm = float(g_img.norm())
        problem = None
        if not all(bool(torch.isfinite(t).all()) for t in (meta, *grads)):
            problem = "the meta-loss or meta-gradient is not finite (lower ratbptt.outer_lr or ratbptt.inner_lr)"
        elif shadow is not None and norm > guard.explode_factor * shadow:
            problem = (
                "the meta-gradient norm exploded past guard.explode_factor x its running average "
                "(lower ratbptt.inner_lr or ratbptt.window)"
            )
        else:
            # meta-gradient clipping: EMA of the norm (shadow <- shadow - 0.1 (shadow - |g|)), then clip to 2 x shadow
            shadow = norm if shadow is None else shadow - p.clip_ema * (shadow - norm)
            limit = p.clip_factor * shadow
            if norm > limit > 0:
                g_img = g_img * (limit / norm)
            scale_update = beta_scales == "update" and old > 0
            _outer_step(outer, images, g_img, weight if scale_update else None)
            if outer_y is not None:
                row_weight = weight.view(-1, 1)
                g_y = grads[1] * row_weight if beta_scales == "gradient" else grads[1]
                _outer_step(outer_y, targets, g_y, row_weight if scale_update else None)
                with torch.no_grad():
                    targets.clamp_(min=0)  # soft labels stay non-negative
        bad = bad + 1 if problem else 0
        if bad >= guard.max_bad_steps:
            raise DistillerError(f"RaT-BPTT ({key}) stopped at step {it}: {bad} bad steps in a row; {problem}")
        curves.iteration.append(it)
        curves.meta_loss.append(meta.item())
        curves.grad_norm.append(norm)
        curves.warmup_steps.append(warmup)
        curves.skipped.append(int(problem is not None))
        advance(1)
        if store is not None and store.due(it) and it < iterations:
            tensors = {"images": images, **ckpt.generator_states(gens)}
            if p.soft_labels:
                tensors["targets"] = targets
            state: dict[str, object] = {"iteration": it, "bad": bad, "shadow": shadow, "warmup": warmup}
            for name, opt in optimizers.items():
                opt_tensors, state[name] = ckpt.optimizer_state(name, opt)
                tensors.update(opt_tensors)
            store.save(key, tensors, {**state, "curves": curves.columns()})
        if on_iteration is not None:
            on_iteration(it)

    result = SyntheticSet(
        images=images.detach().clone(),
        labels=hard.clone(),
        lr=None,
        ipc=ipc,
        soft_labels=targets.detach().clone() if p.soft_labels else None,
    )
    return result, curves
