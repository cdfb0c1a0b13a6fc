"""Typed, frozen parameters mirroring `params.yaml` section by section.

`load_params` is the only place YAML is read. It rejects unknown keys (with a did-you-mean), wrong types and
out-of-range values with a `DistillerError` naming the key, so nothing runs on a mistyped file. Each field's
`help` gives its unit or its symbol in the papers.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distiller._runtime import DistillerError

AUG_FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
Arch = Literal["convnet", "resnet18", "resnet18_ap", "vgg11", "alexnet"]  # MTT's ConvNet and its evaluation zoo
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")


def _f(default: Any, help: str, **bounds: float) -> Any:
    """A dataclass field with a help text and optional bounds (ge, gt, le, lt) checked on load."""
    return field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class DataParams:
    source: str = _f(
        "digits",
        "source dataset: digits, mnist, fashion-mnist, cifar10, cifar100, hf:<repo_id>[:<config>] or "
        "imagefolder:<path>",
    )
    root: str = _f("data/raw", "folder of the original archives (torchvision sources), relative to the project root")
    resolution: int = _f(0, "side in pixels images are resized to (square); 0 keeps the native size", ge=0)
    image_column: str = _f("", "hf: sources: the image column (empty: the one Image feature)")
    label_column: str = _f("", "hf: sources: the label column (empty: the one ClassLabel feature)")
    preprocess: Literal["normalize", "zca"] = _f(
        "normalize", "normalize: per-channel (x - mean) / std; zca: MTT's ZCA whitening of pixels in [0, 1]"
    )
    zca_eps: float = _f(0.1, "ZCA: added to the covariance eigenvalues before the inverse square root", gt=0)
    test_fraction: float = _f(
        0.25, "share of each class held out for testing (sources without a test split)", gt=0, lt=1
    )
    split_seed: int = _f(
        0, "seed of the stratified train/test split, kept apart from `seed` so baselines compare", ge=0
    )


@dataclass(frozen=True)
class ModelParams:
    arch: Arch = _f(  # noqa: RUF009 (a Literal alias: immutable)
        "convnet", "architecture of experts, distillation and evaluation (distillation needs convnet)"
    )
    depth: int = _f(2, "convnet: conv blocks D (each halves the resolution)", ge=1, le=6)
    width: int = _f(64, "convnet: channels per conv layer", ge=1)
    norm: Literal["instancenorm", "none"] = _f(
        "instancenorm", "convnet: instancenorm = GroupNorm(C, C), no running buffers"
    )
    pooling: Literal["avgpool", "maxpool"] = _f("avgpool", "convnet: 2x2 pooling after every block")


@dataclass(frozen=True)
class AugmentParams:
    strategy: str = _f(
        "color_crop_cutout_scale_rotate", "DSA families joined by '_' (or 'none'); flip is off for digits"
    )
    mode: Literal["single", "all"] = _f(
        "single", "single: one family per call, drawn at random (DSA 'S'); all: every one"
    )
    scale: float = _f(1.2, "scale factors drawn from U[1/scale, scale]", ge=1)
    rotate: float = _f(15.0, "rotation in degrees drawn from U[-rotate, rotate]", ge=0)
    crop: float = _f(0.125, "max shift as a fraction of the side", ge=0, lt=1)
    cutout: float = _f(0.5, "side of the zeroed square as a fraction of the side", ge=0, le=1)
    flip: float = _f(0.5, "probability of a horizontal flip", ge=0, le=1)
    brightness: float = _f(1.0, "brightness shift drawn from (u - 0.5) * brightness", ge=0)
    saturation: float = _f(2.0, "saturation factor drawn from u * saturation", ge=0)
    contrast: float = _f(0.5, "contrast factor drawn from u + contrast", ge=0)


@dataclass(frozen=True)
class ExpertParams:
    num_experts: int = _f(8, "expert trajectories K", ge=1)
    epochs: int = _f(10, "epochs per expert E; records theta*_0 .. theta*_E", ge=1)
    lr: float = _f(0.05, "expert SGD lr (no momentum, no decay); also the initial syn_lr alpha", gt=0)
    batch_size: int = _f(256, "expert minibatch", ge=1)
    augment: bool = _f(True, "DSA on while training experts")
    checkpoint_every: int = _f(1, "experts between checkpoints of the stage (0: none); a rerun resumes", ge=0)
    parallel: int = _f(0, "experts trained at once (0: all, 1: one at a time); the experts do not depend on it", ge=0)


@dataclass(frozen=True)
class DistillParams:
    method: Literal["mtt", "ratbptt"] = _f("mtt", "distillation method")
    ipc: int = _f(10, "synthetic images per class (the largest budget)", ge=1)
    budgets: tuple[int, ...] = _f(
        (1, 2, 5, 10),
        "nested budgets (images per class) scored and packaged as configs; ratbptt boosts over them (Boost-DD), MTT "
        "sets are scored at their prefixes. Those above ipc are dropped and ipc is always the last",
    )
    checkpoint_every: int = _f(
        25, "outer iterations between checkpoints of the stage (0: none); rerunning after a kill resumes", ge=0
    )


@dataclass(frozen=True)
class MTTParams:
    iterations: int = _f(50, "outer iterations", ge=1)
    init: Literal["real", "noise"] = _f("real", "initialise S from random real images or N(0, 1) noise")
    syn_steps: int = _f(20, "student SGD steps N per iteration", ge=1)
    expert_epochs: int = _f(2, "expert epochs M between start and target", ge=1)
    max_start_epoch: int = _f(8, "start epoch t drawn from {0 .. T+ - 1}", ge=1)
    lr_img: float = _f(50.0, "SGD lr on the synthetic pixels", gt=0)
    lr_lr: float = _f(1e-5, "SGD lr on syn_lr alpha", ge=0)
    momentum: float = _f(0.5, "momentum of both outer SGD optimisers", ge=0, lt=1)
    batch_syn: int = _f(0, "synthetic minibatch b per student step (0: all of S)", ge=0)
    syn_lr_floor: float = _f(1e-4, "alpha is kept >= this (0 turns the guard off, as in the reference)", ge=0)


@dataclass(frozen=True)
class RatBPTTParams:
    iterations: int = _f(1200, "outer steps (the first Boost-DD stage and the direct set at the first budget)", ge=1)
    init: Literal["noise", "real"] = _f(
        "real", "real images, or N(0, 1) pixels rescaled to unit norm per image (paper)"
    )
    horizon: int = _f(40, "inner horizon T: warm-up plus window never exceed it", ge=1)
    window: int = _f(20, "differentiable inner steps W", ge=1)
    placement: Literal["random", "fixed", "end"] = _f("random", "window start s: U{0..T-W}, `warmup_steps`, or T-W")
    warmup_steps: int = _f(0, "s when placement is fixed", ge=0)
    redraw_every: int = _f(1, "outer steps between draws of the window start", ge=1)
    inner_optimizer: Literal["adam", "sgd"] = _f("adam", "inner optimiser (differentiated through)")
    inner_lr: float = _f(1e-2, "inner lr eta (fixed, not learned)", gt=0)
    inner_momentum: float = _f(0.9, "momentum when inner_optimizer is sgd", ge=0, lt=1)
    batch_per_class: int = _f(10, "inner minibatch: images per class per step (capped at the images per class)", ge=1)
    classes_per_step: int = _f(0, "classes per inner step (0: all)", ge=0)
    real_batch: int = _f(1024, "real images B in the meta-loss batch", ge=1)
    outer_lr: float = _f(1e-2, "Adam lr on the pixels", gt=0)
    outer_schedule: Literal["constant", "cosine"] = _f(
        "constant", "outer lr over each run's steps: constant, or cosine decay to 0 (our option, not the paper's)"
    )
    soft_labels: bool = _f(True, "learn labels (initialised one-hot, kept non-negative)")
    label_lr_scale: float = _f(1.0, "labels use outer_lr / label_lr_scale", gt=0)
    clip_ema: float = _f(0.1, "rate of the running average of the meta-gradient norm", gt=0, le=1)
    clip_factor: float = _f(2.0, "clip the pixel gradient to this times the running average norm", gt=0)
    augment: str = _f("crop_scale_rotate", "DSA families for inner and real batches (the paper: flip_rotate)")


@dataclass(frozen=True)
class BoostParams:
    beta: float = _f(0.0, "Boost-DD: earlier blocks are updated beta times as much (0 freezes, 1 joint)", ge=0, le=1)
    beta_scales: Literal["update", "gradient"] = _f("update", "what beta scales (Adam ignores a gradient scale)")
    stage_iterations: int = _f(100, "outer steps per boosting stage after the first (0: ratbptt.iterations)", ge=0)
    reference_iterations: int = _f(
        150, "outer steps of each direct reference above the first budget (0: ratbptt.iterations)", ge=0
    )
    references: bool = _f(
        True, "also distill directly at every budget (the evaluation's direct and naive-subset references)"
    )


@dataclass(frozen=True)
class EvaluateParams:
    num_eval: int = _f(5, "fresh networks trained per set", ge=1)
    epochs: int = _f(1000, "training epochs per network; lr x0.1 at half", ge=1)
    batch_size: int = _f(256, "training minibatch", ge=1)
    momentum: float = _f(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = _f(5e-4, "SGD weight decay", ge=0)
    augment: bool = _f(True, "DSA on while training (MTT protocol)")
    real_lr: float = _f(0.01, "lr for the real-image baselines (the synthetic set trains with its learned lr)", gt=0)
    ratbptt_epochs: int = _f(300, "epochs per network when scoring RaT-BPTT sets and their references", ge=1)
    ratbptt_optimizer: Literal["sgd", "inner"] = _f(
        "sgd", "RaT-BPTT sets: sgd = MTT's SGD protocol at real_lr; inner = the inner optimiser at its lr (reference)"
    )
    full_data_runs: int = _f(1, "networks trained on the full training set (0 skips the baseline)", ge=0)
    full_data_epochs: int = _f(100, "epochs for the full-data baseline (0: the same as `epochs`)", ge=0)
    test_batch_size: int = _f(1024, "test-time batch (no effect on results)", ge=1)
    parallel: int = _f(0, "networks trained at once (0: all, 1: one at a time); the scores do not depend on it", ge=0)
    archs: tuple[Arch, ...] = _f(
        (),
        "architectures the largest budget is also scored on, same protocol and seeds (empty: model.arch only)",
    )


@dataclass(frozen=True)
class GuardParams:
    max_bad_steps: int = _f(
        5,
        "consecutive skipped or rolled-back distillation steps (non-finite, collapsed lr, exploding) before stopping",
        ge=1,
    )
    explode_factor: float = _f(
        100.0, "ratbptt: a meta-gradient norm above this times its running average is skipped as exploding", gt=1
    )


@dataclass(frozen=True)
class PackageParams:
    version: str = _f(
        "1.0.0", "semantic version of the packaged dataset; `distiller publish` tags the Hub commit v<version>"
    )
    preview: bool = _f(True, "add an 8-bit `image` column (de-normalised, clipped) for the Hub viewer; lossy")


@dataclass(frozen=True)
class Params:
    seed: int = _f(0, "root seed; every random stream is derived from it", ge=0)
    device: str = _f("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    expert: ExpertParams = field(default_factory=ExpertParams)
    distill: DistillParams = field(default_factory=DistillParams)
    mtt: MTTParams = field(default_factory=MTTParams)
    ratbptt: RatBPTTParams = field(default_factory=RatBPTTParams)
    boost: BoostParams = field(default_factory=BoostParams)
    guard: GuardParams = field(default_factory=GuardParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    package: PackageParams = field(default_factory=PackageParams)

    def __post_init__(self) -> None:
        _check_combinations(self)


# ---------------------------------------------------------------------------------------------------------------------
# loading and validation


def effective_budgets(p: DistillParams) -> tuple[int, ...]:
    """The nested budgets actually distilled: those below ipc, then ipc itself."""
    return (*[b for b in p.budgets if b < p.ipc], p.ipc)


def _check_combinations(p: Params) -> None:
    """Values that are each valid but cannot work together."""
    families = [f for f in p.augment.strategy.split("_") if f] if p.augment.strategy != "none" else []
    unknown = [f for f in families if f not in AUG_FAMILIES]
    if unknown or (p.augment.strategy != "none" and not families):
        hint = _did_you_mean(unknown[0], AUG_FAMILIES) if unknown else ""
        raise DistillerError(
            f"augment.strategy: unknown family '{unknown[0] if unknown else p.augment.strategy}'{hint}; "
            f"use {'_'.join(AUG_FAMILIES)} or a subset, or 'none'"
        )
    last_target = p.mtt.max_start_epoch - 1 + p.mtt.expert_epochs
    if last_target > p.expert.epochs:
        raise DistillerError(
            f"mtt.max_start_epoch ({p.mtt.max_start_epoch}) - 1 + mtt.expert_epochs ({p.mtt.expert_epochs}) "
            f"= {last_target} exceeds expert.epochs ({p.expert.epochs}): the target epoch would not exist"
        )
    b = p.distill.budgets
    if not b or any(x < 1 for x in b) or any(x >= y for x, y in itertools.pairwise(b)):
        raise DistillerError(f"distill.budgets must be increasing positive integers, got {list(b)}")
    r = p.ratbptt
    if r.window > r.horizon:
        raise DistillerError(f"ratbptt.window ({r.window}) exceeds ratbptt.horizon ({r.horizon})")
    if r.placement == "fixed" and r.warmup_steps + r.window > r.horizon:
        raise DistillerError(
            f"ratbptt.warmup_steps ({r.warmup_steps}) + window ({r.window}) exceeds ratbptt.horizon ({r.horizon})"
        )
    aug = p.ratbptt.augment
    bad = [f for f in aug.split("_") if f not in AUG_FAMILIES] if aug != "none" else []
    if bad:
        raise DistillerError(f"ratbptt.augment: unknown family '{bad[0]}'{_did_you_mean(bad[0], AUG_FAMILIES)}")
    if not SEMVER.fullmatch(p.package.version):
        raise DistillerError(f"package.version must be a semantic version like 1.2.0, got '{p.package.version}'")
    if len(set(p.evaluate.archs)) < len(p.evaluate.archs):
        raise DistillerError(f"evaluate.archs lists an architecture twice: {list(p.evaluate.archs)}")
    if p.device != "auto" and not (p.device == "cpu" or p.device.startswith("cuda")):
        raise DistillerError(f"device: '{p.device}' is not one of auto, cpu, cuda, cuda:N")


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (tuple, list):
        inner = typing.get_args(tp)[0]
        if typing.get_origin(inner) is Literal:
            return "a list of " + ", ".join(repr(a) for a in typing.get_args(inner))
        return f"a list of {_type_name(inner)}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats, and so is exponent notation without a
    dot (`1e-5`), which YAML 1.1 reads as a string; nothing else is converted."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    ok: bool
    if origin is Literal:
        ok = value in typing.get_args(tp) and isinstance(value, str)
    elif origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise DistillerError(f"params: {key} must be {_type_name(tp)}, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    elif tp is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise DistillerError(f"params: {key} must be {_type_name(tp)}, got {value!r}")
    return value


def _check_bounds(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    if value is None or isinstance(value, (str, bool, tuple)):
        return
    for name, test, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        if name in meta and not test(value, meta[name]):
            raise DistillerError(f"params: {key} must be {word} {meta[name]}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise DistillerError(f"params: {prefix or 'the file'} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dotted = lambda k: f"{prefix}.{k}" if prefix else str(k)
    for key in raw:
        if key not in fields:
            hint = _did_you_mean(dotted(key), [dotted(f) for f in fields])
            shown = dotted(key).encode("unicode_escape").decode()  # a key may hold newlines: keep the error one line
            raise DistillerError(f"params: unknown key '{shown}'{hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = dotted(name)
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], key)
        else:
            values[name] = _coerce(key, raw[name], tp)
            _check_bounds(key, values[name], f.metadata)
    return cls(**values)


def params_from_dict(raw: Any) -> Params:
    return _build(Params, {} if raw is None else raw, "")


def load_params(path: Path | str = "params.yaml", overrides: typing.Mapping[str, Any] | None = None) -> Params:
    """Read, validate and freeze `path`; `overrides` maps dotted keys ('distill.ipc') to values."""
    path = Path(path)
    if not path.is_file():
        raise DistillerError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DistillerError(f"{path}: not valid YAML{where}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise DistillerError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return params_from_dict(raw)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DistillerError(f"params: cannot set '{dotted}': '{part}' is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a YAML value (`distill.ipc=1`, `augment.strategy=none`)."""
    if "=" not in text:
        raise DistillerError(f"override '{text}' must look like key=value (e.g. distill.ipc=1)")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value.strip() else ""


def to_dict(p: Any) -> dict[str, Any]:
    """Plain nested dict of YAML/JSON types (for provenance in artifacts and metrics)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, (tuple, list)) else x

    return plain(dataclasses.asdict(p))


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
