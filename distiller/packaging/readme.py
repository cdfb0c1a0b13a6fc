"""The README.md of a packaged folder, rendered from its card contract and the configs' `dataset_info` alone.

The YAML front matter carries the Hub's metadata (license, task, size, source, tags, name), `configs`, `dataset_info`
and the `distiller:` mapping; the body (templates/card.md) repeats the contract for people: a results table, the
image grid and a short training loop generated from the contract. Nothing else goes in, so card -> contract -> card
gives the same text (tested).
"""

from __future__ import annotations

from importlib import resources
from string import Template
from typing import Any

import torch

from distiller.nets import models
from distiller.packaging.card import BUDGETS_PNG, GRID, NORMALIZATION, SPLIT, ZCA, model_params
from distiller.packaging.contract import Contract, Result

PAPERS = {
    "mtt": ("Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022)", "2203.11932"),
    "ratbptt": (
        "Embarrassingly Simple Dataset Distillation (Feng, Vedantam & Kempe, ICLR 2024): RaT-BPTT and Boost-DD",
        "2311.07025",
    ),
}


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def render(c: Contract, infos: dict[str, Any]) -> str:
    """README.md: the card's YAML, then the body."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    ipc, (_, arxiv) = c.default.images_per_class, PAPERS[c.method]
    card = DatasetCardData(
        pretty_name=f"{c.source.title} distilled with {c.method.upper()}, {ipc} images per class",
        license=c.source.license,
        task_categories=["image-classification"],
        task_ids=["multi-class-image-classification"],
        size_categories=[size_category(c.default.rows)],
        source_datasets=[c.source.hub_id],
        tags=["dataset-distillation", "synthetic", "distiller", c.method, "image"]
        + (["boost-dd"] if c.boosted else [])
        + [f"arxiv:{arxiv}"],
        configs=[
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": f"{name}/train-*.parquet"}],
                **({"default": True} if name == c.default_config else {}),
            }
            for name in c.budgets
        ],
        distiller=c.to_dict(),
    )
    DatasetInfosDict(infos).to_dataset_card_data(card)
    preview = "image" in infos[c.default_config].features
    template = Template(resources.files("distiller.packaging").joinpath("templates/card.md").read_text())
    return f"---\n{card.to_yaml()}\n---\n\n{template.substitute(_fields(c, preview))}"


def _pct(r: Result | None) -> str:
    return "" if r is None else f"{100 * r.mean:.2f} +- {100 * r.std:.2f}"


def _fields(c: Contract, preview: bool) -> dict[str, str]:
    """The template's placeholders."""
    title, arxiv = PAPERS[c.method]
    arch, proto = c.protocol.architecture, c.protocol
    classes, shape = arch.num_classes, "x".join(map(str, arch.input_shape))
    aug = proto.augmentation
    aug_text = f"DSA `{aug.strategy}` ({aug.mode}: one family per minibatch, per-image parameters)" if aug else "none"
    nesting = {
        True: "One config per budget, nested: Boost-DD: every prefix was distilled to be good at its budget",
        False: "One config per budget, nested: the smaller configs are prefixes of one set distilled at the largest "
        "budget, not distilled for their own budget (compare the random-real column)",
    }[c.boosted]
    nesting += (
        f". The rows of `ipcK` are the first K x {classes} rows of every larger config; `block` tells which budget "
        "first includes a row."
    )
    git = f"git commit `{c.git_commit}`" + (" with local changes" if c.git_dirty else "") if c.git_commit else ""
    lock = f"dvc.lock sha256 `{c.dvc_lock_sha256}`" if c.dvc_lock_sha256 else "not run through dvc"
    return {
        "name": f"{c.source.name}-distilled-ipc{c.default.images_per_class}",
        "images": str(c.default.rows),
        "ipc": str(c.default.images_per_class),
        "classes": str(classes),
        "shape": shape,
        "source": c.source.name,
        "method": c.method.upper(),
        "paper": f"{title}, arXiv:{arxiv}",
        "distiller_version": c.distiller_version,
        "version": c.version,
        "provenance": f"{git or 'not made in a git checkout'}, {lock}{_experts(c)}",
        "nesting": nesting if len(c.budgets) > 1 else f"One config, `{c.default_config}`.",
        "runs": str(c.default.accuracy.runs),
        "test_count": str(c.source.test_split.count),
        "full_data": f" Full training set: {_pct(c.full_data)} %." if c.full_data else "",
        "results": _results(c),
        "cross_architecture": _cross_architecture(c),
        "grid": GRID,
        "budgets_figure": BUDGETS_PNG,
        "columns": _columns(c, preview),
        "preprocessing": _preprocessing(c),
        "test_images": f" The test images are the source's images at the indices in `{SPLIT}` (`test_indices`)."
        if c.source.test_split.file
        else "",
        "protocol": f"{_network(c)}; {proto.optimizer.upper()} (momentum {proto.momentum}, weight decay "
        f"{proto.weight_decay}), lr from `budgets.<config>.lr`, batch {proto.batch_size}, {proto.epochs} epochs, lr "
        f"schedule {proto.lr_schedule}; augmentation while training: {aug_text}, parameters in "
        "`distiller.protocol.augmentation`.",
        "snippet": snippet(c),
        "citation": f"{title}, https://arxiv.org/abs/{arxiv}",
    }


