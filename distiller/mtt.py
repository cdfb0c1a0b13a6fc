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
from collections.abc import Callable, Iterator
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
from distiller.experts import ExpertBuffer
from distiller.params import AugmentParams, Params
from distiller.synthetic import SyntheticSet, class_major_labels, real_subset

ParamDict = dict[str, torch.Tensor]


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


@dataclass
class Curves:
    """Per-iteration records, for `dvc plots` and the resume logic; `skipped` marks a guarded step (1)."""

    iteration: list[int]
    loss: list[float]
    syn_lr: list[float]
    expert: list[int]
    start_epoch: list[int]
    skipped: list[int]

    KEYS = ("iteration", "loss", "syn_lr", "expert", "start_epoch", "skipped")

    def rows(self) -> list[dict[str, float | int]]:
        return [dict(zip(self.KEYS, values, strict=True)) for values in zip(*self.columns(), strict=True)]

    def columns(self) -> list[list]:
        return [getattr(self, k) for k in self.KEYS]


def initial_images(data: Prepared, ipc: int, init: str, gen: torch.Generator) -> torch.Tensor:
    if init == "real":
        return real_subset(data, ipc, gen)[0]
    c, h, w = data.image_shape
    return torch.randn(data.num_classes * ipc, c, h, w, generator=gen).to(data.train_images.device)


