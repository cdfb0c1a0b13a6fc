"""`distiller validate`: check a packaged datasets folder the way a consumer will use it.

The card parses and its `distiller:` mapping is a valid `Contract` (every key by name and type); the Hub metadata is
there; `configs`, the data files and the contract's budgets agree; every config loads with the real
`datasets.load_dataset` with the declared row count and features; configs nest; the sidecars load; nothing is a
symbolic link. Every failure is one line naming the file.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distiller.contract import Contract
from distiller.errors import DistillerError, first_line
from distiller.params import SEMVER

REQUIRED_CARD = ("license", "task_categories", "size_categories", "source_datasets", "tags", "pretty_name")


@dataclass(frozen=True)
class Report:
    """What `validate` checked: config name -> rows, the default config, the card's version and method."""

    folder: Path
    configs: dict[str, int]
    default: str
    version: str
    method: str

    def summary(self) -> str:
        rows = ", ".join(f"{name} {n} rows" for name, n in self.configs.items())
        return f"{self.folder}: valid ({self.method}, version {self.version}; {rows}; default {self.default})"


def validate(folder: Path | str) -> Report:
    """Check `folder` (see the module's docstring); returns what was checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DistillerError(f"dataset folder not found: {folder}")
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise DistillerError(f"{path}: symbolic links are not published (copy the file into the folder)")
    card_path = folder / "README.md"
    if not card_path.is_file():
        raise DistillerError(f"{card_path}: missing dataset card")
    contract, configs = read_card(card_path)
    default = _configs(folder, configs, contract)
    report = Report(folder, {}, default, contract.version, contract.method)
    with tempfile.TemporaryDirectory(prefix="distiller-validate-") as cache:  # validation leaves no cache behind
        previous: dict[str, torch.Tensor] | None = None
        for cfg in configs:
            name = cfg["config_name"]
            current = _check_config(folder, name, _load(folder, name, cache), contract)
            if previous is not None:
                n = len(previous["label"])
                same = torch.equal(current["pixel_values"][:n], previous["pixel_values"]) and torch.equal(
                    current["label"][:n], previous["label"]
                )
                if not same:
                    raise DistillerError(f"{folder / name}: its first {n} rows are not the previous config's")
            previous = current
            report.configs[name] = len(current["label"])
    _sidecars(folder, contract)
    return report


def read_card(card_path: Path) -> tuple[Contract, list[dict[str, Any]]]:
    """The card's contract and its `configs`, checked."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(card_path)
    except Exception as e:  # the card parser raises ValueError, YAMLError, ... for a broken front matter
        raise DistillerError(f"{card_path}: the card does not parse ({first_line(e)})") from None
    data = card.data.to_dict()
    missing = [k for k in REQUIRED_CARD if not data.get(k)]
    if missing:
        raise DistillerError(f"{card_path}: card YAML lacks {', '.join(missing)}")
    if not isinstance(data.get("distiller"), dict):
        raise DistillerError(f"{card_path}: card YAML lacks the `distiller:` mapping")
    contract = Contract.from_dict(data["distiller"], where=str(card_path))
    if not SEMVER.fullmatch(contract.version):
        raise DistillerError(f"{card_path}: distiller.version '{contract.version}' is not a semantic version")
    configs = data.get("configs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, dict) for c in configs):
        raise DistillerError(f"{card_path}: card YAML lacks `configs` (a list of config mappings)")
    return contract, configs


def _configs(folder: Path, configs: list[dict[str, Any]], contract: Contract) -> str:
    """Configs, data files and the contract's budgets agree, and exactly one config is the default."""
    names = [c.get("config_name") for c in configs]
    defaults = [c.get("config_name") for c in configs if c.get("default")]
    if len(defaults) != 1:
        raise DistillerError(f"{folder / 'README.md'}: exactly one config must be the default, found {defaults}")
    if sorted(names, key=str) != sorted(contract.budgets, key=str):
        raise DistillerError(
            f"{folder / 'README.md'}: configs {names} do not match distiller.budgets {list(contract.budgets)}"
        )
    claimed: set[Path] = set()
    for cfg in configs:
        name = cfg["config_name"]
        files = cfg.get("data_files")
        patterns = [f.get("path") if isinstance(f, dict) else f for f in files] if isinstance(files, list) else [files]
        if not all(isinstance(p, str) and p and not Path(p).is_absolute() for p in patterns):
            raise DistillerError(
                f"{folder / 'README.md'}: config '{name}' has data_files {patterns}: give relative paths"
            )
        matched = [p for pattern in patterns for p in folder.glob(str(pattern))]
        if not matched:
            raise DistillerError(f"{folder / name}: config '{name}' declares {patterns} but no such file exists")
        claimed.update(matched)
    strays = sorted(set(folder.rglob("*.parquet")) - claimed)
    if strays:
        raise DistillerError(f"{strays[0]}: a data file no config declares")
    return str(defaults[0])


def _load(folder: Path, name: str, cache: str) -> Any:
    """One config through the real `load_dataset`, as a consumer loads it."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(str(folder), name, split="train", cache_dir=cache)
    except Exception as e:  # datasets raises many types for unreadable or mismatched files
        counts = re.findall(r"num_examples=(\d+)", str(e))
        if type(e).__name__ == "NonMatchingSplitsSizesError" and len(counts) == 2:  # (expected, recorded)
            raise DistillerError(
                f"{folder / name}: {counts[1]} rows, but the card's dataset_info says {counts[0]}"
            ) from None
        raise DistillerError(f"{folder / name}: config '{name}' does not load ({first_line(e)})") from None


def _check_config(folder: Path, name: str, ds: Any, contract: Contract) -> dict[str, torch.Tensor]:
    """Row count, features and label type of one loaded config; returns its pixels and labels."""
    budget = contract.budgets[name]
    label = ds.features.get("label")
    if type(label).__name__ != "ClassLabel":
        raise DistillerError(f"{folder / name}: label must be a ClassLabel column")
    classes = label.num_classes
    if len(ds) != budget.rows or len(ds) != budget.images_per_class * classes:
        raise DistillerError(
            f"{folder / name}: {len(ds)} rows, but the card says {budget.rows} "
            f"({budget.images_per_class} per class x {classes} classes)"
        )
    feat = ds.features.get("pixel_values")
    if type(feat).__name__ != "Array3D" or getattr(feat, "dtype", None) != "float32":
        raise DistillerError(f"{folder / name}: pixel_values must be a float32 Array3D column")
    if contract.labels.train_on == "soft_label" and "soft_label" not in ds.features:
        raise DistillerError(f"{folder / name}: the card says to train on soft_label, but the column is missing")
    t = ds.select_columns(["pixel_values", "label"]).with_format("torch")[:]  # dict of whole-column tensors
    return {"pixel_values": t["pixel_values"], "label": t["label"]}


def _sidecars(folder: Path, contract: Contract) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for rel in filter(None, [contract.preprocessing.file, contract.source.test_split.file]):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DistillerError(f"{folder / 'README.md'}: sidecar path '{rel}' leaves the folder")
        path = folder / rel
        try:
            load_file(str(path))
        except (SafetensorError, OSError, FileNotFoundError) as e:
            raise DistillerError(f"{path}: sidecar missing or unreadable ({type(e).__name__})") from None
