"""The dataset card of a packaged folder: the `distiller:` contract mapping and the README.md around it.

The card's YAML carries the Hub metadata (license, task, size, source, tags, name, `configs`, `dataset_info`) and one
`distiller:` mapping with everything a consumer needs to reproduce the accuracy without distiller's code (the card
contract of ecosystem.md section 8): version and provenance, method and params, source and test split,
preprocessing, label type, evaluation protocol and the measured accuracy of every budget beside its references. The
body repeats it for people: a results table, the image grid and a short training loop.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from distiller import __version__, models, synthetic
from distiller._runtime import DistillerError, git, git_commit
from distiller.data import Prepared, load_prepared
from distiller.params import Params
from distiller.paths import Layout
from distiller.sources import describe
from distiller.synthetic import SyntheticSet

SHARD = "train-00000-of-00001.parquet"
NORMALIZATION = "preprocessing/normalization.safetensors"
ZCA = "preprocessing/zca.safetensors"
SPLIT = "preprocessing/split.safetensors"
GRID = "images/grid.png"
BUDGETS_PNG = "images/budgets.png"

PAPERS = {
    "mtt": ("Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022)", "2203.11932"),
    "ratbptt": (
        "Embarrassingly Simple Dataset Distillation (Feng, Vedantam & Kempe, ICLR 2024): RaT-BPTT and Boost-DD",
        "2311.07025",
    ),
}


def config_name(budget: int) -> str:
    return f"ipc{budget}"


@dataclass(frozen=True)
class Inputs:
    """What the stage reads: prepared data, the synthetic set and its provenance, the evaluation metrics."""

    data: Prepared
    syn: SyntheticSet
    provenance: dict[str, Any]
    metrics: dict[str, Any]


def read_inputs(p: Params, layout: Layout) -> Inputs:
    data = load_prepared(layout.prepared)
    syn, prov = synthetic.load(layout.synthetic)
    if not layout.evaluate_metrics.is_file():
        raise DistillerError(f"evaluation metrics not found: {layout.evaluate_metrics} (run `distiller evaluate`)")
    try:
        metrics = json.loads(layout.evaluate_metrics.read_text())
    except json.JSONDecodeError:
        raise DistillerError(f"{layout.evaluate_metrics}: not valid JSON; re-run `distiller evaluate`") from None
    if prov.get("dataset_hash") != data.content_hash:
        raise DistillerError(f"{layout.synthetic} was distilled from other data than {layout.prepared}; re-run distill")
    budgets = syn.budgets or (syn.ipc,)
    if metrics.get("ipc") != syn.ipc or sorted(metrics.get("budgets", {}), key=int) != [str(b) for b in budgets]:
        raise DistillerError(
            f"{layout.evaluate_metrics} does not describe {layout.synthetic} (other ipc or budgets); re-run evaluate"
        )
    if syn.ipc != p.distill.ipc or data.source != p.data.source:
        raise DistillerError(
            f"{layout.synthetic} holds {data.source} at ipc {syn.ipc}, but params say {p.data.source} at "
            f"distill.ipc {p.distill.ipc}; re-run the pipeline"
        )
    return Inputs(data, syn, prov, metrics)


# ---------------------------------------------------------------------------------------------------------------------
# provenance


def dvc_lock_sha256(path: Path) -> str | None:
    """sha256 of the canonical JSON of dvc.lock's entries for the stages upstream of `package` (the run that made
    the data: dvc writes each stage's entry as it completes, before the next stage starts). None without a lock."""
    if not path.is_file():
        return None
    lock = yaml.safe_load(path.read_text()) or {}
    stages = {k: v for k, v in (lock.get("stages") or {}).items() if k != "package"}
    return hashlib.sha256(json.dumps(stages, sort_keys=True).encode()).hexdigest() if stages else None


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it, ignoring dvc.lock which every run rewrites)."""
    commit = git_commit(root)
    if commit is None:
        return None, None
    status = git(root, "status", "--porcelain", "--untracked-files=no") or ""
    dirty = any(line[3:].strip() != "dvc.lock" for line in status.splitlines() if line.strip())
    return commit, dirty


def _result(r: dict[str, Any]) -> dict[str, Any]:
    return {"mean": r["mean"], "std": r["std"], "runs": len(r["runs"]), "values": r["runs"]}


def card_metadata(p: Params, inp: Inputs, layout: Layout) -> dict[str, Any]:
    """The `distiller:` mapping of the card (ecosystem.md section 8): everything needed to reproduce the accuracy."""
    data, syn, m = inp.data, inp.syn, inp.metrics
    method = str(inp.provenance.get("method"))
    params = inp.provenance.get("params", {})
    proto = m["protocol"]
    lr = syn.lr if proto["name"] == "mtt" and syn.lr is not None else proto["real_lr"]
    commit, dirty = git_state(layout.root)
    per_budget: dict[str, Any] = {}
    for b, row in m["budgets"].items():
        main = "boosted" if "boosted" in row else "distilled"
        entry: dict[str, Any] = {
            "images_per_class": int(b),
            "rows": int(b) * data.num_classes,
            "lr": lr,
            "accuracy": _result(row[main]),
            "random_real": _result(row["random_real"]),
        }
        for ref in ("direct", "naive_subset"):
            if ref in row:
                entry[ref] = _result(row[ref])
        per_budget[config_name(int(b))] = entry
    # MTT's cross-architecture evaluation: the largest budget trained on other networks, same protocol and seeds
    archs: dict[str, Any] = m.get("architectures", {})
    cross = {a: _result(r) for a, r in archs.items()} if list(archs) != [proto["architecture"]["arch"]] else {}
    described = {
        a: proto["architecture"]
        if a == proto["architecture"]["arch"]
        else models.describe(
            dataclasses.replace(_model_params(params.get("model")), arch=a), data.image_shape, data.num_classes
        )
        for a in cross
    }
    section = {"mtt": ("distill", "mtt", "expert"), "ratbptt": ("distill", "ratbptt", "boost")}.get(method, ())
    source = describe(data.source, layout.root)
    src: dict[str, Any] = {
        "name": data.source,
        "hub_id": source.get("hub_id", data.source),
        "hash": data.content_hash,
        "license": data.license,
        "loader": source.get("loader"),
    }
    if len(data.test_indices):
        src["test_split"] = {
            "kind": "indices",
            "file": SPLIT,
            "tensor": "test_indices",
            "count": len(data.test_indices),
            "note": "indices into the source's own order; train on this package, test on these real images",
        }
    else:
        src["test_split"] = {"kind": "canonical", "split": "test", "count": len(data.test_labels)}
    return {
        "version": p.package.version,
        "git_commit": commit,
        "git_dirty": dirty,
        "dvc_lock_sha256": dvc_lock_sha256(layout.dvc_lock),
        "distiller_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "method": method,
        "nested": "boosted (Boost-DD)" if method == "ratbptt" and len(per_budget) > 1 else "prefixes (not boosted)",
        "method_params": {
            "seed": params.get("seed"),
            **{k: params.get(k) for k in section},
            "model": params.get("model"),
            "augment": params.get("augment"),
        },
        "source": src,
        "preprocessing": _preprocessing(data),
        "labels": {
            "train_on": "soft_label" if syn.soft_labels is not None else "label",
            "note": "soft_label rows are learned label distributions: train with cross-entropy against them"
            if syn.soft_labels is not None
            else "hard labels",
        },
        "protocol": {**proto, "num_runs": proto["num_eval"], **({"architectures": described} if cross else {})},
        "budgets": per_budget,
        **({"cross_architecture": cross} if cross else {}),
        "default_config": config_name(syn.ipc),
        "full_data": _result(m["baselines"]["full_data"]) if "full_data" in m.get("baselines", {}) else None,
    }


def _preprocessing(data: Prepared) -> dict[str, Any]:
    """How real images reach the space of pixel_values: per-channel normalisation, or MTT's ZCA whitening."""
    if data.preprocess == "zca":
        return {
            "kind": "zca",
            "pixel_scale": data.pixel_scale,
            "eps": data.zca_eps,
            "variant": "MTT: kornia.enhance.ZCAWhitening(eps, compute_inv=True) fitted on the training images in "
            "[0, 1], flattened to C*H*W",
            "file": ZCA,
            "stored": "pixel_values are already whitened; flatten real images in [0, 1] to C*H*W and compute "
            "(x - mean) @ matrix with the sidecar's tensors (back to pixels: z @ inverse + mean)",
        }
    return {
        "kind": "normalize",
        "pixel_scale": data.pixel_scale,
        "mean": [round(float(v), 8) for v in data.mean],
        "std": [round(float(v), 8) for v in data.std],
        "file": NORMALIZATION,
        "stored": "pixel_values are already normalised; put real images in [0, 1] through (x - mean) / std",
    }