def _finite(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def distill(
    data: Prepared,
    buffer: ExpertBuffer,
    p: Params,
    device: torch.device,
    progress: Reporter = SILENT,
    on_iteration: Callable[[int, SyntheticSet], None] | None = None,
    store: Store | None = None,
) -> tuple[SyntheticSet, Curves]:
    """Run `mtt.iterations` MTT iterations and return the synthetic set with its curves.

    Guarded: a step whose loss or gradients are not finite is skipped, and one that leaves syn_lr non-positive or
    non-finite (possible when `mtt.syn_lr_floor` is 0) or the images non-finite is rolled back; `guard.max_bad_steps`
    in a row stop the run. With `store`, the full state is checkpointed every `store.every` iterations and a matching
    checkpoint is resumed from, bitwise equal to an uninterrupted run on the CPU."""
    m = p.mtt
    images = initial_images(data, p.distill.ipc, m.init, generator(p.seed, "mtt-init"))
    images = images.to(device).requires_grad_(True)
    labels = class_major_labels(data.num_classes, p.distill.ipc).to(device)
    syn_lr = torch.tensor(float(p.expert.lr), device=device).requires_grad_(True)
    opt_img = torch.optim.SGD([images], lr=m.lr_img, momentum=m.momentum)
    opt_lr = torch.optim.SGD([syn_lr], lr=m.lr_lr, momentum=m.momentum)
    model = models.build_model(p.model, data.image_shape, data.num_classes, generator(p.seed, "mtt-arch"), device)
    segment_gen = generator(p.seed, "mtt-segment")
    augment_gen = generator(p.seed, "mtt-augment", device=device)
    gens = {"segment": segment_gen, "augment": augment_gen}
    augment = p.augment if p.augment.strategy != "none" else None
    curves = Curves([], [], [], [], [], [])
    advance = progress.task("distill (MTT)", m.iterations)
    first, bad = 1, 0

    saved = store.load("mtt") if store is not None else None
    if saved is not None:  # resume: every piece of state, so the rest of the run is what it would have been
        with torch.no_grad():
            images.copy_(saved.tensors["images"])
            syn_lr.copy_(saved.tensors["syn_lr"])
        ckpt.restore_optimizer("opt_img", opt_img, saved.tensors, saved.state["opt_img"])
        ckpt.restore_optimizer("opt_lr", opt_lr, saved.tensors, saved.state["opt_lr"])
        ckpt.restore_generators(gens, saved.tensors)
        curves = Curves(*saved.state["curves"])
        first, bad = saved.state["iteration"] + 1, saved.state["bad"]
        advance(first - 1)

    for it in range(first, m.iterations + 1):
        e = int(torch.randint(len(buffer.trajectories), (1,), generator=segment_gen))
        t = int(torch.randint(m.max_start_epoch, (1,), generator=segment_gen))
        trajectory = buffer.trajectories[e]
        start = {k: v.to(device) for k, v in trajectory[t].items()}
        target = {k: v.to(device) for k, v in trajectory[t + m.expert_epochs].items()}
        theta0 = {k: v.clone().requires_grad_(True) for k, v in start.items()}

        theta_n = student_unroll(model, theta0, images, labels, syn_lr, m.syn_steps, m.batch_syn, augment, augment_gen)
        loss = mtt_loss(theta_n, start, target)

        opt_img.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        loss.backward()
        problem = None
        if not _finite(loss, images.grad, syn_lr.grad):
            problem = "the MTT loss or its gradient is not finite (images exploding: lower mtt.lr_img)"
        else:
            before = _state(images, syn_lr, opt_img, opt_lr)
            opt_img.step()
            opt_lr.step()
            if m.syn_lr_floor > 0:
                with torch.no_grad():
                    syn_lr.clamp_(min=m.syn_lr_floor)  # keep alpha positive (the reference lets it go negative)
            if not (_finite(syn_lr, images) and float(syn_lr.detach()) > 0):
                _restore(before, images, syn_lr, opt_img, opt_lr)  # roll back to the last good state
                problem = (
                    "the learned syn_lr went non-positive or non-finite (lower mtt.lr_lr, or set mtt.syn_lr_floor > 0)"
                    if _finite(images)
                    else "the synthetic images became non-finite (lower mtt.lr_img)"
                )
        bad = bad + 1 if problem else 0
        if bad >= p.guard.max_bad_steps:
            raise DistillerError(f"MTT stopped at iteration {it}: {bad} bad steps in a row; {problem}")

        curves.iteration.append(it)
        curves.loss.append(loss.item())
        curves.syn_lr.append(syn_lr.item())
        curves.expert.append(e)
        curves.start_epoch.append(t)
        curves.skipped.append(int(problem is not None))
        advance(1)
        if store is not None and store.due(it) and it < m.iterations:
            _checkpoint(store, it, bad, images, syn_lr, opt_img, opt_lr, gens, curves)
        if on_iteration is not None:
            on_iteration(it, _snapshot(images, labels, syn_lr, p.distill.ipc))
    return _snapshot(images, labels, syn_lr, p.distill.ipc), curves


def _state(images: torch.Tensor, syn_lr: torch.Tensor, *opts: torch.optim.Optimizer) -> tuple:
    return images.detach().clone(), syn_lr.detach().clone(), [copy.deepcopy(o.state_dict()) for o in opts]


def _restore(state: tuple, images: torch.Tensor, syn_lr: torch.Tensor, *opts: torch.optim.Optimizer) -> None:
    x, lr, sds = state
    with torch.no_grad():
        images.copy_(x)
        syn_lr.copy_(lr)
    for o, sd in zip(opts, sds, strict=True):
        o.load_state_dict(sd)


def _checkpoint(
    store: Store,
    it: int,
    bad: int,
    images: torch.Tensor,
    syn_lr: torch.Tensor,
    opt_img: torch.optim.Optimizer,
    opt_lr: torch.optim.Optimizer,
    gens: dict[str, torch.Generator],
    curves: Curves,
) -> None:
    t_img, s_img = ckpt.optimizer_state("opt_img", opt_img)
    t_lr, s_lr = ckpt.optimizer_state("opt_lr", opt_lr)
    tensors = {"images": images, "syn_lr": syn_lr, **t_img, **t_lr, **ckpt.generator_states(gens)}
    state = {"iteration": it, "bad": bad, "opt_img": s_img, "opt_lr": s_lr, "curves": curves.columns()}
    store.save("mtt", tensors, state)


def _snapshot(images: torch.Tensor, labels: torch.Tensor, syn_lr: torch.Tensor, ipc: int) -> SyntheticSet:
    return SyntheticSet(images=images.detach().clone(), labels=labels.clone(), lr=syn_lr.item(), ipc=ipc)
