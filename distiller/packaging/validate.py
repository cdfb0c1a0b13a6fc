"""`distiller validate`: check a packaged datasets folder the way a consumer will use it, trusting nothing in it.

The folder holds only regular files, every one declared by the card (`distiller.packaging.folder`); the card is read
with limits (`distiller.core.safeyaml`) and its `distiller:` mapping is a valid `Contract` (every key by name, type and
range: accuracies in [0, 1], std >= 0, positive lr, distiller's words for how to train and test, ...) whose results
agree with their own runs and whose networks are ones distiller builds (`distiller.packaging.network`); the Hub
metadata is there; `configs`, the data files, `dataset_info` (download size exact, dataset and split bytes within a
factor of 2 of the loaded table) and the contract's budgets agree; every config loads with the real
`datasets.load_dataset` with the declared row count and features, `images_per_class` rows of every class, labels in
range, soft labels when the card trains on them, and finite values; configs nest; the sidecars load, are finite and
fit the source (`distiller.packaging.sidecars`). Every failure is one line naming the file.

`checked` is the one check, shared with `distiller reproduce`, which trains from the very copy that was checked.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distiller.core import safeyaml
from distiller.core.errors import DistillerError, first_line
from distiller.core.params import SEMVER
from distiller.core.runtime import quiet_datasets
from distiller.packaging import network
from distiller.packaging.contract import Contract
from distiller.packaging.folder import CARD, copy_declared, inside, inventory, matching, refuse_undeclared, shown_files
from distiller.packaging.sidecars import check as check_sidecars
from distiller.packaging.sidecars import check_picture

FRONT_MATTER = re.compile(r"\A\s*---\r?\n(.*?)\r?\n---(?:\r?\n|\Z)", re.DOTALL)
REQUIRED_CARD = ("license", "task_categories", "size_categories", "source_datasets", "tags", "pretty_name")
_HUB_TYPES = {"pretty_name": "a string", "license": "a string or a list of strings"}


@dataclass(frozen=True)
class Card:
    path: Path
    text: str
    data: dict[str, Any]  # the YAML front matter
    contract: Contract
    configs: list[dict[str, Any]]


@dataclass(frozen=True)
class Report:
    """What `validate` checked: config name -> rows, the default config, the card's version and method, and the
    folder's files (every one declared by the card: what `publish` sends)."""

    folder: Path
    configs: dict[str, int]
    default: str
    version: str
    method: str
    files: tuple[str, ...]

    def summary(self) -> str:
        rows = ", ".join(f"{name} {n} rows" for name, n in self.configs.items())
        return f"{self.folder}: valid ({self.method}, version {self.version}; {rows}; default {self.default})"


@dataclass(frozen=True)
class Checked:
    """A folder found valid: what was checked, its card, and the copy of its declared files that was checked (under
    a plain name, which `datasets` reads as a path and never as a glob), with the cache its configs loaded into."""

    report: Report
    card: Card
    staged: Path
    cache: str


def validate(folder: Path | str) -> Report:
    """Check `folder` (see the module's docstring); returns what was checked."""
    with checked(folder) as c:
        return c.report


@contextlib.contextmanager
def checked(folder: Path | str) -> Iterator[Checked]:
    """Check `folder` (see the module's docstring); the checked copy lives until the block ends."""
    folder = Path(folder)
    files = inventory(folder)
    if CARD not in files:
        raise DistillerError(f"{folder / CARD}: missing dataset card")
    card = read_card(folder / CARD)
    data_files, infos = _configs(folder, files, card)
    sidecars = [inside(folder, rel, "sidecar") for rel in _sidecar_names(card.contract)]
    shown = shown_files(folder, card.text, files)
    declared = {CARD, *sidecars, *shown}
    refuse_undeclared(folder, files, declared.union(*data_files.values()))
    report = Report(folder, {}, card.contract.default_config, card.contract.version, card.contract.method, files)
    with tempfile.TemporaryDirectory(prefix="distiller-validate-") as tmp, quiet_datasets():  # and leaves no cache
        staged = Path(tmp) / "folder"  # a copy under a plain name: datasets reads the folder's path as a glob
        copy_declared(folder, files, staged)
        previous: dict[str, torch.Tensor] | None = None
        for name, _ in sorted(card.contract.budgets.items(), key=lambda kv: kv[1].images_per_class):  # nesting order
            ds = _load(staged, folder, name, tmp)
            _bytes(folder, name, infos[name], ds.data.nbytes)
            current = _check_config(folder, name, ds, card.contract)
            if previous is not None:
                n = len(previous["label"])
                same = torch.equal(current["pixel_values"][:n], previous["pixel_values"]) and torch.equal(
                    current["label"][:n], previous["label"]
                )
                if not same:
                    raise DistillerError(f"{folder / name}: its first {n} rows are not the previous config's")
            previous = current
            report.configs[name] = len(current["label"])
        check_sidecars(staged, folder, card.contract)
        for rel in shown:
            check_picture(folder / rel, "package the folder again")
        yield Checked(report, card, staged, tmp)