def _temperature(t: float | None) -> str:
    return "temperature not stated" if t is None else f"temperature {t:g}"


def _experts(c: Contract) -> str:
    e = c.experts
    return "" if e is None else f", MTT experts from `hf:{e.repo}` at commit `{e.commit}` (asked: `{e.revision}`)"


def _results(c: Contract) -> str:
    refs = [r for r in ("direct", "naive_subset") if any(getattr(b, r) is not None for b in c.budgets.values())]
    head = "| config | images per class | rows | accuracy (%) | random real (%) |"
    lines = [head + "".join(f" {r.replace('_', ' ')} (%) |" for r in refs), "|" + "---|" * (5 + len(refs))]
    for name, b in c.budgets.items():
        row = f"| `{name}` | {b.images_per_class} | {b.rows} | {_pct(b.accuracy)} | {_pct(b.random_real)} |"
        lines.append(row + "".join(f" {_pct(getattr(b, r))} |" for r in refs))
    if c.ddranking is not None:
        d = c.ddranking
        lines += [
            "",
            f"DD-Ranking's fair scores of `{c.default_config}` (arXiv 2505.13300; weight {d.weight}): label-robust "
            f"score **{d.lrs.mean:.4f} +- {d.lrs.std:.4f}**, augmentation-robust score **{d.ars.mean:.4f} +- "
            f"{d.ars.std:.4f}** (hard-label recovery {100 * d.hlr.mean:.2f} points, improvement over random "
            f"{100 * d.ior.mean:.2f} points)."
            + (
                f" The random subset trained on soft labels too: the softmax ({_temperature(d.temperature)}) of a "
                "teacher trained on the full data."
                if d.random_labels == "teacher"
                else ""
            ),
        ]
    return "\n".join(lines) + "\n"


def _cross_architecture(c: Contract) -> str:
    """The table of MTT's cross-architecture evaluation, when the set was scored on more than one network."""
    cross, main = c.cross_architecture or {}, c.protocol.architecture.arch
    if len(cross) < 2:
        return ""
    rows = [f"| {a}{' (distillation)' if a == main else ''} | {_pct(r)} |" for a, r in cross.items()]
    intro = (
        f"The default config `{c.default_config}`, distilled on the {main}, trained on other networks with the same "
        "protocol and seeds (their definitions are in `distiller.protocol.architectures`)."
    )
    return "\n".join(
        ["### Cross-architecture", "", intro, "", "| architecture | accuracy (%) |", "|---|---|", *rows, ""]
    )


