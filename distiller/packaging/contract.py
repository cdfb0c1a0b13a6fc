"""The card contract: the `distiller:` mapping of a packaged dataset's card, as frozen dataclasses.

It holds everything a consumer needs to reproduce the card's accuracy without distiller's code (docs/packaging.md):
version and provenance, method and params, the source and its test split, the preprocessing, the label column, the
evaluation protocol, and the measured accuracy of every budget beside its references. The package stage builds one
(`distiller.packaging.card`), `distiller validate` reads one back with `Contract.from_dict` (every key checked by name
and type), and `examples/train_from_card.py` trains from one. This module needs only the standard library and PyYAML.

`to_dict` / `from_dict` are inverse: optional fields (default None) are left out while unset, and keys keep the
field order below, so card -> contract -> card is the same text.

Every value that says how to train or test is one of the words distiller writes (a `Literal`, or DSA families by
`Families`' rule): a card naming a GELU, a cosine schedule, an augmentation of another kind or a test split other than
the source's own `test` says something no distiller run measured, and is refused by name, not read as something else.
`Contract.check_results` holds every result to its own runs, for `validate` and the package stage alike.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

from distiller.core import config
from distiller.core.config import setting
from distiller.core.errors import DistillerError
from distiller.core.families import Families
from distiller.core.params import Arch


@dataclass(frozen=True)
class Result:
    """Test accuracies (fractions) of `runs` independently trained networks; std is the population std."""

    mean: float = field(metadata={"ge": 0, "le": 1})
    std: float = field(metadata={"ge": 0, "le": 0.5})  # of values in [0, 1]
    runs: int = field(metadata={"ge": 1})
    values: tuple[float, ...] = field(metadata={"ge": 0, "le": 1})

    @classmethod
    def of(cls, r: dict[str, Any]) -> Result:
        """From an evaluation entry {mean, std, runs: [accuracies]} of metrics/evaluate.json."""
        return cls(r["mean"], r["std"], len(r["runs"]), tuple(r["runs"]))


@dataclass(frozen=True)
class EvalSplit:
    """Where the real test images come from: the source's canonical split, or indices into its own order."""

    kind: Literal["canonical", "indices"]
    count: int = field(metadata={"ge": 1})
    split: Literal["test"] | None = None  # canonical: the split's name
    file: str | None = None  # indices: the sidecar holding them ...
    tensor: Literal["test_indices"] | None = None  # ... under this tensor name
    note: str | None = None

    def __post_init__(self) -> None:
        """canonical names a split and no sidecar; indices names a sidecar and its tensor, and no split."""
        needs = ("split",) if self.kind == "canonical" else ("file", "tensor")
        for key in ("split", "file", "tensor"):
            if (getattr(self, key) is None) == (key in needs):
                what = "is missing" if key in needs else "does not go"
                raise DistillerError(f"distiller.source.test_split.{key} {what} with kind {self.kind}")


@dataclass(frozen=True)
class Source:
    name: str  # data.source
    title: str
    hub_id: str  # the Hub dataset it comes from, or a free-form name ("original" for local folders)
    hash: str  # content hash of the prepared data (train and test, preprocessed)
    license: str
    loader: str | None  # how to get the raw images
    test_split: EvalSplit


@dataclass(frozen=True)
class Preprocessing:
    """How real pixels reach the space of `pixel_values`."""

    kind: Literal["normalize", "zca"]
    pixel_scale: str  # raw value -> [0, 1], e.g. "value / 255"
    file: str  # the sidecar with the transform
    stored: str
    mean: tuple[float, ...] | None = None  # normalize: per channel
    std: tuple[float, ...] | None = setting(None, "", gt=0)
    eps: float | None = setting(None, "zca", gt=0)
    variant: str | None = None
    resize: str | None = None  # how source images were resized to the network's input (data.resolution), if they were


@dataclass(frozen=True)
class Labels:
    train_on: Literal["label", "soft_label"]
    note: str


@dataclass(frozen=True)
class Augmentation:
    """DSA as the evaluation applied it while training (one family per minibatch in mode single)."""

    kind: Literal["dsa"]
    strategy: str  # DSA families joined by '_' (`Families`' rule), or none
    mode: Literal["single", "all"]
    draws: Literal["per-sample"]
    scale: float = field(metadata={"ge": 1})  # the bounds of `augment.*` (distiller.core.params.AugmentParams)
    rotate_degrees: float = field(metadata={"ge": 0})
    crop: float = field(metadata={"ge": 0, "lt": 1})
    cutout: float = field(metadata={"ge": 0, "le": 1})
    flip: float = field(metadata={"ge": 0, "le": 1})
    brightness: float = field(metadata={"ge": 0})
    saturation: float = field(metadata={"ge": 0})
    contrast: float = field(metadata={"ge": 0})
    align_corners: bool

    def __post_init__(self) -> None:
        Families.parse(self.strategy, "distiller.protocol.augmentation.strategy")


