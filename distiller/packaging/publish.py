"""Publish a validated datasets folder: to the Hugging Face Hub as a tagged version, or to a directory.

Publishing is never a pipeline stage, only an explicit command. To the Hub it is `create_repo` (exist_ok), one
`upload_folder` (one commit holding every config, the card and the sidecars) and `create_tag(v<version>)` on that
commit's id, so `load_dataset(repo, "ipc10", revision="v1.2.0")` pins it (docs/packaging.md). An existing tag is never
moved. Upload and tag are two calls: when the tag fails, the commit stays on main untagged, the error says so, and the
same command run again finds it (the head of main holding exactly these files) and tags it instead of uploading. The
token comes from `HF_TOKEN` or the stored login and is never printed or written; every error is one line with the
local folder untouched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distiller.core.errors import DistillerError, first_line
from distiller.core.files import UMASK, output_named, temporary
from distiller.core.params import SEMVER
from distiller.packaging import experts_hub
from distiller.packaging.folder import copy_declared, hub_patterns
from distiller.packaging.validate import validate


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
    experts: bool = False,
) -> Published:
    """Validate, then create the dataset repo if needed, upload the folder in one commit and tag it v<version>.

    `version` defaults to the card's and must equal it (the card states the version it is published as). `api` is an
    `HfApi` (tests pass an autospec'd one); `token` defaults to `HF_TOKEN` or the stored login. With `experts`, the
    folder is an expert buffer: checked (`experts_hub`), it goes with its card to a model repo (version default
    1.0.0)."""
    folder = Path(folder)
    if experts:
        version = semantic(version or "1.0.0")
        with tempfile.TemporaryDirectory(prefix="distiller-experts-") as tmp:
            files = experts_hub.stage(folder, Path(tmp), version)
            return _upload(Path(tmp), tuple(files), repo_id, "model", version, private, token, api, title=folder.name)
    report = validate(folder)
    version = version or report.version
    if version != report.version:
        raise DistillerError(
            f"--version {version} differs from the card's version {report.version}; rebuild the folder with "
            f"-S package.version={version} so the card says what the tag says"
        )
    return _upload(folder, report.files, repo_id, "dataset", version, private, token, api)


def semantic(version: str) -> str:
    """`version`, refused unless it is a semantic version (the tag, and the card's `version`, are v<version>)."""
    if not SEMVER.fullmatch(version):
        raise DistillerError(f"--version must be a semantic version like 1.2.0, got '{version}'")
    return version


def _upload(
    folder: Path,
    files: tuple[str, ...],
    repo_id: str,
    repo_type: str,
    version: str,
    private: bool,
    token: str | None,
    api: Any,
    title: str = "",
) -> Published:
    """`files` of `folder` as one commit of the Hub repo (created if needed), tagged v<version>; a tag is never
    moved, the token never printed, every failure one line. `title` names the commit (default: the folder's name)."""
    tag = f"v{semantic(version)}"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise DistillerError("HF_HUB_OFFLINE is set: publishing to the Hub needs the network (unset it)")
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise DistillerError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    if len(token) < 8:  # the Hub's tokens are ~37 characters; a short one would match any file by chance below
        raise DistillerError("the Hugging Face token is too short to be one: set HF_TOKEN or run `hf auth login`")
    leaking = [folder / f for f in files if token.encode() in (folder / f).read_bytes()]
    if leaking:
        raise DistillerError(f"{leaking[0]}: contains the Hugging Face token; remove it before publishing")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, token=token)
        refs = api.list_repo_refs(repo_id, repo_type=repo_type, token=token)
        if tag in {t.name for t in refs.tags}:
            raise DistillerError(f"tag {tag} already exists on {repo_id}; tags are never moved: bump the version")
        commit = _head_holding(api, repo_id, repo_type, token, folder, files)  # an earlier run's, never tagged
        if commit is None:
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                allow_patterns=hub_patterns(files),  # the files that were checked, nothing else
                repo_type=repo_type,
                commit_message=f"{title or folder.name} {tag}",
                delete_patterns=list(STALE),  # the same commit drops files this version no longer has
                token=token,
            ).oid
    except DistillerError:
        raise
    except Exception as e:
        raise DistillerError(_hub_error(e, repo_id, tag, token)) from None
    try:
        message = f"{title or folder.name} {tag}"
        api.create_tag(repo_id, tag=tag, tag_message=message, revision=commit, repo_type=repo_type, token=token)
    except Exception as e:
        raise DistillerError(
            f"{_hub_error(e, repo_id, tag, token)}; commit {commit} on {repo_id} holds these files but is not tagged "
            f"{tag}: run the same command again to tag it (nothing is uploaded twice)"
        ) from None
    kind = "datasets/" if repo_type == "dataset" else ""
    return Published(repo_id, tag, commit, f"https://huggingface.co/{kind}{repo_id}/tree/{tag}")


