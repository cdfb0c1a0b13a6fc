"""The card contract of a packaged folder, built from the pipeline's outputs.

`read_inputs` loads and cross-checks what the package stage packages (the prepared data, the synthetic set, the
evaluation metrics); `build` turns them into a `Contract`, provenance included. `distiller.packaging.readme` renders the
card's text from the contract alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distiller import __version__
from distiller.core import config
from distiller.core.errors import DistillerError, first_line
from distiller.core.files import read_sealed_json
from distiller.core.params import ModelParams, Params, params_from_dict, to_dict
from distiller.core.paths import Layout
from distiller.core.provenance import dvc_lock_sha256, git_state
from distiller.data.catalog import describe
from distiller.data.prepared import Prepared, load_prepared
from distiller.methods import synthetic
from distiller.methods.synthetic import SyntheticSet
from distiller.nets import models
from distiller.packaging import network
from distiller.packaging.contract import (
    Budget,
    Contract,
    EvalSplit,
    FairScores,
    FetchedExperts,
    Labels,
    Preprocessing,
    Protocol,
    Result,
    Source,
)

SHARD = "train-00000-of-00001.parquet"
NORMALIZATION = "preprocessing/normalization.safetensors"
ZCA = "preprocessing/zca.safetensors"
SPLIT = "preprocessing/split.safetensors"
GRID = "images/grid.png"
BUDGETS_PNG = "images/budgets.png"


def config_name(budget: int) -> str:
    return f"ipc{budget}"


@dataclass(frozen=True)
class Inputs:
    """What the package stage reads: prepared data, the synthetic set and its provenance, the evaluation metrics."""

    data: Prepared
    syn: SyntheticSet
    provenance: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def budgets(self) -> tuple[int, ...]:
        """The budgets the evaluation scored, which become the configs."""
        return tuple(sorted(int(b) for b in self.metrics["budgets"]))


def read_inputs(p: Params, layout: Layout) -> Inputs:
    data = load_prepared(layout.prepared, p.data)
    if data.held_out != "test":
        raise DistillerError(
            f"{layout.prepared}: scored on a validation split (data.validation), for tuning; package a run with "
            "data.validation: 0, scored on the test split"
        )
    syn, prov = synthetic.load(layout.synthetic, data)
    metrics = read_sealed_json(layout.evaluate_metrics, "evaluation metrics", "re-run `distiller evaluate`")
    if prov.get("dataset_hash") != data.content_hash:
        raise DistillerError(f"{layout.synthetic} was distilled from other data than {layout.prepared}; re-run distill")
    if metrics.get("synthetic_hash") != synthetic.content_hash(syn):
        raise DistillerError(f"{layout.evaluate_metrics} describes another set than {layout.synthetic}; rerun evaluate")
    with _metrics_errors(layout):
        scored = sorted(int(b) for b in metrics.get("budgets", {}))
    if metrics.get("ipc") != syn.ipc or not scored or scored[-1] != syn.ipc or set(scored) - set(syn.budgets or ()):
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
# the contract


def checked(p: Params, inp: Inputs, layout: Layout) -> Contract:
    """`build`, then read back as a card is read (`Contract.from_dict`: every type and range) and held to `validate`'s
    checks of its results (`Contract.check_results`: each mean and std those of its runs) and of its networks
    (`network.check`), so the package stage never writes a card its own `validate` would refuse; metrics that do not
    build one are named."""
    with _metrics_errors(layout):
        contract = Contract.from_dict(build(p, inp, layout).to_dict(), where=str(layout.evaluate_metrics))
    contract.check_results(str(layout.evaluate_metrics))
    network.check(contract, layout.evaluate_metrics)
    return contract


@contextlib.contextmanager
def _metrics_errors(layout: Layout) -> Iterator[None]:
    """Metrics of the wrong shape (sealed, so written or forged on purpose) are one line naming the file."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise DistillerError(
            f"{layout.evaluate_metrics}: not the metrics distiller writes ({first_line(e)}); re-run evaluate"
        ) from None


def build(p: Params, inp: Inputs, layout: Layout) -> Contract:
    """The `distiller:` mapping: everything needed to reproduce the accuracy."""
    data, m = inp.data, inp.metrics
    method = str(inp.provenance.get("method"))
    params = to_dict(params_from_dict(inp.provenance.get("params", {})))  # in the schema's order, checked
    proto = {**m["protocol"], "architecture": rebuildable(m["protocol"]["architecture"])}
    lr = inp.syn.lr if proto["name"] == "mtt" and inp.syn.lr is not None else proto["real_lr"]
    budgets = {config_name(int(b)): _budget(int(b), row, data.num_classes, lr) for b, row in m["budgets"].items()}
    commit, dirty = git_state(layout.root)
    section = {"mtt": ("distill", "mtt", "expert"), "ratbptt": ("distill", "ratbptt", "boost")}[method]
    boosted = method == "ratbptt" and len(budgets) > 1
    cross = _cross_architecture(m, proto, data, params.get("model"))
    soft = inp.syn.soft_labels is not None
    return Contract(
        version=p.package.version,
        git_commit=commit,
        git_dirty=dirty,
        dvc_lock_sha256=dvc_lock_sha256(layout.dvc_lock),
        distiller_version=__version__,
        method=method,  # type: ignore[arg-type]
        nested="boosted (Boost-DD)" if boosted else "prefixes (not boosted)" if len(budgets) > 1 else "one config",
        method_params={
            "seed": params.get("seed"),
            **{k: params.get(k) for k in section},
            "model": params.get("model"),
            "augment": params.get("augment"),
        },
        source=_source(data, layout.root),
        preprocessing=dataclasses.replace(_preprocessing(data), resize=_resize(data, p.data.resolution)),
        labels=Labels("soft_label", SOFT_NOTE) if soft else Labels("label", "hard labels"),
        protocol=_protocol(proto, cross),
        budgets=budgets,
        default_config=config_name(inp.syn.ipc),
        cross_architecture={a: Result.of(r) for a, r in m["architectures"].items()} if cross else None,
        full_data=Result.of(m["baselines"]["full_data"]) if "full_data" in m["baselines"] else None,
        ddranking=config.build(FairScores, m["ddranking"], where="metrics/evaluate.json", prefix="ddranking")
        if "ddranking" in m
        else None,
        experts=_fetched(inp.provenance, layout),
    )