def _columns(c: Contract, preview: bool) -> str:
    lines = [
        "- `pixel_values`: float32 (C, H, W), the exact distilled tensors, already preprocessed (see below). Train on "
        "these.",
        "- `label`: the class (`ClassLabel` with the real class names).",
    ]
    if c.labels.train_on == "soft_label":
        lines.append("- `soft_label`: the learned label distribution; train with cross-entropy against it.")
    lines.append("- `block`: index of the budget block the row belongs to.")
    if preview:
        lines.append(
            "- `image`: an 8-bit preview for the viewer (preprocessing undone, clipped): lossy, not for training."
        )
    return "\n".join(lines)


def _preprocessing(c: Contract) -> str:
    pre = c.preprocessing
    if pre.kind == "zca":
        how = (
            f"then ZCA whitening (MTT's variant, eps {pre.eps}, fitted on the training images): flatten each image to "
            f"C*H*W values and compute `(x - mean) @ matrix` with the tensors in `{ZCA}` (its `inverse` maps "
            "pixel_values back to pixels: `z @ inverse + mean`)"
        )
    else:
        mean, std = list(pre.mean or ()), list(pre.std or ())
        how = f"then `(x - mean) / std` with mean {mean} and std {std} (also in `{NORMALIZATION}`)"
    resized = f"{pre.resize}, " if pre.resize else ""
    return (
        f"Preprocessing: pixels scaled to [0, 1] ({pre.pixel_scale}), {resized}{how}; put real test images through "
        "the same transform."
    )


def _network(c: Contract) -> str:
    a = c.protocol.architecture
    if a.arch != "convnet":
        return f"{a.arch}: {a.definition}"
    padding = f", first conv padded by {a.first_padding} (the others by 1)" if a.first_padding != 1 else ""
    return f"{a.arch} depth {a.depth}, width {a.width}, {a.norm}, {a.pooling}{padding}"


def snippet(c: Contract) -> str:
    """A short training loop that uses only `datasets`, `torch` and the contract."""
    arch, proto, budget = c.protocol.architecture, c.protocol, c.default
    with torch.device("meta"):  # only its shapes are read
        convnet = models.ConvNet(model_params(c.method_params.get("model")), arch.input_shape, arch.num_classes)
    pad = "1" if arch.first_padding == 1 else f"{arch.first_padding} if d == 0 else 1"
    pool = "nn.AvgPool2d(2)" if arch.pooling == "avgpool" else "nn.MaxPool2d(2)"
    norm = f"nn.GroupNorm({arch.width}, {arch.width}), " if arch.norm.startswith("instancenorm") else ""
    decay = [proto.epochs // 2] if "x0.1" in proto.lr_schedule else []
    return "\n".join(
        [
            "import torch, torch.nn as nn, torch.nn.functional as F",
            "from datasets import load_dataset",
            f'ds = load_dataset("<org>/{c.source.name}-distilled-ipc{budget.images_per_class}", "{c.default_config}", '
            'split="train")',
            f'cols = ds.with_format("torch")[:]; x, y = cols["pixel_values"], cols["{c.labels.train_on}"]',
            f"layers, c = [], {arch.input_shape[0]}",
            f"for d in range({arch.depth}):",
            f"    layers += [nn.Conv2d(c, {arch.width}, 3, padding={pad}), {norm}nn.ReLU(), {pool}]",
            f"    c = {arch.width}",
            f"net = nn.Sequential(*layers, nn.Flatten(), nn.Linear({convnet.classifier.in_features}, "
            f"{arch.num_classes}))",
            f"opt = torch.optim.SGD(net.parameters(), lr={budget.lr:.6g}, momentum={proto.momentum}, "
            f"weight_decay={proto.weight_decay})",
            f"sched = torch.optim.lr_scheduler.MultiStepLR(opt, {decay}, 0.1)",
            f"for epoch in range({proto.epochs}):  # the card's accuracy also applies its DSA augmentation here",
            f"    for i in torch.randperm(len(x)).split({proto.batch_size}):",
            "        opt.zero_grad(); F.cross_entropy(net(x[i]), y[i]).backward(); opt.step()",
            "    sched.step()",
        ]
    )
