"""`distiller reproduce`: train fresh networks on a packaged set exactly as its card says, test them on the source's
test split as the card names it, and compare with the accuracy the card claims.

Nothing is trusted. The folder (a Hub repo id is fetched at `revision` first, and copied out of the Hub's cache) goes
through `validate`'s whole check (`distiller.packaging.validate.checked`), and the networks train from the very copy
that was checked; then every value that says how to train is one `distiller.packaging.retrain` builds
(`refuse_unbuilt`), and the source, once loaded, is the one the card describes: its pixel scale, its classes, the
input shape, its test split (`count` images, or indices below its size). Before any training, the preprocessing is
checked against the training split it claims to come from: the mean and std recomputed, or the ZCA transform fitted
again with the card's eps (`fit_zca`, shared with `download`). Each failure is one line naming the key or file.

The card is the contract, so everything comes from it and its sidecars, nothing from the pipeline that made it (see
`retrain`); only the reading of the source's files is shared with `download` (`distiller.data.sources`).

A config agrees with its card when the two means differ by at most max(FLOOR, K * sqrt(s_card^2 / n_card +
s_repro^2 / n_repro)) points: K = 3 standard errors of the difference of two means, each s the sample std of that
side's networks (a side of one network has no spread of its own and borrows the other side's), and a floor of
1 point, so that a card whose networks happened to agree to the last image (std 0) is not impossible to reproduce.
By default each config trains as many networks as its card's accuracy was measured on (at most `MAX_RUNS`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from distiller.core.errors import DistillerError
from distiller.core.files import load_safetensors
from distiller.core.params import DataParams
from distiller.core.runtime import SILENT, Reporter
from distiller.data.sources.raw import RawDataset
from distiller.packaging.contract import Contract, Result
from distiller.packaging.folder import CARD
from distiller.packaging.retrain import refuse_unbuilt, train_and_test
from distiller.packaging.sidecars import fits_source, split_indices
from distiller.packaging.validate import Checked

K = 3.0  # standard errors of the difference of the two means
FLOOR = 1.0  # points
MAX_RUNS = 100


def allowed(card: Result, accs: Sequence[float]) -> float:
    """The largest difference of the means, in points, that `accs` may show from `card` (the module's rule)."""
    mine = statistics.stdev(accs) if len(accs) > 1 else None
    theirs = statistics.stdev(card.values) if len(card.values) > 1 else None
    mine, theirs = (mine if mine is not None else theirs), (theirs if theirs is not None else mine)
    if mine is None or theirs is None:
        return FLOOR
    return max(FLOOR, K * 100 * math.sqrt(theirs**2 / len(card.values) + mine**2 / len(accs)))


@dataclass(frozen=True)
class Row:
    config: str
    card: Result  # the card's accuracy (fractions)
    accs: tuple[float, ...]  # this reproduction's networks
    tolerance: float | None = None  # points: a fixed --tolerance instead of the rule

    @property
    def measured(self) -> float:
        return statistics.fmean(self.accs)

    @property
    def difference(self) -> float:
        """Points."""
        return 100 * (self.measured - self.card.mean)

    @property
    def allowed(self) -> float:
        return self.tolerance if self.tolerance is not None else allowed(self.card, self.accs)

    @property
    def agrees(self) -> bool:
        return abs(self.difference) <= self.allowed

    def line(self) -> str:
        spread = statistics.pstdev(self.accs) if len(self.accs) > 1 else 0.0
        return (
            f"{self.config}: measured {100 * self.measured:.2f} +- {100 * spread:.2f} % ({len(self.accs)} networks), "
            f"card {100 * self.card.mean:.2f} +- {100 * self.card.std:.2f} % ({self.card.runs} networks), "
            f"difference {self.difference:+.2f} points (allowed {self.allowed:.2f})"
        )


@contextlib.contextmanager
def fetched(target: str, revision: str | None) -> Iterator[Path]:
    """A local folder, or a Hub dataset repo id (org/name) downloaded at `revision` and copied out of the Hub's
    cache (whose files are symbolic links, which `validate` refuses) without the Hub's own `.gitattributes`."""
    if Path(target).is_dir():
        yield Path(target)
        return
    if target.count("/") != 1 or target.startswith(("/", ".")):
        raise DistillerError(f"{target}: neither a dataset folder nor a Hub repo id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(target, repo_type="dataset", revision=revision))
    except Exception as e:  # RepositoryNotFoundError, RevisionNotFoundError, offline, ...
        why = f"{revision or 'main'} ({type(e).__name__})"
        raise DistillerError(f"{target}: cannot fetch it from the Hub at {why}") from None
    with tempfile.TemporaryDirectory(prefix="distiller-reproduce-") as tmp:
        copy = Path(tmp) / target.replace("/", "--")
        shutil.copytree(snapshot, copy, symlinks=False, ignore=shutil.ignore_patterns(".gitattributes"))
        yield copy


def test_set(c: Contract, staged: Path, folder: Path, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The real test images in the space of pixel_values, and their labels, as the card names them, from the source
    checked to be the one the card describes."""
    from distiller.data.prepare import resize
    from distiller.data.sources import load

    shape = c.protocol.architecture.input_shape
    side = shape[1] if c.preprocessing.resize is not None and shape[1] == shape[2] else 0  # data.resolution
    root = root.resolve()  # data.root is resolved against root again: a relative --root would be doubled
    raw = load(DataParams(source=c.source.name, root=str(root / "data" / "raw"), resolution=side), root)
    _check_source(c, folder, raw)
    idx = split_indices(staged, folder, c) if c.source.test_split.kind == "indices" else None
    test = None if raw.test_labels is None else len(raw.test_labels)
    fits_source(c, folder, idx, len(raw.train_images), test)
    train = raw.train_images
    if idx is not None:
        x, y = raw.train_images[idx], raw.train_labels[idx]
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[idx] = False
        train = train[keep]
    else:
        assert raw.test_images is not None and raw.test_labels is not None  # fits_source: canonical has one
        x, y = raw.test_images, raw.test_labels
    x, train = resize(x, side), resize(train, side)
    if tuple(x.shape[1:]) != tuple(shape):
        resized = f"resized to {side}x{side}" if side else "not resized (no preprocessing.resize)"
        raise DistillerError(
            f"{folder / CARD}: distiller.protocol.architecture.input_shape is {list(shape)}, but {c.source.name}'s "
            f"images, {resized}, are {list(x.shape[1:])}"
        )
    pre = c.preprocessing
    if pre.kind == "zca":
        t = load_safetensors(staged / pre.file, "distiller.zca", "1", "ZCA sidecar")[0]
        check_zca(c, folder / pre.file, t, train)
        return (x.flatten(1) - t["mean"]).mm(t["matrix"]).view(x.shape), y
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (pre.mean or (), pre.std or ()))
    check_normalisation(c, mean.flatten(), std.flatten(), train)
    return (x - mean) / std, y


def _check_source(c: Contract, folder: Path, raw: RawDataset) -> None:
    """The loaded source is the one the card describes: its pixel scale and its number of classes."""
    card, name = folder / CARD, c.source.name
    if c.preprocessing.pixel_scale != raw.pixel_scale:
        raise DistillerError(
            f"{card}: distiller.preprocessing.pixel_scale is '{c.preprocessing.pixel_scale}', but {name}'s pixels "
            f"are scaled by '{raw.pixel_scale}'"
        )
    if c.protocol.architecture.num_classes != len(raw.classes):
        raise DistillerError(
            f"{card}: distiller.protocol.architecture.num_classes is {c.protocol.architecture.num_classes}, but "
            f"{name} has {len(raw.classes)} classes"
        )


def check_normalisation(c: Contract, mean: torch.Tensor, std: torch.Tensor, train: torch.Tensor) -> None:
    """The card's mean and std are the training split's. Accuracy alone cannot tell: an instance-normalised ConvNet
    barely notices a constant shift of its input (a mean off by 1.3 std cost digits 1.5 points)."""
    for name, card, real in (("mean", mean, train.mean(dim=(0, 2, 3))), ("std", std, train.std(dim=(0, 2, 3)))):
        if card.shape != real.shape or not torch.allclose(card.double(), real.double(), rtol=1e-3, atol=1e-4):
            found = ", ".join(f"{v:.6g}" for v in real.tolist())
            raise DistillerError(
                f"{c.source.name}: the card's preprocessing {name} {card.tolist()} is not its training split's "
                f"({found}): the card is wrong, or this is not the source it was made from"
            )


def check_zca(c: Contract, path: Path, sidecar: dict[str, torch.Tensor], train: torch.Tensor) -> None:
    """The ZCA sidecar is the transform of the training split (fitted again here with the card's eps), not one fitted
    on other images: like a wrong mean, a wrong whitening would cost a ConvNet too little to show in its accuracy."""
    from distiller.data.prepare import fit_zca

    fitted = fit_zca(train, c.preprocessing.eps or 0.0)
    for name in ("mean", "matrix"):
        mine, real = sidecar[name].double(), fitted[f"zca_{name}"].double()
        if mine.shape != real.shape or (mine - real).abs().max() > 1e-3 * real.abs().max():
            raise DistillerError(
                f"{path}: the ZCA {name} is not that of {c.source.name}'s training split (fitted again with eps "
                f"{c.preprocessing.eps}): the sidecar is wrong, or this is not the source it was made from"
            )


def reproduce(
    checked: Checked,
    configs: list[str],
    runs: int | None,
    root: Path,
    tolerance: float | None = None,
    progress: Reporter = SILENT,
) -> list[Row]:
    """Each config of `configs` of a folder `validate` passed, trained `runs` times (None: as many times as its card
    says, at most `MAX_RUNS`) from the checked copy; the rows that compare it with its card."""
    import datasets

    c, folder = checked.card.contract, checked.report.folder
    unknown = [name for name in configs if name not in c.budgets]
    if unknown:
        raise DistillerError(f"{folder}: no config {unknown[0]} (the card has {', '.join(c.budgets)})")
    refuse_unbuilt(c, str(folder / CARD))
    test = test_set(c, checked.staged, folder, root)
    rows = []
    for name in configs:
        ds = datasets.load_dataset(str(checked.staged), name, split="train", cache_dir=checked.cache)
        cols = ds.with_format("torch")[:]
        x, y = cols["pixel_values"].float(), cols[c.labels.train_on]
        claimed = c.budgets[name].accuracy
        n = runs or min(claimed.runs, MAX_RUNS)
        advance = progress.task(f"reproduce {name}", n)
        accs = []
        for run in range(n):
            accs.append(train_and_test(c, c.budgets[name], x, y, test, run))
            advance(1)
        rows.append(Row(name, claimed, tuple(accs), tolerance))
    return rows
