"""Validate a packaged datasets folder and publish it: to the Hugging Face Hub as a tagged version, or to a directory.

Publishing is never a pipeline stage, only an explicit command. To the Hub it is three calls (ecosystem.md section 2):
`create_repo` (exist_ok), one `upload_folder` (one atomic commit holding every config, the card and the sidecars),
`create_tag(v<version>)` on that commit's id, so `load_dataset(repo, "ipc10", revision="v1.2.0")` pins it. An existing
tag is never moved. The token comes from `HF_TOKEN` or the stored login and is never printed or written; every error
is one line with the local folder untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distiller._runtime import DistillerError, first_line
from distiller.params import SEMVER

REQUIRED_CARD = ("license", "task_categories", "size_categories", "source_datasets", "tags", "pretty_name")
REQUIRED_DISTILLER = (
    *("version", "git_commit", "dvc_lock_sha256", "method", "method_params"),
    *("source", "preprocessing", "protocol", "budgets"),
)
REQUIRED_BUDGET = ("images_per_class", "rows", "lr", "accuracy", "random_real")


@dataclass(frozen=True)
class Report:
    """What `validate` checked: config name -> rows, the default config and the card's version."""

    folder: Path
    configs: dict[str, int]
    default: str
    version: str
    method: str

    def summary(self) -> str:
        rows = ", ".join(f"{name} {n} rows" for name, n in self.configs.items())
        return f"{self.folder}: valid ({self.method}, version {self.version}; {rows}; default {self.default})"


# ---------------------------------------------------------------------------------------------------------------------
# validation


def validate(folder: Path | str) -> Report:
    """Check a folder the way a consumer will use it: the card parses and carries its contract, every config loads
    with `datasets.load_dataset` with the declared row counts and features, configs nest, sidecars load."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DistillerError(f"dataset folder not found: {folder}")
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise DistillerError(f"{path}: symbolic links are not published (copy the file into the folder)")
    card_path = folder / "README.md"
    if not card_path.is_file():
        raise DistillerError(f"{card_path}: missing dataset card")
    meta, configs = _card(card_path)
    default = _configs(folder, configs, meta)
    report = Report(folder, {}, default, str(meta["version"]), str(meta["method"]))
    with tempfile.TemporaryDirectory(prefix="distiller-validate-") as cache:  # validation leaves no cache behind
        previous: dict[str, torch.Tensor] | None = None
        for cfg in configs:
            name = cfg["config_name"]
            current = _check_config(folder, name, _load(folder, name, cache), meta)
            if previous is not None:
                n = len(previous["label"])
                same = torch.equal(current["pixel_values"][:n], previous["pixel_values"]) and torch.equal(
                    current["label"][:n], previous["label"]
                )
                if not same:
                    raise DistillerError(f"{folder / name}: its first {n} rows are not the previous config's")
            previous = current
            report.configs[name] = len(current["label"])
    _sidecars(folder, meta)
    return report


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
        first = first_line(e)
        raise DistillerError(f"{folder / name}: config '{name}' does not load ({first})") from None


def _check_config(folder: Path, name: str, ds: Any, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Row count, features and label type of one loaded config; returns its pixels and labels."""
    budget = meta["budgets"][name]
    label = ds.features.get("label")
    if type(label).__name__ != "ClassLabel":
        raise DistillerError(f"{folder / name}: label must be a ClassLabel column")
    classes = label.num_classes
    if len(ds) != budget["rows"] or len(ds) != budget["images_per_class"] * classes:
        raise DistillerError(
            f"{folder / name}: {len(ds)} rows, but the card says {budget['rows']} "
            f"({budget['images_per_class']} per class x {classes} classes)"
        )
    feat = ds.features.get("pixel_values")
    if type(feat).__name__ != "Array3D" or getattr(feat, "dtype", None) != "float32":
        raise DistillerError(f"{folder / name}: pixel_values must be a float32 Array3D column")
    if meta.get("labels", {}).get("train_on") == "soft_label" and "soft_label" not in ds.features:
        raise DistillerError(f"{folder / name}: the card says to train on soft_label, but the column is missing")
    t = ds.select_columns(["pixel_values", "label"]).with_format("torch")[:]  # dict of whole-column tensors
    return {"pixel_values": t["pixel_values"], "label": t["label"]}