@dataclass(frozen=True)
class Architecture:
    """A network: the ConvNet by depth, width, norm and pooling; a zoo network by its definition."""

    arch: Arch
    norm: Literal["instancenorm (GroupNorm(C, C), affine)", "none"]
    activation: Literal["relu"]
    input_shape: tuple[int, int, int] = field(metadata={"ge": 1})  # (C, H, W)
    num_classes: int = field(metadata={"ge": 2})
    depth: int | None = field(default=None, metadata={"ge": 1})
    width: int | None = field(default=None, metadata={"ge": 1})
    pooling: Literal["avgpool", "maxpool"] | None = None
    definition: str | None = None
    head_features: int | None = None
    parameters: int | None = None
    first_padding: int | None = field(default=None, metadata={"ge": 0})  # the ConvNet's first conv; the others pad 1
    precision: Literal["fp32", "bf16"] = "fp32"  # the arithmetic it trained in (bf16: fp32 weights, bf16 forward)


@dataclass(frozen=True)
class FullData:
    runs: int
    epochs: int


@dataclass(frozen=True)
class Protocol:
    """How every network of the evaluation trained: the same for the distilled set and all its references."""

    name: str
    optimizer: Literal["sgd", "adam"]
    epochs: int = field(metadata={"ge": 1})
    batch_size: int = field(metadata={"ge": 1})
    momentum: float | None = field(metadata={"ge": 0, "lt": 1})
    weight_decay: float = field(metadata={"ge": 0})
    lr_schedule: Literal["x0.1 at epochs // 2", "constant"]
    lr: str
    real_lr: float = field(metadata={"gt": 0})
    augmentation: Augmentation | None
    architecture: Architecture
    num_eval: int = field(metadata={"ge": 1})
    full_data: FullData
    std: Literal["population (numpy default)"]
    test_split: str
    num_runs: int
    architectures: dict[str, Architecture] | None = None  # the cross-architecture networks, when scored


@dataclass(frozen=True)
class Budget:
    """One config: the first `images_per_class` images of every class, trained at `lr`."""

    images_per_class: int = field(metadata={"ge": 1})
    rows: int = field(metadata={"ge": 1})
    lr: float = field(metadata={"gt": 0})
    accuracy: Result
    random_real: Result
    direct: Result | None = None  # Boost-DD: distilled directly at this budget
    naive_subset: Result | None = None  # Boost-DD: a prefix of the set distilled directly at the largest budget


@dataclass(frozen=True)
class Score:
    """A score of each network, summarised: mean, population std and the values (HLR and IOR may be negative)."""

    mean: float
    std: float = field(metadata={"ge": 0})
    values: tuple[float, ...] = ()


@dataclass(frozen=True)
class FairScores:
    """DD-Ranking's scores of the default config (arXiv 2505.13300; docs/packaging.md): LRS and ARS in [0, 1]."""

    lrs: Score
    ars: Score
    hlr: Score
    ior: Score
    weight: float = field(metadata={"ge": 0, "le": 1})
    # what the random subset trained on: its hard labels, or (a soft-label set) a teacher's softmax at `temperature`
    random_labels: Literal["hard", "teacher"] = "hard"
    temperature: float | None = field(default=None, metadata={"gt": 0})


@dataclass(frozen=True)
class FetchedExperts:
    """MTT's experts, when `expert.from` fetched them from the Hub: the model repo, the revision asked for ("main" when
    none was) and the commit the download held, so `expert.from: hf:<repo>@<commit>` repeats the run exactly."""

    repo: str
    revision: str
    commit: str


@dataclass(frozen=True)
class Contract:
    version: str  # semantic version of the dataset; the Hub tag is v<version>
    git_commit: str | None
    git_dirty: bool | None
    dvc_lock_sha256: str | None
    distiller_version: str
    method: Literal["mtt", "ratbptt"]
    nested: str
    method_params: dict[str, Any]
    source: Source
    preprocessing: Preprocessing
    labels: Labels
    protocol: Protocol
    budgets: dict[str, Budget]  # by config name, smallest first
    default_config: str
    cross_architecture: dict[str, Result] | None = None
    full_data: Result | None = None
    ddranking: FairScores | None = None
    experts: FetchedExperts | None = None

    @classmethod
    def from_dict(cls, raw: Any, where: str = "card") -> Contract:
        """The contract in a card's `distiller:` mapping; a missing, unknown or mistyped key is one line naming it."""
        return config.build(cls, raw, where=where, prefix="distiller")

    def to_dict(self) -> dict[str, Any]:
        return config.to_dict(self)

    @property
    def default(self) -> Budget:
        return self.budgets[self.default_config]

    @property
    def boosted(self) -> bool:
        return self.nested.startswith("boosted")

    def results(self) -> dict[str, Result]:
        """Every measured result, by its key under `distiller.`."""
        found: dict[str, Result | None] = {"full_data": self.full_data}
        for name, b in self.budgets.items():
            keys = ("accuracy", "random_real", "direct", "naive_subset")
            found |= {f"budgets.{name}.{k}": getattr(b, k) for k in keys}
        found |= {f"cross_architecture.{k}": r for k, r in (self.cross_architecture or {}).items()}
        return {k: r for k, r in found.items() if r is not None}

    def check_results(self, where: str) -> None:
        """Every result agrees with its own runs: as many values as runs, their mean and (population) std."""
        for key, r in self.results().items():
            agree = len(r.values) == r.runs and math.isclose(r.mean, statistics.fmean(r.values), abs_tol=1e-6)
            if not agree or not math.isclose(r.std, statistics.pstdev(r.values), abs_tol=1e-6):
                raise DistillerError(
                    f"{where}: distiller.{key} claims mean {r.mean} +- {r.std} over {r.runs} runs, but its values "
                    f"{list(r.values)} say otherwise"
                )
