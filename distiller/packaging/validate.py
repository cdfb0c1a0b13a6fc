"""`distiller validate`: check a packaged datasets folder the way a consumer will use it, trusting nothing in it.

The folder holds only regular files, every one declared by the card (`distiller.packaging.folder`); the card is read
with limits (`distiller.core.safeyaml`) and its `distiller:` mapping is a valid `Contract` (every key by name, type and
range: accuracies in [0, 1], std >= 0, positive lr, ...) whose results agree with their own runs; the Hub metadata is
there; `configs`, the data files, `dataset_info` and the contract's budgets agree; every config loads with the real
`datasets.load_dataset` with the declared row count and features and finite pixels; configs nest; the sidecars load
and are finite. Every failure is one line naming the file.
"""

from __future__ import annotations

import math
import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distiller.core import safeyaml
from distiller.core.errors import DistillerError, first_line
from distiller.core.params import SEMVER
from distiller.core.runtime import quiet_datasets
from distiller.packaging.contract import Contract, Result
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


def validate(folder: Path | str) -> Report:
    """Check `folder` (see the module's docstring); returns what was checked."""
    folder = Path(folder)
    files = inventory(folder)
    if CARD not in files:
        raise DistillerError(f"{folder / CARD}: missing dataset card")
    card = read_card(folder / CARD)
    data_files = _configs(folder, files, card)
    sidecars = [inside(folder, rel, "sidecar") for rel in _sidecar_names(card.contract)]
    shown = shown_files(folder, card.text, files)
    declared = {CARD, *sidecars, *shown}
    refuse_undeclared(folder, files, declared.union(*data_files.values()))
    _claims(card)
    report = Report(folder, {}, card.contract.default_config, card.contract.version, card.contract.method, files)
    with tempfile.TemporaryDirectory(prefix="distiller-validate-") as tmp, quiet_datasets():  # and leaves no cache
        staged = Path(tmp) / "folder"  # a copy under a plain name: datasets reads the folder's path as a glob
        copy_declared(folder, files, staged)
        previous: dict[str, torch.Tensor] | None = None
        for name, _ in sorted(card.contract.budgets.items(), key=lambda kv: kv[1].images_per_class):  # nesting order
            current = _check_config(folder, name, _load(staged, folder, name, tmp), card.contract)
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
    return report


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
    configs = data.get("configs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, dict) for c in configs):
        raise DistillerError(f"{card_path}: card YAML lacks `configs` (a list of config mappings)")
    return Card(card_path, text, data, contract, configs)


def _configs(folder: Path, files: tuple[str, ...], card: Card) -> dict[str, list[str]]:
    """Configs, data files, dataset_info and the contract's budgets agree, and the contract's default config is the
    one default; returns each config's data files."""
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
    _sizes(folder, card, claimed)
    return claimed


def _sizes(folder: Path, card: Card, claimed: dict[str, list[str]]) -> None:
    """`dataset_info.download_size` of each config is the size of its data files (row counts are checked when the
    config loads: `datasets` compares them with `num_examples`)."""
    infos = card.data.get("dataset_info")
    for info in infos if isinstance(infos, list) else [infos]:
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("config_name"), str)
            or info["config_name"] not in claimed
        ):
            raise DistillerError(f"{card.path}: dataset_info must hold one entry per config, got {info!r:.80}")
        name, declared = info["config_name"], info.get("download_size")
        actual = sum((folder / f).stat().st_size for f in claimed[name])
        if declared != actual:
            raise DistillerError(
                f"{folder / name}: its data files hold {actual} bytes, but the card's dataset_info says {declared}"
            )


def _claims(card: Card) -> None:
    """Every result of the contract agrees with its own runs: as many values as runs, their mean and std."""
    c = card.contract
    results: dict[str, Result | None] = {"full_data": c.full_data}
    for name, b in c.budgets.items():
        results |= {f"budgets.{name}.{k}": getattr(b, k) for k in ("accuracy", "random_real", "direct", "naive_subset")}
    results |= {f"cross_architecture.{k}": r for k, r in (c.cross_architecture or {}).items()}
    for key, r in results.items():
        if r is None:
            continue
        agree = len(r.values) == r.runs and math.isclose(r.mean, statistics.fmean(r.values), abs_tol=1e-6)
        if not agree or not math.isclose(r.std, statistics.pstdev(r.values), abs_tol=1e-6):
            raise DistillerError(
                f"{card.path}: distiller.{key} claims mean {r.mean} +- {r.std} over {r.runs} runs, but its values "
                f"{list(r.values)} say otherwise"
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
            f"{folder / name}: {len(ds)} rows, but the card says {budget.rows} "
            f"({budget.images_per_class} per class x {classes} classes)"
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
        if not torch.isfinite(t[column]).all():
            raise DistillerError(f"{folder / name}: {column} holds NaN or infinite values")
    return {"pixel_values": t["pixel_values"], "label": t["label"]}


def _sidecar_names(contract: Contract) -> list[str]:
    return [f for f in (contract.preprocessing.file, contract.source.test_split.file) if f]