def read_card(card_path: Path) -> Card:
    """The card's text, front matter, contract and `configs`, checked."""
    from huggingface_hub import DatasetCard

    text = safeyaml.read_text(card_path, "dataset card")
    front = FRONT_MATTER.match(text)
    if front is None:
        raise DistillerError(f"{card_path}: the card has no YAML front matter between --- lines")
    safeyaml.loads(front.group(1), f"{card_path} front matter")  # with limits, before huggingface_hub's safe_load
    try:
        data = DatasetCard(text).data.to_dict()
    except Exception as e:  # the card parser raises ValueError, YAMLError, ... for a broken front matter
        raise DistillerError(f"{card_path}: the card does not parse ({first_line(e)})") from None
    missing = [k for k in REQUIRED_CARD if not data.get(k)]
    if missing:
        raise DistillerError(f"{card_path}: card YAML lacks {', '.join(missing)}")
    for key in REQUIRED_CARD:  # the Hub's metadata: a string (pretty_name, or a license) or a list of strings
        value = data[key]
        if not (isinstance(value, str) and key in ("pretty_name", "license")) and not (
            isinstance(value, list) and key != "pretty_name" and all(isinstance(v, str) and v for v in value)
        ):
            raise DistillerError(f"{card_path}: card YAML {key} must be {_HUB_TYPES.get(key, 'a list of strings')}")
    if not isinstance(data.get("distiller"), dict):
        raise DistillerError(f"{card_path}: card YAML lacks the `distiller:` mapping")
    contract = Contract.from_dict(data["distiller"], where=str(card_path))
    if not SEMVER.fullmatch(contract.version):
        raise DistillerError(f"{card_path}: distiller.version '{contract.version}' is not a semantic version")
    arch = contract.protocol.architecture
    if arch.arch == "convnet" and arch.first_padding is None:
        raise DistillerError(
            f"{card_path}: distiller.protocol.architecture lacks first_padding (the first conv's padding, 3 for "
            "1x28x28 inputs): the card predates it; package the set again"
        )
    if contract.default_config not in contract.budgets:
        raise DistillerError(f"{card_path}: distiller.default_config '{contract.default_config}' is not a budget")
    network.check(contract, card_path)
    contract.check_results(str(card_path))
    configs = data.get("configs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, dict) for c in configs):
        raise DistillerError(f"{card_path}: card YAML lacks `configs` (a list of config mappings)")
    return Card(card_path, text, data, contract, configs)


def _configs(folder: Path, files: tuple[str, ...], card: Card) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Configs, data files, dataset_info and the contract's budgets agree, and the contract's default config is the
    one default; returns each config's data files and dataset_info."""
    names = [c.get("config_name") for c in card.configs]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) < len(names):
        raise DistillerError(f"{card.path}: every config needs a name of its own, got {names}")
    defaults = [c["config_name"] for c in card.configs if c.get("default") is True]
    if defaults != [card.contract.default_config]:
        raise DistillerError(
            f"{card.path}: exactly one config must be the default, {card.contract.default_config}; found {defaults}"
        )
    if sorted(map(str, names)) != sorted(card.contract.budgets):
        raise DistillerError(
            f"{card.path}: configs {names} do not match distiller.budgets {list(card.contract.budgets)}"
        )
    claimed: dict[str, list[str]] = {}
    for cfg in card.configs:
        name, entries = cfg["config_name"], cfg.get("data_files")
        entries = entries if isinstance(entries, list) and entries else [entries]
        what = f"config '{name}' data_files"
        patterns = [inside(folder, e.get("path") if isinstance(e, dict) else e, what) for e in entries]
        claimed[name] = sorted({f for pattern in patterns for f in matching(folder, files, pattern)})
        if not claimed[name]:
            raise DistillerError(f"{folder / name}: config '{name}' declares {patterns} but no such file exists")
        odd = [f for f in claimed[name] if not f.endswith(".parquet")]
        if odd:
            raise DistillerError(f"{folder / odd[0]}: config '{name}' data_files match a file that is not parquet")
    strays = [f for f in files if f.endswith(".parquet") and not any(f in c for c in claimed.values())]
    if strays:
        raise DistillerError(f"{folder / strays[0]}: a data file no config declares")
    return claimed, _sizes(folder, card, claimed)


def _sizes(folder: Path, card: Card, claimed: dict[str, list[str]]) -> dict[str, Any]:
    """`dataset_info` holds one entry per config, whose `download_size` is the size of its data files (row counts
    are checked when the config loads: `datasets` compares them with `num_examples`); returns them by config."""
    raw = card.data.get("dataset_info")
    infos: dict[str, Any] = {}
    for info in raw if isinstance(raw, list) else [raw]:
        name = info.get("config_name") if isinstance(info, dict) else None
        if not isinstance(info, dict) or not isinstance(name, str) or name not in claimed or name in infos:
            raise DistillerError(f"{card.path}: dataset_info must hold one entry per config, got {info!r:.80}")
        infos[name], declared = info, info.get("download_size")
        actual = sum((folder / f).stat().st_size for f in claimed[name])
        if declared != actual:
            raise DistillerError(
                f"{folder / name}: its data files hold {actual} bytes, but the card's dataset_info says {declared}"
            )
    if sorted(infos) != sorted(claimed):
        raise DistillerError(f"{card.path}: dataset_info describes {sorted(infos)}, the configs are {sorted(claimed)}")
    return infos


