"""Matching Training Trajectories (MTT; Cazenavette et al., CVPR 2022, arXiv 2203.11932).

Symbols: S synthetic images, alpha the learnable student lr (`syn_lr`), N student steps (`syn_steps`), M expert
epochs between start and target (`expert_epochs`), T+ exclusive bound of the start epoch (`max_start_epoch`).

One iteration: draw an expert and t < T+; start a student at theta*_t; take N SGD steps on (augmented) minibatches
of S, keeping the graph; then minimise

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

w.r.t. S and alpha by backpropagating through all N steps (`mtt.memory`: `full` keeps the graph of all N steps;
`checkpoint` and `tesla` keep one segment's, see `bounded_meta_gradient`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distiller.core.params import AugmentParams, MTTParams
from distiller.methods.buffer import ExpertBuffer
from distiller.methods.run import Context, Curves, Guard, finite
from distiller.methods.synthetic import SyntheticSet, class_major_labels, initial_images
from distiller.nets.augment import dsa

ParamDict = dict[str, torch.Tensor]
CURVES = ("iteration", "loss", "syn_lr", "expert", "start_epoch", "skipped")


def minibatches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless minibatch indices: a random permutation of range(n) cut into chunks, redrawn when used up."""
    batch_size = min(batch_size or n, n)
    while True:
        order = torch.randperm(n, generator=gen, device=gen.device)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def sgd_step(
    model: nn.Module,
    theta: ParamDict,
    images: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    idx: torch.Tensor,
    augment: AugmentParams | None,
    gen: torch.Generator,
    create_graph: bool = True,
) -> ParamDict:
    """theta - alpha * grad l(theta; DSA(S[idx])): one student step (differentiable w.r.t. S, alpha and theta when
    `create_graph`; otherwise a graph-free step of the same value)."""
    x = images[idx]
    if augment is not None:
        x = dsa(x, augment, gen)
    loss = F.cross_entropy(functional_call(model, theta, (x,)), labels[idx])
    grads = torch.autograd.grad(loss, list(theta.values()), create_graph=create_graph)
    return {name: p - syn_lr * g for (name, p), g in zip(theta.items(), grads, strict=True)}


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
        theta = sgd_step(model, theta, images, labels, syn_lr, next(batches).to(images.device), augment, gen)
    return theta


@dataclass(frozen=True)
class Student:
    """What the N student steps of one iteration train on: the network, S, its labels, alpha, DSA and its stream."""

    model: nn.Module
    images: torch.Tensor  # S, a leaf
    labels: torch.Tensor
    syn_lr: torch.Tensor  # alpha, a leaf
    augment: AugmentParams | None
    gen: torch.Generator  # minibatch orders and DSA draws


def meta_gradient(p: MTTParams, s: Student, start: ParamDict, target: ParamDict) -> torch.Tensor:
    """The MTT loss of one iteration from theta*_t (`start`); its gradient w.r.t. S and alpha is left in their `.grad`
    as `p.memory` computes it. Every mode draws the same minibatches and DSA parameters from `s.gen`."""
    if p.memory != "full":
        return bounded_meta_gradient(p, s, start, target)
    theta0 = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    theta_n = student_unroll(s.model, theta0, s.images, s.labels, s.syn_lr, p.syn_steps, p.batch_syn, s.augment, s.gen)
    loss = mtt_loss(theta_n, start, target)
    loss.backward()
    return loss


