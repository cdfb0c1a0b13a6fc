"""Expert buffers as shareable artifacts: published as a Hub model repo, fetched by `expert.from` instead of trained.

MTT's buffer is the expensive part of a run (CIFAR-10: 100 experts x 50 epochs). `distiller publish experts` checks
the buffer (its sealed manifest, and every trajectory against the seal the manifest records) and uploads its files
with a card (architecture, data hash, preprocessing, lr, epochs, the experts' accuracies) as one commit of a model
repo, tagged v<version>. With `expert.from: hf:org/name[@revision]` (or a folder), the expert-buffer stage fetches a
buffer and verifies it against this run instead of training: the data hash (which covers the preprocessing), the
architecture and every param the experts were trained with must be this run's, or the buffer is refused naming them;
then its files become `artifacts/experts/`, its manifest recording under `fetched` the commit the download held (the
revision, or main, resolved), which the distilled set's provenance and the card carry on. Every file name a manifest
lists stays inside its folder.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import yaml

from distiller.core.errors import DistillerError
from distiller.methods.buffer import MANIFEST, load_trajectory, read_manifest

CARD = "README.md"


def checked_manifest(folder: Path) -> tuple[dict[str, Any], list[Path]]:
    """The buffer's manifest (`buffer.read_manifest`: its fields typed, its experts named as distiller names them,
    inside the folder) and its experts' paths, after each was read and matched against its recorded seal."""
    info, paths = read_manifest(folder)
    for path, seal in zip(paths, info["seals"], strict=True):
        load_trajectory(path, info, seal)
    return info, paths


def card(info: dict[str, Any], version: str) -> str:
    """The model card: what the experts were trained on and with, and how well they do."""
    accs = [float(a) for a in info["test_accuracy"]]
    arch = info["architecture"]
    front = {
        "library_name": "distiller",
        "license": "other",
        "tags": ["dataset-distillation", "mtt", "expert-trajectories", "distiller"],
        "distiller_experts": {k: v for k, v in info.items() if k not in ("files", "seals")} | {"version": version},
    }
    summary = f"{100 * statistics.fmean(accs):.2f} % (min {100 * min(accs):.2f}, max {100 * max(accs):.2f})"
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n"
        f"# MTT expert trajectories: {info['num_experts']} x {info['epochs']} epochs on {info['dataset']}\n\n"
        f"Each `expert_NNN.safetensors` holds one expert's parameters before training and after every epoch, by name "
        f"(`epoch003/features.0.weight`), sealed; `{MANIFEST}` lists them with their seals. Trained with "
        f"{info['optimizer']} at lr {info['lr']}, batch {info['batch_size']}, seed {info['seed']}, on the prepared "
        f"data of hash `{info['dataset_hash']}` ({info.get('preprocess', 'normalize')}); network: "
        f"`{json.dumps(arch)}`. Final test accuracy of the experts: {summary}.\n\n"
        f"Use them in a distiller project with `expert.from: hf:<this repo>@v{version}`: the expert-buffer stage "
        f"fetches and verifies them (same data hash and network) instead of training.\n"
    )


def stage(folder: Path, out: Path, version: str) -> list[str]:
    """Copy a checked buffer and its card into the empty folder `out`; returns the files to upload."""
    info, paths = checked_manifest(folder)
    for path in [folder / MANIFEST, *paths]:
        shutil.copyfile(path, out / path.name)
    (out / CARD).write_text(card(info, version))
    return [CARD, MANIFEST, *(path.name for path in paths)]


COMMIT = re.compile(r"[0-9a-f]{40}")


def fetch(spec: str) -> tuple[Path, dict[str, str] | None]:
    """A buffer folder and, for `hf:org/name[@revision]` (a model repo, downloaded), where it came from: the repo, the
    revision asked for ("main" when none was) and the commit the download holds, so that `expert.from:
    hf:org/name@<commit>` repeats the run. A local buffer folder has no such record (None)."""
    if not spec.startswith("hf:"):
        folder = Path(spec)
        if not folder.is_dir():
            raise DistillerError(f"expert.from {spec}: not a folder (give hf:org/name[@revision] or a buffer folder)")
        return folder, None
    repo, _, revision = spec.removeprefix("hf:").partition("@")
    if repo.count("/") != 1:
        raise DistillerError(f"expert.from {spec}: give hf:org/name[@revision]")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, repo_type="model", revision=revision or None))
    except Exception as e:  # not found, offline, no such revision, ...
        raise DistillerError(f"expert.from {spec}: cannot fetch it from the Hub ({type(e).__name__})") from None
    commit = folder.name  # the Hub cache keeps every download in snapshots/<commit>/, a tag or branch resolved
    if not COMMIT.fullmatch(commit):
        raise DistillerError(f"expert.from {spec}: the download ({folder}) does not say which commit it holds")
    return folder, {"repo": repo, "revision": revision or "main", "commit": commit}
