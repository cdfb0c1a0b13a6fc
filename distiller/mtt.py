"""Matching Training Trajectories (MTT; Cazenavette et al., CVPR 2022, arXiv 2203.11932).

Symbols: S synthetic images, alpha the learnable student lr (`syn_lr`), N student steps (`syn_steps`), M expert
epochs between start and target (`expert_epochs`), T+ exclusive bound of the start epoch (`max_start_epoch`).

One iteration: draw an expert and t < T+; start a student at theta*_t; take N SGD steps on (augmented) minibatches
of S, keeping the graph; then minimise

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

w.r.t. S and alpha by backpropagating through all N steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distiller import models
from distiller._runtime import SILENT, Reporter, generator
from distiller.augment import dsa
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
    """Per-iteration records, for `dvc plots` and the resume logic."""

    iteration: list[int]
    loss: list[float]
    syn_lr: list[float]
    expert: list[int]
    start_epoch: list[int]

    def rows(self) -> list[dict[str, float | int]]:
        keys = ("iteration", "loss", "syn_lr", "expert", "start_epoch")
        return [dict(zip(keys, values, strict=True)) for values in zip(*(getattr(self, k) for k in keys), strict=True)]


def initial_images(data: Prepared, ipc: int, init: str, gen: torch.Generator) -> torch.Tensor:
    if init == "real":
        return real_subset(data, ipc, gen)[0]
    c, h, w = data.image_shape
    return torch.randn(data.num_classes * ipc, c, h, w, generator=gen).to(data.train_images.device)


def distill(
    data: Prepared,
    buffer: ExpertBuffer,
    p: Params,
    device: torch.device,
    progress: Reporter = SILENT,
    on_iteration: Callable[[int, SyntheticSet], None] | None = None,
) -> tuple[SyntheticSet, Curves]:
    """Run `mtt.iterations` MTT iterations and return the synthetic set with its curves."""
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
    augment = p.augment if p.augment.strategy != "none" else None
    curves = Curves([], [], [], [], [])
    advance = progress.task("distill (MTT)", m.iterations)

    for it in range(1, m.iterations + 1):
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
        opt_img.step()
        opt_lr.step()
        if m.syn_lr_floor > 0:
            with torch.no_grad():
                syn_lr.clamp_(min=m.syn_lr_floor)  # keep alpha positive (the reference lets it go negative)

        curves.iteration.append(it)
        curves.loss.append(loss.item())
        curves.syn_lr.append(syn_lr.item())
        curves.expert.append(e)
        curves.start_epoch.append(t)
        advance(1)
        if on_iteration is not None:
            on_iteration(it, _snapshot(images, labels, syn_lr, p.distill.ipc))
    return _snapshot(images, labels, syn_lr, p.distill.ipc), curves


def _snapshot(images: torch.Tensor, labels: torch.Tensor, syn_lr: torch.Tensor, ipc: int) -> SyntheticSet:
    return SyntheticSet(images=images.detach().clone(), labels=labels.clone(), lr=syn_lr.item(), ipc=ipc)