def _card(card_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(card_path)
    except Exception as e:  # the card parser raises ValueError, YAMLError, ... for a broken front matter
        first = first_line(e)
        raise DistillerError(f"{card_path}: the card does not parse ({first})") from None
    data = card.data.to_dict()
    missing = [k for k in REQUIRED_CARD if not data.get(k)]
    if missing:
        raise DistillerError(f"{card_path}: card YAML lacks {', '.join(missing)}")
    meta = data.get("distiller")
    if not isinstance(meta, dict):
        raise DistillerError(f"{card_path}: card YAML lacks the `distiller:` mapping")
    missing = [k for k in REQUIRED_DISTILLER if k not in meta]
    if missing:
        raise DistillerError(f"{card_path}: distiller mapping lacks {', '.join(missing)}")
    if not SEMVER.fullmatch(str(meta["version"])):
        raise DistillerError(f"{card_path}: distiller.version '{meta['version']}' is not a semantic version")
    configs = data.get("configs")
    if not isinstance(configs, list) or not configs:
        raise DistillerError(f"{card_path}: card YAML lacks `configs`")
    return meta, configs


def _configs(folder: Path, configs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Configs, data files and the `budgets` mapping agree, and exactly one config is the default."""
    names = [c.get("config_name") for c in configs]
    defaults = [c.get("config_name") for c in configs if c.get("default")]
    if len(defaults) != 1:
        raise DistillerError(f"{folder / 'README.md'}: exactly one config must be the default, found {defaults}")
    if sorted(names, key=str) != sorted(meta["budgets"], key=str):
        raise DistillerError(
            f"{folder / 'README.md'}: configs {names} do not match distiller.budgets {list(meta['budgets'])}"
        )
    claimed: set[Path] = set()
    for cfg in configs:
        name = cfg["config_name"]
        missing = [k for k in REQUIRED_BUDGET if k not in meta["budgets"][name]]
        if missing:
            raise DistillerError(f"{folder / 'README.md'}: distiller.budgets.{name} lacks {', '.join(missing)}")
        files = cfg.get("data_files")
        patterns = [f["path"] for f in files] if isinstance(files, list) else [files]
        matched = [p for pattern in patterns for p in folder.glob(str(pattern))]
        if not matched:
            raise DistillerError(f"{folder / name}: config '{name}' declares {patterns} but no such file exists")
        claimed.update(matched)
    strays = sorted(set(folder.rglob("*.parquet")) - claimed)
    if strays:
        raise DistillerError(f"{strays[0]}: a data file no config declares")
    return str(defaults[0])


def _sidecars(folder: Path, meta: dict[str, Any]) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = [meta["preprocessing"].get("file"), meta["source"].get("test_split", {}).get("file")]
    for rel in filter(None, files):
        path = folder / rel
        try:
            load_file(str(path))
        except (SafetensorError, OSError, FileNotFoundError) as e:
            raise DistillerError(f"{path}: sidecar missing or unreadable ({type(e).__name__})") from None


# ---------------------------------------------------------------------------------------------------------------------
# publishing


@dataclass(frozen=True)
class Published:
    repo_id: str
    tag: str
    commit: str
    url: str


def publish_to_hub(
    folder: Path | str,
    repo_id: str,
    *,
    version: str | None = None,
    private: bool = False,
    token: str | None = None,
    api: Any = None,
) -> Published:
    """Validate, then create the dataset repo if needed, upload the folder in one commit and tag it v<version>.

    `version` defaults to the card's and must equal it (the card states the version it is published as). `api` is an
    `HfApi` (tests pass an autospec'd one); `token` defaults to `HF_TOKEN` or the stored login."""
    folder = Path(folder)
    report = validate(folder)
    version = version or report.version
    if version != report.version:
        raise DistillerError(
            f"--version {version} differs from the card's version {report.version}; rebuild the folder with "
            f"-S package.version={version} so the card says what the tag says"
        )
    if not SEMVER.fullmatch(version):
        raise DistillerError(f"--version must be a semantic version like 1.2.0, got '{version}'")
    tag = f"v{version}"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise DistillerError("HF_HUB_OFFLINE is set: publishing to the Hub needs the network (unset it)")
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise DistillerError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    leaking = [f for f in sorted(folder.rglob("*")) if f.is_file() and token.encode() in f.read_bytes()]
    if leaking:
        raise DistillerError(f"{leaking[0]}: contains the Hugging Face token; remove it before publishing")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
        refs = api.list_repo_refs(repo_id, repo_type="dataset", token=token)
        if tag in {t.name for t in refs.tags}:
            raise DistillerError(
                f"tag {tag} already exists on {repo_id}; tags are never moved: bump package.version and rebuild"
            )
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="dataset",
            commit_message=f"{folder.name} {tag}",
            # the same commit drops shards of configs this version no longer has
            delete_patterns=["*.parquet", "*.safetensors", "*.png"],
            token=token,
        )
        api.create_tag(
            repo_id,
            tag=tag,
            tag_message=f"{folder.name} {tag}",
            revision=info.oid,
            repo_type="dataset",
            token=token,
        )
    except DistillerError:
        raise
    except Exception as e:
        raise DistillerError(_hub_error(e, repo_id, tag, token)) from None
    return Published(repo_id, tag, info.oid, f"https://huggingface.co/datasets/{repo_id}/tree/{tag}")


def _hub_error(e: Exception, repo_id: str, tag: str, token: str) -> str:
    """One line for the user, with the token scrubbed from anything the server or client said."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, OfflineModeIsEnabled):
        text = "HF_HUB_OFFLINE is set: publishing to the Hub needs the network (unset it)"
    elif isinstance(e, HfHubHTTPError) and status == 401:
        text = "the Hub refused the token (401): log in again with `hf auth login` or set a valid HF_TOKEN"
    elif isinstance(e, HfHubHTTPError) and status == 403:
        text = f"no permission to write to {repo_id} (403): use a token with write access to it"
    elif isinstance(e, HfHubHTTPError) and status == 409:
        text = f"the Hub refused {tag} on {repo_id} (409: it exists); bump package.version and rebuild"
    elif isinstance(e, HfHubHTTPError):
        text = f"the Hub answered {status} for {repo_id}: {first_line(e)}"
    else:
        text = f"cannot reach the Hugging Face Hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return text.replace(token, "***") if token else text


def publish_to_dir(folder: Path | str, dest: Path | str) -> Path:
    """Validate, then copy the folder to `dest` (which must not exist or be empty), atomically."""
    folder, dest = Path(folder), Path(dest)
    validate(folder)
    if dest.resolve() == folder.resolve() or folder.resolve() in dest.resolve().parents:
        raise DistillerError(f"{dest}: the destination is inside the dataset folder")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DistillerError(f"{dest}: destination exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        shutil.rmtree(tmp)
        shutil.copytree(folder, tmp, symlinks=False)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
