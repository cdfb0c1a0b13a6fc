"""Matching Training Trajectories (MTT; Cazenavette et al., CVPR 2022, arXiv 2203.11932).

Symbols: S synthetic images, alpha the learnable student lr (`syn_lr`), N student steps (`syn_steps`), M expert
epochs between start and target (`expert_epochs`), T+ exclusive bound of the start epoch (`max_start_epoch`).

One iteration: draw an expert and t < T+; start a student at theta*_t; take N SGD steps on (augmented) minibatches
of S, keeping the graph; then minimise

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

w.r.t. S and alpha by backpropagating through all N steps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distiller.augment import dsa
from distiller.buffer import ExpertBuffer
from distiller.params import AugmentParams, MTTParams
from distiller.run import Context, Curves, Guard, finite
from distiller.synthetic import SyntheticSet, class_major_labels, initial_images

ParamDict = dict[str, torch.Tensor]
CURVES = ("iteration", "loss", "syn_lr", "expert", "start_epoch", "skipped")


def minibatches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless minibatch indices: a random permutation of range(n) cut into chunks, redrawn when used up."""
    batch_size = min(batch_size or n, n)
    while True:
        order = torch.randperm(n, generator=gen, device=gen.device)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def student_unroll(
    model: nn.Module,
    theta: ParamDict,
    images: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    n_steps: int,
    batch_size: int,
    augment: AugmentParams | None,
    gen: torch.Generator,
) -> ParamDict:
    """theta_{i+1} = theta_i - alpha * grad l(theta_i; DSA(S_i)) for i < N, differentiable w.r.t. S, alpha, theta_0."""
    batches = minibatches(len(images), batch_size, gen)
    for _ in range(n_steps):
        idx = next(batches).to(images.device)
        x = images[idx]
        if augment is not None:
            x = dsa(x, augment, gen)
        loss = F.cross_entropy(functional_call(model, theta, (x,)), labels[idx])
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta = {name: p - syn_lr * g for (name, p), g in zip(theta.items(), grads, strict=True)}
    return theta


def mtt_loss(theta_n: ParamDict, start: ParamDict, target: ParamDict) -> torch.Tensor:
    """||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2, one ratio summed over all parameters."""
    num = torch.stack([((theta_n[k] - target[k]) ** 2).sum() for k in target]).sum()
    den = torch.stack([((start[k] - target[k]) ** 2).sum() for k in target]).sum()
    return num / den


def distill(ctx: Context, buffer: ExpertBuffer, p: MTTParams, ipc: int, syn_lr: float) -> tuple[SyntheticSet, Curves]:
    """Run `p.iterations` MTT iterations from the initial student lr `syn_lr`; returns the set and its curves.

    Guarded (`outer_step`); with `ctx.store`, checkpointed every `store.every` iterations and resumed from a matching
    checkpoint, bitwise equal to an uninterrupted run on the CPU."""
    images = initial_images(ctx.data, ipc, p.init, ctx.generator("mtt-init")).to(ctx.device).requires_grad_(True)
    labels = class_major_labels(ctx.data.num_classes, ipc).to(ctx.device)
    lr = torch.tensor(float(syn_lr), device=ctx.device).requires_grad_(True)
    opt_img = torch.optim.SGD([images], lr=p.lr_img, momentum=p.momentum)
    opt_lr = torch.optim.SGD([lr], lr=p.lr_lr, momentum=p.momentum)
    model = ctx.network(ctx.generator("mtt-arch"))
    segment_gen, augment_gen = ctx.generator("mtt-segment"), ctx.generator("mtt-augment", on_device=True)
    curves, guard = Curves(CURVES), Guard(ctx.guard, "MTT")
    gens = {"segment": segment_gen, "augment": augment_gen}
    state = ctx.resumable("mtt", {"images": images, "syn_lr": lr}, {"opt_img": opt_img, "opt_lr": opt_lr}, gens)
    if (saved := state.resume()) is not None:  # the rest of the run is what it would have been
        curves, guard.bad = Curves(CURVES, saved["curves"]), saved["bad"]
    advance = ctx.progress.task("distill (MTT)", p.iterations)
    advance(len(curves))

    for it in range(len(curves) + 1, p.iterations + 1):
        e = int(torch.randint(len(buffer.trajectories), (1,), generator=segment_gen))
        t = int(torch.randint(p.max_start_epoch, (1,), generator=segment_gen))
        start = {k: v.to(ctx.device) for k, v in buffer.trajectories[e][t].items()}
        target = {k: v.to(ctx.device) for k, v in buffer.trajectories[e][t + p.expert_epochs].items()}
        theta0 = {k: v.clone().requires_grad_(True) for k, v in start.items()}
        theta_n = student_unroll(model, theta0, images, labels, lr, p.syn_steps, p.batch_syn, ctx.augment, augment_gen)
        loss = mtt_loss(theta_n, start, target)
        problem = outer_step(loss, images, lr, opt_img, opt_lr, p.syn_lr_floor, float(syn_lr))

        guard.check(problem, f"iteration {it}")
        curves.add(
            iteration=it, loss=loss.item(), syn_lr=lr.item(), expert=e, start_epoch=t, skipped=int(problem is not None)
        )
        advance(1)
        if state.due(it, p.iterations):
            state.save(it, bad=guard.bad, curves=curves.columns)
    return SyntheticSet(images.detach().clone(), labels.clone(), lr.item(), ipc), curves


def outer_step(
    loss: torch.Tensor,
    images: torch.Tensor,
    syn_lr: torch.Tensor,
    opt_img: torch.optim.Optimizer,
    opt_lr: torch.optim.Optimizer,
    floor: float,
    start_lr: float,
) -> str | None:
    """One SGD step on S and alpha; returns what went wrong, or None.

    A step whose loss or gradients are not finite is skipped, blaming the outer lr of whichever grew: alpha (more
    than tenfold from `start_lr`: mtt.lr_lr) or else the images (mtt.lr_img); one that leaves alpha non-positive or
    non-finite (possible when `floor` is 0) or the images non-finite is rolled back to the state before it."""
    opt_img.zero_grad(set_to_none=True)
    opt_lr.zero_grad(set_to_none=True)
    loss.backward()
    if not finite(loss, images.grad, syn_lr.grad):
        alpha = float(syn_lr.detach())
        if abs(alpha) > 10 * abs(start_lr):
            return f"the MTT loss or its gradient is not finite with syn_lr grown to {alpha:.3g} (lower mtt.lr_lr)"
        return "the MTT loss or its gradient is not finite (images exploding: lower mtt.lr_img)"
    before = (
        images.detach().clone(),
        syn_lr.detach().clone(),
        [copy.deepcopy(o.state_dict()) for o in (opt_img, opt_lr)],
    )
    opt_img.step()
    opt_lr.step()
    if floor > 0:
        with torch.no_grad():
            syn_lr.clamp_(min=floor)  # keep alpha positive (the reference lets it go negative)
    if finite(syn_lr, images) and float(syn_lr.detach()) > 0:
        return None
    problem = (
        "the learned syn_lr went non-positive or non-finite (lower mtt.lr_lr, or set mtt.syn_lr_floor > 0)"
        if finite(images)
        else "the synthetic images became non-finite (lower mtt.lr_img)"
    )
    with torch.no_grad():  # roll back to the last good state
        images.copy_(before[0])
        syn_lr.copy_(before[1])
    for opt, sd in zip((opt_img, opt_lr), before[2], strict=True):
        opt.load_state_dict(sd)
    return problem