# ---------------------------------------------------------------------------------------------------------------------
# The meta-gradient in bounded memory (mtt.memory: checkpoint, tesla)
#
# Write the student step as theta_{i+1} = f_i(theta_i, S, alpha) = theta_i - alpha g_i and its adjoint as
# lambda_i = dL/dtheta_i: lambda_N = dL/dtheta_N and lambda_i = lambda_{i+1} (I - alpha H_i), H_i the Hessian of step
# i's loss. The exact gradient is dL/dS = sum_i lambda_{i+1} df_i/dS and dL/dalpha = -sum_i lambda_{i+1} . g_i.
# A graph-free pass computes theta_N and keeps the theta_i where segments start, every step's minibatch and the state
# of the generator before its DSA draw. Then, last segment first, each segment is rebuilt with its graph (the same
# draws, so the same values) and back-propagated from lambda at its end: its share of dL/dS and dL/dalpha, and lambda
# at its start. `checkpoint` does exactly that (memory: one segment's graph). TESLA (Cui et al., ICML 2023, arXiv
# 2211.10586) rebuilds every step alone and back-propagates lambda_N into each, i.e. uses lambda_N for every
# lambda_{i+1}: it keeps the terms through which S reaches theta_N by its own step's gradient, and drops those through
# the later steps' Hessians (lambda_N - lambda_{i+1} = lambda_N (I - prod_{j>i} (I - alpha H_j))). Exact for N = 1.


def segment_length(p: MTTParams) -> int:
    """Steps per rebuilt segment: 1 for tesla; for checkpoint, N / `p.segments` (0: about sqrt(N) segments)."""
    if p.memory == "tesla":
        return 1
    return math.ceil(p.syn_steps / (p.segments or max(1, round(math.sqrt(p.syn_steps)))))


def bounded_meta_gradient(p: MTTParams, s: Student, start: ParamDict, target: ParamDict) -> torch.Tensor:
    """`meta_gradient` for `checkpoint` and `tesla` (see the comment above); leaves `s.gen` as `full` would."""
    n, size, alpha = p.syn_steps, segment_length(p), s.syn_lr.detach()
    batches = minibatches(len(s.images), p.batch_syn, s.gen)
    theta, kept, draws = {k: v.detach() for k, v in start.items()}, {}, []
    for i in range(n):  # graph-free pass
        if i % size == 0:
            kept[i] = theta
        idx = next(batches).to(s.images.device)
        draws.append((idx, s.gen.get_state()))
        leaf = {k: v.requires_grad_(True) for k, v in theta.items()}
        step = sgd_step(s.model, leaf, s.images.detach(), s.labels, alpha, idx, s.augment, s.gen, create_graph=False)
        theta = {k: v.detach() for k, v in step.items()}
    after = s.gen.get_state()
    theta_n = {k: v.requires_grad_(True) for k, v in theta.items()}
    loss = mtt_loss(theta_n, start, target)
    lam = torch.autograd.grad(loss, list(theta_n.values()))  # lambda_N
    for first in sorted(kept, reverse=True):
        theta_first = {k: v.detach().requires_grad_(True) for k, v in kept[first].items()}
        out = theta_first
        for i in range(first, min(first + size, n)):
            s.gen.set_state(draws[i][1])
            out = sgd_step(s.model, out, s.images, s.labels, s.syn_lr, draws[i][0], s.augment, s.gen)
        exact = p.memory == "checkpoint"
        leaves = (s.images, s.syn_lr, *((s.labels,) if s.labels.requires_grad else ()))  # S, alpha, learned labels
        inputs = [*leaves, *(theta_first.values() if exact else ())]
        grads = torch.autograd.grad(list(out.values()), inputs, grad_outputs=lam)
        for leaf_, g in zip(leaves, grads[: len(leaves)], strict=True):
            leaf_.grad = g if leaf_.grad is None else leaf_.grad + g
        if exact:
            lam = grads[len(leaves) :]  # lambda at the segment's start
    s.gen.set_state(after)
    return loss.detach()


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
    hard = class_major_labels(ctx.data.num_classes, ipc).to(ctx.device)
    labels = F.one_hot(hard, ctx.data.num_classes).float().requires_grad_(True) if p.soft_labels else hard
    lr = torch.tensor(float(syn_lr), device=ctx.device).requires_grad_(True)
    opts = {
        "opt_img": torch.optim.SGD([images], lr=p.lr_img, momentum=p.momentum),
        "opt_lr": torch.optim.SGD([lr], lr=p.lr_lr, momentum=p.momentum),
        **({"opt_label": torch.optim.SGD([labels], lr=p.lr_label, momentum=p.momentum)} if p.soft_labels else {}),
    }
    model = ctx.network(ctx.generator("mtt-arch"))
    segment_gen, augment_gen = ctx.generator("mtt-segment"), ctx.generator("mtt-augment", on_device=True)
    curves, guard = Curves(CURVES), Guard(ctx.guard, "MTT")
    gens = {"segment": segment_gen, "augment": augment_gen}
    learned = {"images": images, "syn_lr": lr, **({"labels": labels} if p.soft_labels else {})}
    state = ctx.resumable("mtt", learned, opts, gens)
    if (saved := state.resume(p.iterations)) is not None:  # the rest of the run is what it would have been
        curves, guard.bad = Curves(CURVES, saved["curves"]), saved["bad"]
    advance = ctx.progress.task("distill (MTT)", p.iterations)
    advance(len(curves))

    for it in range(len(curves) + 1, p.iterations + 1):
        e = int(torch.randint(len(buffer.trajectories), (1,), generator=segment_gen))
        t = int(torch.randint(p.max_start_epoch, (1,), generator=segment_gen))
        start = {k: v.to(ctx.device) for k, v in buffer.trajectories[e][t].items()}
        target = {k: v.to(ctx.device) for k, v in buffer.trajectories[e][t + p.expert_epochs].items()}
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        loss = meta_gradient(p, Student(model, images, labels, lr, ctx.augment, augment_gen), start, target)
        problem = outer_step(loss, learned, list(opts.values()), p.syn_lr_floor, float(syn_lr))

        guard.check(problem, f"iteration {it}")
        curves.add(
            iteration=it, loss=loss.item(), syn_lr=lr.item(), expert=e, start_epoch=t, skipped=int(problem is not None)
        )
        advance(1)
        if state.due(it, p.iterations):
            state.save(it, bad=guard.bad, curves=curves.columns)
    guard.finish(curves["skipped"])
    soft = labels.detach().clone() if p.soft_labels else None
    return SyntheticSet(images.detach().clone(), hard.clone(), lr.item(), ipc, soft), curves