# ---------------------------------------------------------------------------------------------------------------------
# the card


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def card_text(p: Params, inp: Inputs, meta: dict[str, Any], infos: dict[str, Any]) -> str:
    """README.md: valid card YAML (configs, dataset_info and the `distiller:` mapping composed in one place, so a
    regenerated card never loses any of them) followed by the human section."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    data, syn = inp.data, inp.syn
    budgets = syn.budgets or (syn.ipc,)
    method = meta["method"]
    name = f"{data.source}-distilled-ipc{syn.ipc}"
    title, arxiv = PAPERS.get(method, (method, ""))
    card = DatasetCardData(
        pretty_name=f"{describe(data.source).get('title', data.source)} distilled with {method.upper()}, "
        f"{syn.ipc} images per class",
        license=data.license,
        task_categories=["image-classification"],
        task_ids=["multi-class-image-classification"],
        size_categories=[size_category(len(syn.labels))],
        source_datasets=[meta["source"]["hub_id"]],
        tags=["dataset-distillation", "synthetic", "distiller", method, "image"]
        + (["boost-dd"] if meta["nested"].startswith("boosted") else [])
        + ([f"arxiv:{arxiv}"] if arxiv else []),
        configs=[
            {
                "config_name": config_name(b),
                "data_files": [{"split": "train", "path": f"{config_name(b)}/train-*.parquet"}],
                **({"default": True} if b == syn.ipc else {}),
            }
            for b in budgets
        ],
        distiller=meta,
    )
    DatasetInfosDict(infos).to_dataset_card_data(card)
    return f"---\n{card.to_yaml()}\n---\n\n{card_body(name, inp, meta, title, arxiv, p.package.preview)}"


def _pct(r: dict[str, Any] | None) -> str:
    return "" if r is None else f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}"


def card_body(name: str, inp: Inputs, meta: dict[str, Any], title: str, arxiv: str, preview: bool) -> str:
    data, syn = inp.data, inp.syn
    proto = meta["protocol"]
    budgets = meta["budgets"]
    refs = [r for r in ("direct", "naive_subset") if any(r in e for e in budgets.values())]
    head = "| config | images per class | rows | accuracy (%) | random real (%) |" + "".join(
        f" {r.replace('_', ' ')} (%) |" for r in refs
    )
    lines = [head, "|" + "---|" * (5 + len(refs))]
    for cfg, e in budgets.items():
        lines.append(
            f"| `{cfg}` | {e['images_per_class']} | {e['rows']} | {_pct(e['accuracy'])} | {_pct(e['random_real'])} |"
            + "".join(f" {_pct(e.get(r))} |" for r in refs)
        )
    runs = next(iter(budgets.values()))["accuracy"]["runs"]
    full = meta.get("full_data")
    aug = proto.get("augmentation")
    aug_text = (
        f"DSA `{aug['strategy']}` ({aug['mode']}: one family per minibatch, per-image parameters)" if aug else "none"
    )
    nested = (
        "Boost-DD: every prefix was distilled to be good at its budget"
        if meta["nested"].startswith("boosted")
        else "the smaller configs are prefixes of one set distilled at the largest budget, not distilled for "
        "their own budget (compare the random-real column)"
    )
    return "\n".join(
        [
            f"# {name}",
            "",
            f"{len(syn.labels)} synthetic images ({syn.ipc} per class, {data.num_classes} classes, "
            f"{'x'.join(map(str, data.image_shape))} as C x H x W) distilled from {meta['source']['name']} with "
            f"**{meta['method'].upper()}** ({title}{f', arXiv:{arxiv}' if arxiv else ''}). Training a fresh network "
            f"on them reaches the accuracy below on the real test images. Made by "
            f"distiller {meta['distiller_version']}; dataset version **{meta['version']}**, {_provenance(meta)}.",
            "",
            f"One config per budget, nested: {nested}. The rows of `ipcK` are the first K x {data.num_classes} rows "
            f"of every larger config; `block` tells which budget first includes a row.",
            "",
            "## Results",
            "",
            f"Test accuracy, mean +- std (population) over {runs} networks trained from scratch on each set, on "
            f"{meta['source']['test_split']['count']} held-out real images. Random real: the same number of real "
            "training images per class, same protocol and seeds."
            + (f" Full training set: {_pct(full)} %." if full else ""),
            "",
            *lines,
            "",
            *_cross_architecture(meta),
            f"![the distilled images, one row per class]({GRID})",
            "",
            "## Columns",
            "",
            "- `pixel_values`: float32 (C, H, W), the exact distilled tensors, already preprocessed (see below). Train "
            "on these.",
            "- `label`: the class (`ClassLabel` with the real class names).",
            *(
                ["- `soft_label`: the learned label distribution; train with cross-entropy against it."]
                if syn.soft_labels is not None
                else []
            ),
            "- `block`: index of the budget block the row belongs to.",
            *(
                ["- `image`: an 8-bit preview for the viewer (preprocessing undone, clipped): lossy, not for training."]
                if preview
                else []
            ),
            "",
            "## Reproducing the accuracy",
            "",
            f"Everything is in the `distiller:` mapping of this card's YAML. {_preprocessing_text(meta)}"
            + (
                f" The test images are the source's images at the indices in `{SPLIT}` (`test_indices`)."
                if "file" in meta["source"]["test_split"]
                else ""
            ),
            "",
            f"Protocol: {proto['architecture']['arch']} depth {proto['architecture']['depth']}, width "
            f"{proto['architecture']['width']}, {proto['architecture']['norm']}, {proto['architecture']['pooling']}; "
            f"{proto['optimizer'].upper()} (momentum {proto['momentum']}, weight decay {proto['weight_decay']}), "
            f"lr from `budgets.<config>.lr`, batch {proto['batch_size']}, {proto['epochs']} epochs, lr schedule "
            f"{proto['lr_schedule']}; augmentation while training: {aug_text}, parameters in "
            "`distiller.protocol.augmentation`.",
            "",
            "```python",
            snippet(inp, meta),
            "```",
            "",
            "## Citation",
            "",
            f"The method: {title}" + (f", https://arxiv.org/abs/{arxiv}" if arxiv else "") + ".",
            "",
        ]
    )


def _cross_architecture(meta: dict[str, Any]) -> list[str]:
    """The table of MTT's cross-architecture evaluation, when the set was scored on more than one network."""
    cross = meta.get("cross_architecture", {})
    if len(cross) < 2:
        return []
    main = meta["protocol"]["architecture"]["arch"]
    return [
        "### Cross-architecture",
        "",
        f"The default config `{meta['default_config']}`, distilled on the {main}, trained on other networks with the "
        "same protocol and seeds (their definitions are in `distiller.protocol.architectures`).",
        "",
        "| architecture | accuracy (%) |",
        "|---|---|",
        *(f"| {a}{' (distillation)' if a == main else ''} | {_pct(r)} |" for a, r in cross.items()),
        "",
    ]


