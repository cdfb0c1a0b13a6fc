"""The parameters: frozen dataclasses mirroring `params.yaml` section by section, with every key's help.

This module is the schema and the one source of each key's documentation: `params.yaml` is rendered from it
(`distiller params`; a test checks the committed file). The engine that reads YAML into these classes is
`distiller.core.config`. Modes are `Literal`s; augmentation families are a `Families` value, parsed once.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distiller.core import config
from distiller.core.config import setting
from distiller.core.errors import DistillerError
from distiller.core.families import AUG_FAMILIES, Families  # noqa: F401 (part of the schema's API)

Arch = Literal["convnet", "resnet18", "resnet18_ap", "vgg11", "alexnet"]  # MTT's ConvNet and its evaluation zoo
Preprocess = Literal["normalize", "zca"]
Placement = Literal["random", "fixed", "end"]  # of RaT-BPTT's window
Schedule = Literal["constant", "cosine"]
Memory = Literal["full", "checkpoint", "tesla"]  # how MTT's meta-gradient is computed
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")  # a Hub repo name, a plain folder name
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")  # ASCII digits only: torch parses no others


@dataclass(frozen=True)
class DataParams:
    """The source dataset and its preprocessing (stage download)."""

    source: str = setting("digits", "digits, mnist, fashion-mnist, cifar10, cifar100, hf:<repo>, imagefolder:<path>")
    root: str = setting("data/raw", "folder of the original archives of torchvision sources (`download --from DIR`)")
    resolution: int = setting(0, "square side in pixels images are resized to; 0 keeps the native size", ge=0, le=1024)
    image_column: str = setting("", "hf: sources: the image column ('' finds the one Image feature)")
    label_column: str = setting("", "hf: sources: the label column ('' finds the one ClassLabel feature)")
    preprocess: Preprocess = setting("normalize", "normalize: per channel with the train mean and std; zca: MTT's ZCA")
    zca_eps: float = setting(0.1, "zca: added to the covariance eigenvalues before the inverse square root", gt=0)
    test_fraction: float = setting(0.25, "stratified hold-out share for sources without a test split", gt=0, lt=1)
    split_seed: int = setting(0, "seed of that split, apart from `seed`: every run is scored on the same images", ge=0)
    validation: float = setting(0.0, "tuning: score on this share of train (stratified), not on test", ge=0, lt=1)


@dataclass(frozen=True)
class ModelParams:
    """The MTT ConvNet: [conv3x3 -> norm -> relu -> pool2] x depth -> linear."""

    arch: Arch = setting("convnet", "experts and distillation need convnet; the zoo networks are for evaluate.archs")
    depth: int = setting(2, "convnet: conv blocks D, each halving the side (2 suits 8x8, 3 suits 32x32)", ge=1, le=6)
    width: int = setting(64, "convnet: channels per conv layer", ge=1)
    norm: Literal["instancenorm", "none"] = setting("instancenorm", "instancenorm: GroupNorm(C, C), no buffers")
    pooling: Literal["avgpool", "maxpool"] = setting("avgpool", "convnet: 2x2 pooling after every block")
    precision: Literal["fp32", "bf16", "auto"] = setting(
        "fp32", "convnet arithmetic: fp32, bf16 (fp32 masters), auto: bf16 where native (docs/precision.md)"
    )


@dataclass(frozen=True)
class AugmentParams:
    """DSA (differentiable siamese augmentation) for experts, distillation and evaluation."""

    strategy: Families = setting(
        Families(("color", "crop", "cutout", "scale", "rotate")),
        "DSA families joined by '_', or none; no flip by default: a mirrored digit can change meaning",
    )
    mode: Literal["single", "all"] = setting("single", "single: one family per call, drawn (DSA 'S'); all: every one")
    scale: float = setting(1.2, "scale factors drawn from U[1/scale, scale]", ge=1)
    rotate: float = setting(15.0, "rotation in degrees drawn from U[-rotate, rotate]", ge=0)
    crop: float = setting(0.125, "largest shift, as a fraction of the side", ge=0, lt=1)
    cutout: float = setting(0.5, "side of the zeroed square, as a fraction of the side", ge=0, le=1)
    flip: float = setting(0.5, "probability of a horizontal flip", ge=0, le=1)
    brightness: float = setting(1.0, "brightness shift drawn from (u - 0.5) * brightness", ge=0)
    saturation: float = setting(2.0, "saturation factor drawn from u * saturation", ge=0)
    contrast: float = setting(0.5, "contrast factor drawn from u + contrast", ge=0)


@dataclass(frozen=True)
class ExpertParams:
    """MTT stage 1: expert trajectories (stage expert-buffer)."""

    num_experts: int = setting(8, "expert trajectories K", ge=1)
    epochs: int = setting(10, "epochs E per expert: records theta*_0 .. theta*_E", ge=1)
    lr: float = setting(0.05, "plain SGD lr (no momentum, no decay); also the initial student lr alpha", gt=0, le=10)
    batch_size: int = setting(256, "expert minibatch", ge=1)
    augment: bool = setting(True, "DSA on while training experts")
    checkpoint_every: int = setting(1, "experts between checkpoints (0: none); a rerun after a kill resumes", ge=0)
    parallel: int = setting(0, "experts trained at once (0: all, 1: one at a time); the experts are the same", ge=0)
    nproc: int = setting(1, "processes sharing the experts (a torchrun job on this machine); the same experts", ge=1)
    from_: str = setting("", "fetch a published buffer instead of training: hf:org/name[@revision], or a folder")


@dataclass(frozen=True)
class DistillParams:
    """What to distill (stage distill)."""

    method: Literal["mtt", "ratbptt"] = setting("mtt", "mtt (trajectory matching) or ratbptt (with Boost-DD)")
    ipc: int = setting(10, "synthetic images per class (the largest budget)", ge=1, le=10_000)
    budgets: tuple[int, ...] = setting(
        (1, 2, 5, 10), "nested: the first k per class form the budget-k set; ipc is last"
    )
    checkpoint_every: int = setting(25, "outer iterations between checkpoints (0: none); a rerun resumes", ge=0)
    nproc: int = setting(1, "RaT-BPTT: processes (the references beside the boosting; torchrun); the same set", ge=1)


@dataclass(frozen=True)
class MTTParams:
    """MTT stage 2 (Cazenavette et al. 2022): match N student steps on S to M expert epochs."""

    iterations: int = setting(50, "outer iterations", ge=1)
    init: Literal["real", "noise"] = setting("real", "initialise S from random real images or N(0, 1) noise")
    syn_steps: int = setting(20, "N: student SGD steps per iteration", ge=1)
    expert_epochs: int = setting(2, "M: expert epochs between start and target", ge=1)
    max_start_epoch: int = setting(8, "T+: start epoch t drawn from {0 .. T+ - 1}", ge=1)
    lr_img: float = setting(50.0, "SGD lr on the pixels", gt=0)
    lr_init: float = setting(0.0, "alpha's initial value; 0: expert.lr (the reference's lr_teacher)", ge=0, le=10)
    lr_lr: float = setting(1e-5, "SGD lr on alpha", ge=0, le=1)
    momentum: float = setting(0.5, "momentum of both outer SGD optimisers", ge=0, lt=1)
    batch_syn: int = setting(0, "synthetic minibatch per student step; 0 = all of S", ge=0)
    memory: Memory = setting("full", "meta-gradient: N steps' graph, recomputed segments (exact), or TESLA's (approx.)")
    segments: int = setting(0, "checkpoint: segments rebuilt one at a time (0: about sqrt(N)); N: one step each", ge=0)
    syn_lr_floor: float = setting(1e-4, "alpha is kept >= this; 0 lets it go negative, as in the reference", ge=0)
    soft_labels: bool = setting(False, "learn labels too: distributions, one-hot at first, kept >= 0 (not MTT's)")
    lr_label: float = setting(0.003, "soft_labels: SGD lr on the labels (best of 0.001 to 1 on digits)", gt=0, le=1e6)


@dataclass(frozen=True)
class RatBPTTParams:
    """RaT-BPTT (Feng, Vedantam & Kempe 2024): backpropagate through a random window of steps."""

    iterations: int = setting(1200, "outer steps (the first Boost-DD stage and the direct set at it)", ge=1)
    horizon: int = setting(40, "T: inner steps, warm-up plus window", ge=1)
    window: int = setting(20, "W: differentiable inner steps (memory grows with W, not T)", ge=1)
    init: Literal["noise", "real"] = setting("real", "real images, or N(0, 1) pixels rescaled to unit norm (paper)")
    placement: Placement = setting("random", "window start s ~ U{0 .. T-W} (random), warmup_steps (fixed), T-W (end)")
    warmup_steps: int = setting(0, "s when placement is fixed", ge=0)
    redraw_every: int = setting(1, "outer steps between draws of s", ge=1)
    inner_optimizer: Literal["adam", "sgd"] = setting("adam", "differentiated through, moments included")
    inner_lr: float = setting(1e-2, "eta: fixed inner lr", gt=0, le=10)
    inner_momentum: float = setting(0.9, "momentum when inner_optimizer is sgd", ge=0, lt=1)
    batch_per_class: int = setting(10, "inner minibatch per class (capped at the images per class)", ge=1)
    classes_per_step: int = setting(0, "classes per inner step, 0 = all", ge=0)
    real_batch: int = setting(1024, "B: real images in the meta-loss batch", ge=1)
    outer_lr: float = setting(1e-2, "Adam lr on the pixels", gt=0, le=10)
    outer_schedule: Schedule = setting("constant", "or cosine: the outer lr decays to 0 in each run (not the paper's)")
    soft_labels: bool = setting(True, "learn labels (one-hot init, kept >= 0)")
    label_lr_scale: float = setting(1.0, "labels use outer_lr / label_lr_scale", gt=0)
    clip_ema: float = setting(0.1, "meta-gradient clipping: running average rate of the norm ...", gt=0, le=1)
    clip_factor: float = setting(2.0, "... and the clip at this times the average", gt=0)
    augment: Families = setting(
        Families(("crop", "scale", "rotate")), "DSA families on inner and real batches (the paper: flip_rotate)"
    )


@dataclass(frozen=True)
class BoostParams:
    """Boost-DD over distill.budgets (ratbptt only)."""

    beta: float = setting(0.0, "earlier blocks move beta times as far (0 freezes them, 1 is joint)", ge=0, le=1)
    beta_scales: Literal["update", "gradient"] = setting("update", "what beta scales (Adam undoes a gradient scale)")
    stage_iterations: int = setting(100, "outer steps per stage after the first (0: ratbptt.iterations)", ge=0)
    reference_iterations: int = setting(150, "outer steps per direct reference above b_1 (0: ratbptt.iterations)", ge=0)
    references: bool = setting(True, "also distill directly at every budget (the direct and naive-subset curves)")


@dataclass(frozen=True)
class EvaluateParams:
    """MTT's protocol: fresh networks trained on each set, tested on the held-out split."""

    num_eval: int = setting(5, "fresh networks trained per set", ge=1)
    epochs: int = setting(1000, "training epochs per network; lr x0.1 at half", ge=1)
    batch_size: int = setting(256, "training minibatch", ge=1)
    momentum: float = setting(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = setting(5e-4, "SGD weight decay", ge=0, le=1)
    augment: bool = setting(True, "DSA while training (leaving it out under-reports MTT)")
    real_lr: float = setting(0.01, "lr of real-image baselines and of sets without learned lr (RaT-BPTT)", gt=0, le=10)
    prefixes: bool = setting(False, "MTT: also score and package the first k per class at each budget (not made for k)")
    full_data_runs: int = setting(1, "networks trained on the full training set (0 skips the baseline)", ge=0)
    full_data_epochs: int = setting(100, "their epochs (0: the same as `epochs`)", ge=0)
    ratbptt_epochs: int = setting(300, "RaT-BPTT sets and their references: epochs per network ...", ge=1)
    ratbptt_optimizer: Literal["sgd", "inner"] = setting("sgd", "... by sgd (as above, at real_lr) or inner (its own)")
    test_batch_size: int = setting(1024, "test-time batch (no effect on results)", ge=1)
    parallel: int = setting(0, "networks trained at once (0: all, 1: one at a time); the scores are the same", ge=0)
    nproc: int = setting(1, "processes sharing the networks (a torchrun job on this machine); the same scores", ge=1)
    archs: tuple[Arch, ...] = setting((), "networks the largest budget is also scored on: resnet18, vgg11, ...")
    ddranking: bool = setting(False, "also DD-Ranking's label- and augmentation-robust scores (more networks)")


@dataclass(frozen=True)
class GuardParams:
    """Guarded optimisation (distill): bad steps are skipped or rolled back and counted."""

    max_bad_steps: int = setting(5, "this many bad steps in a row stop the run, naming the param to change", ge=1)
    explode_factor: float = setting(100.0, "ratbptt: a meta-gradient norm over this x its running mean: skipped", gt=1)


@dataclass(frozen=True)
class PackageParams:
    """The Hugging Face datasets folder datasets/<name>/."""

    name: str = setting("", "folder and Hub repo; '' = <data.source>-distilled-ipc<ipc> (hf:, imagefolder: need one)")
    version: str = setting("1.0.0", "semantic version in the card; `distiller publish` tags the Hub commit v<version>")
    preview: bool = setting(True, "8-bit `image` column for the Hub viewer (pixel_values hold the exact floats)")

    def folder(self, source: str, ipc: int) -> str:
        """The package's folder name (and Hub repo name): `name`, or one derived from a plain source's name."""
        folder = self.name or f"{source}-distilled-ipc{ipc}"
        if not PACKAGE_NAME.fullmatch(folder) or ".." in folder or "--" in folder:
            which = "package.name" if self.name else f"data.source '{source}' (set package.name)"
            raise DistillerError(f"{which}: '{folder}' is no folder or Hub repo name (letters, digits, '-', '_', '.')")
        return folder


@dataclass(frozen=True)
class Params:
    """Every parameter of the pipeline."""

    seed: int = setting(0, "root seed: every random stream (init, augmentation, sampling) derives from it", ge=0)
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    deterministic: bool = setting(False, "CUDA: only deterministic kernels, for bitwise reruns (docs/scaling.md)")
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


def effective_budgets(p: DistillParams) -> tuple[int, ...]:
    """The nested budgets actually distilled: those below ipc, then ipc itself."""
    return (*[b for b in p.budgets if b < p.ipc], p.ipc)


def _check_combinations(p: Params) -> None:
    """Values that are each valid but cannot work together."""
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
        raise DistillerError(f"ratbptt.warmup_steps ({r.warmup_steps}) + window ({r.window}) > horizon ({r.horizon})")
    if not SEMVER.fullmatch(p.package.version):
        raise DistillerError(f"package.version must be a semantic version like 1.2.0, got '{p.package.version}'")
    if p.evaluate.ddranking and p.evaluate.full_data_runs < 1:
        raise DistillerError("evaluate.ddranking needs the full-data baseline: set evaluate.full_data_runs >= 1")
    if len(set(p.evaluate.archs)) < len(p.evaluate.archs):
        raise DistillerError(f"evaluate.archs lists an architecture twice: {list(p.evaluate.archs)}")
    if p.package.name:  # a derived name is checked where it is used: only packaging needs one
        p.package.folder(p.data.source, p.distill.ipc)
    if not DEVICE.fullmatch(p.device):
        raise DistillerError(f"device: '{p.device}' is not one of auto, cpu, cuda, cuda:N")


# ---------------------------------------------------------------------------------------------------------------------
# loading, overrides and the rendered file

HEADER = """distiller parameters, one section per concern. Rendered from distiller/core/params.py (`distiller params`),
where every key is declared with the help text that follows it here; the values are the defaults."""


def params_from_dict(raw: Any, where: str = "params") -> Params:  # `where` (the file) starts every error message
    return config.build(Params, {} if raw is None else raw, where=where)


def load_params(path: Path | str | None = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read, validate and freeze `path` (None: the defaults); `overrides` maps dotted keys ('distill.ipc') to values."""
    raw = config.load_yaml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        config.set_dotted(raw, dotted, value)
    where = str(path) if path is not None else "params"
    return params_from_dict(raw, f"{where} with -S overrides" if overrides else where)


def to_dict(p: Any) -> dict[str, Any]:
    """Plain nested dict of YAML/JSON types (for provenance in artifacts and metrics)."""
    return config.to_dict(p)


def render(p: Params | None = None) -> str:
    """params.yaml for `p` (default: the defaults), every key with its help."""
    return config.render_yaml(p or Params(), HEADER)