def outer_step(
    loss: torch.Tensor,
    learned: dict[str, torch.Tensor],
    opts: list[torch.optim.Optimizer],
    floor: float,
    start_lr: float,
) -> str | None:
    """One SGD step on S, alpha (and the labels when learned), whose gradients `meta_gradient` left in `.grad`;
    returns what went wrong, or None.

    A step whose loss or gradients are not finite is skipped, blaming the outer lr of whichever grew: alpha (more
    than tenfold from `start_lr`: mtt.lr_lr) or else the images (mtt.lr_img); one that leaves alpha non-positive or
    non-finite (possible when `floor` is 0) or the images non-finite is rolled back to the state before it. Learned
    labels stay label distributions' parts: non-negative."""
    images, syn_lr, labels = learned["images"], learned["syn_lr"], learned.get("labels")
    if not finite(loss, *(t.grad for t in learned.values())):
        alpha = float(syn_lr.detach())
        if abs(alpha) > 10 * abs(start_lr):
            return f"the MTT loss or its gradient is not finite with syn_lr grown to {alpha:.3g} (lower mtt.lr_lr)"
        return "the MTT loss or its gradient is not finite (images exploding: lower mtt.lr_img)"
    before = ({k: v.detach().clone() for k, v in learned.items()}, [copy.deepcopy(o.state_dict()) for o in opts])
    for opt in opts:
        opt.step()
    with torch.no_grad():
        if floor > 0:
            syn_lr.clamp_(min=floor)  # keep alpha positive (the reference lets it go negative)
        if labels is not None:
            labels.clamp_(min=0)
    if finite(*learned.values()) and float(syn_lr.detach()) > 0:
        return None
    problem = (
        "the learned syn_lr went non-positive or non-finite (lower mtt.lr_lr, or set mtt.syn_lr_floor > 0)"
        if finite(images, labels)
        else "the synthetic images or labels became non-finite (lower mtt.lr_img or mtt.lr_label)"
    )
    with torch.no_grad():  # roll back to the last good state
        for k, v in learned.items():
            v.copy_(before[0][k])
    for opt, sd in zip(opts, before[1], strict=True):
        opt.load_state_dict(sd)
    return problem