STALE = ("*.parquet", "*.safetensors", "*.png")  # files of an earlier version that the upload deletes when not sent


def _head_holding(api: Any, repo_id: str, repo_type: str, token: str, folder: Path, files: tuple[str, ...]) -> Any:
    """The commit at the head of the repo's main branch when it holds exactly what the upload would make of it: each
    of `files` with these bytes, and no stale file the upload would delete. That is an earlier publish of this very
    folder whose tag failed; None otherwise (a new repo, other bytes, another version)."""
    head = api.repo_info(repo_id, repo_type=repo_type, token=token).sha
    tree = api.list_repo_tree(repo_id, revision=head, repo_type=repo_type, recursive=True, token=token)
    remote = {f.path: f for f in tree if hasattr(f, "blob_id")}  # files, not folders
    if any(name not in files and any(fnmatch.fnmatch(name, p) for p in STALE) for name in remote):
        return None
    return head if all(name in remote and _same(remote[name], folder / name) for name in files) else None


def _same(remote: Any, local: Path) -> bool:
    """Whether a file on the Hub holds `local`'s bytes: an LFS file by the sha256 of its content, a plain one by its
    git blob id (sha1 of "blob <size>\\0" and the bytes)."""
    data = local.read_bytes()
    if remote.lfs is not None:
        return bool(remote.lfs.sha256 == hashlib.sha256(data).hexdigest())
    return bool(remote.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())


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
        text = f"cannot reach the Hugging Face Hub ({type(e).__name__}: {first_line(e)})"
    return text.replace(token, "***") if token else text


def publish_to_dir(folder: Path | str, dest: Path | str) -> Path:
    """Validate, then copy the folder's files (all declared by its card) to `dest` (which must not exist or be
    empty), world-readable, atomically."""
    folder = Path(folder)
    report = validate(folder)
    return _to_dir(folder, Path(dest), lambda tmp: copy_declared(folder, report.files, tmp))


def publish_experts_to_dir(folder: Path | str, dest: Path | str, version: str = "1.0.0") -> Path:
    """Check an expert buffer, then copy it with its card to `dest` (new or empty), atomically."""
    folder, version = Path(folder), semantic(version)
    return _to_dir(folder, Path(dest), lambda tmp: experts_hub.stage(folder, tmp, version))


def _to_dir(folder: Path, dest: Path, fill: Callable[[Path], object]) -> Path:
    if dest.is_symlink():  # a link (dangling, or a loop) would send the copy elsewhere
        raise DistillerError(f"{dest}: the destination is a symbolic link; give a real path")
    real, source = Path(os.path.realpath(dest)), Path(os.path.realpath(folder))
    if real == source or source in real.parents:
        raise DistillerError(f"{dest}: the destination is inside the folder it would copy")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DistillerError(f"{dest}: destination exists and is not an empty directory")
    tmp = temporary(dest, directory=True)
    try:
        with output_named(tmp, dest):  # a full disk names the destination's file, not the source or the temporary
            tmp.chmod(0o777 & ~UMASK)  # mkdtemp's 0700 would make the copy private
            fill(tmp)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
