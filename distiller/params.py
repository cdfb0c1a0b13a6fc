"""Typed, frozen parameters mirroring `params.yaml` section by section.

`load_params` is the only place YAML is read. It rejects unknown keys (with a did-you-mean), wrong types and
out-of-range values with a `DistillerError` naming the key, so nothing runs on a mistyped file. Each field's
`help` gives its unit or its symbol in the papers.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distiller._runtime import DistillerError

AUG_FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


def _f(default: Any, help: str, **bounds: float) -> Any:
    """A dataclass field with a help text and optional bounds (ge, gt, le, lt) checked on load."""
    return field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class DataParams:
    source: str = _f("digits", "registry name of the source dataset")
    test_fraction: float = _f(
        0.25, "share of each class held out for testing (sources without a test split)", gt=0, lt=1
    )
    split_seed: int = _f(
        0, "seed of the stratified train/test split, kept apart from `seed` so baselines compare", ge=0
    )


@dataclass(frozen=True)
class ModelParams:
    arch: Literal["convnet"] = _f("convnet", "architecture used for experts, distillation and evaluation")
    depth: int = _f(2, "conv blocks D (each halves the resolution)", ge=1, le=6)
    width: int = _f(64, "channels per conv layer", ge=1)
    norm: Literal["instancenorm", "none"] = _f("instancenorm", "instancenorm = GroupNorm(C, C): no running buffers")
    pooling: Literal["avgpool", "maxpool"] = _f("avgpool", "2x2 pooling after every block")


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


@dataclass(frozen=True)
class DistillParams:
    method: Literal["mtt"] = _f("mtt", "distillation method")
    ipc: int = _f(10, "synthetic images per class", ge=1)
    iterations: int = _f(50, "outer iterations", ge=1)
    init: Literal["real", "noise"] = _f("real", "initialise S from random real images or N(0, 1) noise")


@dataclass(frozen=True)
class MTTParams:
    syn_steps: int = _f(20, "student SGD steps N per iteration", ge=1)
    expert_epochs: int = _f(2, "expert epochs M between start and target", ge=1)
    max_start_epoch: int = _f(8, "start epoch t drawn from {0 .. T+ - 1}", ge=1)
    lr_img: float = _f(50.0, "SGD lr on the synthetic pixels", gt=0)
    lr_lr: float = _f(1e-5, "SGD lr on syn_lr alpha", ge=0)
    momentum: float = _f(0.5, "momentum of both outer SGD optimisers", ge=0, lt=1)
    batch_syn: int = _f(0, "synthetic minibatch b per student step (0: all of S)", ge=0)
    syn_lr_floor: float = _f(1e-4, "alpha is kept >= this (0 turns the guard off, as in the reference)", ge=0)


@dataclass(frozen=True)
class EvaluateParams:
    num_eval: int = _f(5, "fresh networks trained per set", ge=1)
    epochs: int = _f(1000, "training epochs per network; lr x0.1 at half", ge=1)
    batch_size: int = _f(256, "training minibatch", ge=1)
    momentum: float = _f(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = _f(5e-4, "SGD weight decay", ge=0)
    augment: bool = _f(True, "DSA on while training (MTT protocol)")
    real_lr: float = _f(0.01, "lr for the real-image baselines (the synthetic set trains with its learned lr)", gt=0)
    full_data_runs: int = _f(1, "networks trained on the full training set (0 skips the baseline)", ge=0)
    full_data_epochs: int = _f(100, "epochs for the full-data baseline (0: the same as `epochs`)", ge=0)
    test_batch_size: int = _f(1024, "test-time batch (no effect on results)", ge=1)


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
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def __post_init__(self) -> None:
        _check_combinations(self)


# ---------------------------------------------------------------------------------------------------------------------
# loading and validation


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
    if p.device != "auto" and not (p.device == "cpu" or p.device.startswith("cuda")):
        raise DistillerError(f"device: '{p.device}' is not one of auto, cpu, cuda, cuda:N")


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats, nothing else is converted."""
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
            raise DistillerError(f"params: unknown key '{dotted(key)}'{hint}")
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
    """Plain nested dict (for provenance in artifacts and metrics)."""
    out = dataclasses.asdict(p)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
