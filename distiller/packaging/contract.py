"""The card contract: the `distiller:` mapping of a packaged dataset's card, as frozen dataclasses.

It holds everything a consumer needs to reproduce the card's accuracy without distiller's code (docs/packaging.md):
version and provenance, method and params, the source and its test split, the preprocessing, the label column, the
evaluation protocol, and the measured accuracy of every budget beside its references. The package stage builds one
(`distiller.packaging.card`), `distiller validate` reads one back with `Contract.from_dict` (every key checked by name
and type), and `examples/train_from_card.py` trains from one. This module needs only the standard library and PyYAML.

`to_dict` / `from_dict` are inverse: optional fields (default None) are left out while unset, and keys keep the
field order below, so card -> contract -> card is the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from distiller.core import config
from distiller.core.config import setting


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
    split: str | None = None  # canonical: the split's name
    file: str | None = None  # indices: the sidecar holding them ...
    tensor: str | None = None  # ... under this tensor name
    note: str | None = None


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

    kind: str
    strategy: str
    mode: Literal["single", "all"]
    draws: str
    scale: float
    rotate_degrees: float
    crop: float
    cutout: float
    flip: float
    brightness: float
    saturation: float
    contrast: float
    align_corners: bool


@dataclass(frozen=True)
class Architecture:
    """A network: the ConvNet by depth, width, norm and pooling; a zoo network by its definition."""

    arch: str
    norm: str
    activation: str
    input_shape: tuple[int, int, int] = field(metadata={"ge": 1})  # (C, H, W)
    num_classes: int = field(metadata={"ge": 2})
    depth: int | None = None
    width: int | None = None
    pooling: str | None = None
    definition: str | None = None
    head_features: int | None = None
    parameters: int | None = None
    first_padding: int | None = field(default=None, metadata={"ge": 0})  # the ConvNet's first conv; the others pad 1


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
    lr_schedule: str
    lr: str
    real_lr: float = field(metadata={"gt": 0})
    augmentation: Augmentation | None
    architecture: Architecture
    num_eval: int = field(metadata={"ge": 1})
    full_data: FullData
    std: str
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
