"""Where a result came from: package version, git commit and state, and the dvc.lock entries of the run.

Every artifact and the dataset card take their provenance from here, so there is one answer to "which code and
which inputs made this".
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from distiller import __version__
from distiller.core import safeyaml
from distiller.core.errors import DistillerError


def git(root: Path | str, *args: str) -> str | None:
    """stdout of `git <args>` run in `root`, or None outside a git checkout or without git."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(root: Path | str = ".") -> str | None:
    """The HEAD commit of the checkout holding `root`."""
    return (git(root, "rev-parse", "HEAD") or "").strip() or None


def git_state(root: Path | str) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it). Outputs of the tool itself do not count: dvc.lock, which
    every run rewrites, and the packaged sets under the checkout's top-level datasets/ (packaging one set must not
    mark the next set's card as made by changed code)."""
    commit = git_commit(root)
    if commit is None:
        return None, None
    status = git(root, "status", "--porcelain", "--untracked-files=no") or ""
    changed = [line[3:].split(" -> ")[-1].strip().strip('"') for line in status.splitlines() if line.strip()]
    return commit, any(path != "dvc.lock" and not path.startswith("datasets/") for path in changed)


def dvc_lock_sha256(path: Path) -> str | None:
    """sha256 of the canonical JSON of dvc.lock's entries for the stages upstream of `package` (the run that made
    the data: dvc writes each stage's entry as it completes, before the next stage starts). None without a lock.
    `check` is not upstream: its entry hashes all of params.yaml, keys that change no output included."""
    if not path.is_file():
        return None
    lock = safeyaml.load_file(path, "dvc lock file")
    if not lock:
        return None
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        raise DistillerError(f"{path}: not a dvc.lock (no `stages` mapping); delete it and rerun `dvc repro`")
    stages = {k: v for k, v in stages.items() if k not in ("package", "check")}  # check: params.yaml, not upstream
    return hashlib.sha256(json.dumps(stages, sort_keys=True).encode()).hexdigest() if stages else None


def stamp(params: dict[str, Any], **extra: object) -> dict[str, object]:
    """Resolved params (`params.to_dict`), package version and git commit, embedded in every artifact."""
    return {"distiller_version": __version__, "git_commit": git_commit(), "params": params, **extra}