def _fetched(provenance: dict[str, Any], layout: Layout) -> FetchedExperts | None:
    """The Hub commit the experts came from (`expert.from`), as the distilled set's provenance records it."""
    raw = provenance.get("experts_fetched")
    where = str(layout.synthetic)
    return None if raw is None else config.build(FetchedExperts, raw, where=where, prefix="experts_fetched")


SOFT_NOTE = "soft_label rows are learned label distributions: train with cross-entropy against them"


def _budget(b: int, row: dict[str, Any], num_classes: int, lr: float) -> Budget:
    main = "boosted" if "boosted" in row else "distilled"
    refs = {k: Result.of(row[k]) for k in ("direct", "naive_subset") if k in row}
    return Budget(b, b * num_classes, lr, Result.of(row[main]), Result.of(row["random_real"]), **refs)


def _cross_architecture(
    m: dict[str, Any], proto: dict[str, Any], data: Prepared, model: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """MTT's cross-architecture evaluation: each network the largest budget was scored on, described."""
    archs, main = list(m.get("architectures", {})), proto["architecture"]["arch"]
    if archs == [main]:
        return {}
    base = model_params(model)
    zoo = lambda a: models.describe(dataclasses.replace(base, arch=a), data.image_shape, data.num_classes)
    return {a: proto["architecture"] if a == main else zoo(a) for a in archs}


def model_params(raw: dict[str, Any] | None) -> ModelParams:
    """The network of a card's `method_params.model` (the defaults when absent)."""
    return params_from_dict({"model": raw}).model if raw else ModelParams()


def _source(data: Prepared, root: Path) -> Source:
    info = describe(data.source, root)
    if len(data.test_indices):
        note = "indices into the source's own order; train on this package, test on these real images"
        split = EvalSplit("indices", len(data.test_indices), file=SPLIT, tensor="test_indices", note=note)
    else:
        split = EvalSplit("canonical", len(data.test_labels), split="test")
    title, hub_id = info.get("title", data.source), info.get("hub_id", data.source)
    return Source(data.source, title, hub_id, data.content_hash, data.license, info.get("loader"), split)


def _resize(data: Prepared, resolution: int) -> str | None:
    """How `data.resolution` brought the source's images to the network's input size, before the preprocessing."""
    if not resolution:
        return None
    side = f"{resolution}x{resolution}"
    if data.source.startswith(("hf:", "imagefolder:")):  # decoded with PIL, resized there
        return f"each image resized to {side} with PIL's Image.resize(({resolution}, {resolution}), BILINEAR)"
    return (
        f"images in [0, 1] resized to {side} with torch.nn.functional.interpolate(x, size=({resolution}, "
        f"{resolution}), mode='bilinear', antialias=True), clamped to [0, 1]"
    )


def _preprocessing(data: Prepared) -> Preprocessing:
    """How real images reach the space of pixel_values: per-channel normalisation, or MTT's ZCA whitening."""
    if data.preprocess == "zca":
        stored = (
            "pixel_values are already whitened; flatten real images in [0, 1] to C*H*W and compute "
            "(x - mean) @ matrix with the sidecar's tensors (back to pixels: z @ inverse + mean)"
        )
        variant = (
            "MTT: kornia.enhance.ZCAWhitening(eps, compute_inv=True) fitted on the training images in [0, 1], "
            "flattened to C*H*W"
        )
        return Preprocessing("zca", data.pixel_scale, ZCA, stored, eps=data.zca_eps, variant=variant)
    stored = "pixel_values are already normalised; put real images in [0, 1] through (x - mean) / std"
    mean, std = (tuple(round(float(v), 8) for v in t) for t in (data.mean, data.std))
    return Preprocessing("normalize", data.pixel_scale, NORMALIZATION, stored, mean=mean, std=std)


def rebuildable(a: dict[str, Any]) -> dict[str, Any]:
    """The network as a consumer rebuilds it: the ConvNet's description plus its first conv's padding (3 on 1x28x28
    inputs). The padding stays out of `models.describe`, which expert manifests and checkpoints compare."""
    if a["arch"] != "convnet":
        return a
    return {**a, "first_padding": models.first_padding(tuple(a["input_shape"]))}


def _protocol(proto: dict[str, Any], cross: dict[str, dict[str, Any]]) -> Protocol:
    """The evaluation protocol of metrics/evaluate.json, checked against the contract's types."""
    raw = {**proto, "num_runs": proto["num_eval"], **({"architectures": cross} if cross else {})}
    return config.build(Protocol, raw, where="metrics/evaluate.json", prefix="protocol")