def _preprocessing_text(meta: dict[str, Any]) -> str:
    pre = meta["preprocessing"]
    if pre["kind"] == "zca":
        how = (
            f"then ZCA whitening (MTT's variant, eps {pre['eps']}, fitted on the training images): flatten each image "
            f"to C*H*W values and compute `(x - mean) @ matrix` with the tensors in `{ZCA}` (its `inverse` maps "
            "pixel_values back to pixels: `z @ inverse + mean`)"
        )
    else:
        how = f"then `(x - mean) / std` with mean {pre['mean']} and std {pre['std']} (also in `{NORMALIZATION}`)"
    return (
        f"Preprocessing: pixels scaled to [0, 1] ({pre['pixel_scale']}), {how}; put real test images through the "
        "same transform."
    )


def _provenance(meta: dict[str, Any]) -> str:
    git = (
        f"git commit `{meta['git_commit']}`" + (" with local changes" if meta["git_dirty"] else "")
        if meta["git_commit"]
        else "not made in a git checkout"
    )
    lock = f"dvc.lock sha256 `{meta['dvc_lock_sha256']}`" if meta["dvc_lock_sha256"] else "not run through dvc"
    return f"{git}, {lock}"


def snippet(inp: Inputs, meta: dict[str, Any]) -> str:
    """A short training loop that uses only `datasets`, `torch` and the card."""
    data = inp.data
    arch = meta["protocol"]["architecture"]
    proto = meta["protocol"]
    cfg = meta["default_config"]
    lr = meta["budgets"][cfg]["lr"]
    target = meta["labels"]["train_on"]
    model_p = _model_params(meta["method_params"].get("model"))
    convnet = models.ConvNet(model_p, data.image_shape, data.num_classes)
    first_conv = convnet.features[0]
    assert isinstance(first_conv, torch.nn.Conv2d)
    pad0 = first_conv.padding[0]
    pad = "1" if pad0 == 1 else f"{pad0} if d == 0 else 1"
    pool = "nn.AvgPool2d(2)" if arch["pooling"] == "avgpool" else "nn.MaxPool2d(2)"
    norm = f"nn.GroupNorm({arch['width']}, {arch['width']}), " if arch["norm"].startswith("instancenorm") else ""
    decay = [proto["epochs"] // 2] if "x0.1" in proto["lr_schedule"] else []
    return "\n".join(
        [
            "import torch, torch.nn as nn, torch.nn.functional as F",
            "from datasets import load_dataset",
            f'ds = load_dataset("<org>/{data.source}-distilled-ipc{inp.syn.ipc}", "{cfg}", split="train")',
            f'cols = ds.with_format("torch")[:]; x, y = cols["pixel_values"], cols["{target}"]',
            f"layers, c = [], {data.image_shape[0]}",
            f"for d in range({arch['depth']}):",
            f"    layers += [nn.Conv2d(c, {arch['width']}, 3, padding={pad}), {norm}nn.ReLU(), {pool}]",
            f"    c = {arch['width']}",
            f"net = nn.Sequential(*layers, nn.Flatten(), nn.Linear({convnet.classifier.in_features}, "
            f"{data.num_classes}))",
            f"opt = torch.optim.SGD(net.parameters(), lr={lr:.6g}, momentum={proto['momentum']}, "
            f"weight_decay={proto['weight_decay']})",
            f"sched = torch.optim.lr_scheduler.MultiStepLR(opt, {decay}, 0.1)",
            f"for epoch in range({proto['epochs']}):  # the card's accuracy also applies its DSA augmentation here",
            f"    for i in torch.randperm(len(x)).split({proto['batch_size']}):",
            "        opt.zero_grad(); F.cross_entropy(net(x[i]), y[i]).backward(); opt.step()",
            "    sched.step()",
        ]
    )


def _model_params(raw: dict[str, Any] | None) -> Any:
    from distiller.params import ModelParams, params_from_dict

    return params_from_dict({"model": raw}).model if raw else ModelParams()