def _bytes(folder: Path, name: str, info: dict[str, Any], nbytes: int) -> None:
    """`dataset_size` and the train split's `num_bytes` are the size of the table the config loads as, within a
    factor of 2 (the exact figure is one `datasets` version's arrow layout; 10**18 is no layout's)."""
    splits = info.get("splits")
    if not isinstance(splits, list) or len(splits) != 1 or not isinstance(splits[0], dict):
        raise DistillerError(f"{folder / name}: the card's dataset_info must list its one split, train")
    for key, value in (("dataset_size", info.get("dataset_size")), ("splits num_bytes", splits[0].get("num_bytes"))):
        if not isinstance(value, int) or isinstance(value, bool) or not nbytes / 2 <= value <= 2 * nbytes:
            raise DistillerError(
                f"{folder / name}: the card's dataset_info {key} is {value!r}, but its rows load as {nbytes} bytes"
            )


def _load(staged: Path, folder: Path, name: str, cache: str) -> Any:
    """One config through the real `load_dataset`, as a consumer loads it (from the staged copy)."""
    import datasets

    try:
        return datasets.load_dataset(str(staged), name, split="train", cache_dir=cache)
    except Exception as e:  # datasets raises many types for unreadable or mismatched files
        counts = re.findall(r"num_examples=(\d+)", str(e))
        if type(e).__name__ == "NonMatchingSplitsSizesError" and len(counts) == 2:  # (expected, recorded)
            raise DistillerError(
                f"{folder / name}: {counts[1]} rows, but the card's dataset_info says {counts[0]}"
            ) from None
        raise DistillerError(f"{folder / name}: config '{name}' does not load ({first_line(e)})") from None


def _check_config(folder: Path, name: str, ds: Any, contract: Contract) -> dict[str, torch.Tensor]:
    """Row count, features, label type and finite values of one loaded config; returns its pixels and labels."""
    budget, arch = contract.budgets[name], contract.protocol.architecture
    label = ds.features.get("label")
    if type(label).__name__ != "ClassLabel" or label.num_classes != arch.num_classes:
        raise DistillerError(f"{folder / name}: label must be a ClassLabel column of {arch.num_classes} classes")
    classes = label.num_classes
    if len(ds) != budget.rows or len(ds) != budget.images_per_class * classes:
        raise DistillerError(
            f"{folder / name}: {len(ds)} rows, but the card says {budget.rows} (distiller.budgets.{name}.rows; "
            f"images_per_class {budget.images_per_class} x {classes} classes)"
        )
    feat = ds.features.get("pixel_values")
    if type(feat).__name__ != "Array3D" or getattr(feat, "dtype", None) != "float32":
        raise DistillerError(f"{folder / name}: pixel_values must be a float32 Array3D column")
    if [type(d) for d in feat.shape] != [int] * 3 or tuple(feat.shape) != tuple(arch.input_shape):  # True == 1
        raise DistillerError(
            f"{folder / name}: pixel_values are {feat.shape}, the card's network takes {arch.input_shape}"
        )
    columns = ["pixel_values", "label", *(["soft_label"] if "soft_label" in ds.features else [])]
    if contract.labels.train_on == "soft_label" and "soft_label" not in ds.features:
        raise DistillerError(f"{folder / name}: the card says to train on soft_label, but the column is missing")
    try:
        t = ds.select_columns(columns).with_format("torch")[:]  # dict of whole-column tensors
    except (TypeError, ValueError) as e:  # the card's dataset_info declares features the parquet does not hold
        raise DistillerError(f"{folder / name}: its rows do not read as the card declares ({first_line(e)})") from None
    for column in (c for c in columns if c != "label"):
        if not isinstance(t[column], torch.Tensor) or not torch.isfinite(t[column]).all():
            raise DistillerError(f"{folder / name}: {column} holds NaN or infinite values, or rows of other shapes")
    if "soft_label" in t and tuple(t["soft_label"].shape) != (len(ds), classes):
        raise DistillerError(f"{folder / name}: soft_label rows must hold {classes} values each")
    labels = t["label"]
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise DistillerError(f"{folder / name}: a label outside 0..{classes - 1}")
    if bool((torch.bincount(labels, minlength=classes) != budget.images_per_class).any()):
        raise DistillerError(f"{folder / name}: not {budget.images_per_class} rows of every class")
    return {"pixel_values": t["pixel_values"], "label": labels}


def _sidecar_names(contract: Contract) -> list[str]:
    return [f for f in (contract.preprocessing.file, contract.source.test_split.file) if f]
