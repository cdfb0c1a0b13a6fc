"""Publishing: the Hub recipe against an autospec'd HfApi, the offline guard, `--to dir`, and an opt-in live test."""

from __future__ import annotations

import filecmp
import fnmatch
import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import create_autospec, patch

import pytest
from helpers import STAGES, make_project, tiny
from huggingface_hub import HfApi
from huggingface_hub.hf_api import RepoFile
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.paths import Layout

runner = CliRunner()
SECRET = "hf_SECRETtokenDoNotPrint0123456789"
# read at import, before the autouse fixture clears the environment of every test
LIVE = os.environ.get("DISTILLER_LIVE_HUB") == "1" and bool(os.environ.get("HF_TOKEN"))
LIVE_TOKEN = os.environ.get("HF_TOKEN", "")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tiny(distill={"ipc": 2, "budgets": [1, 2]}, evaluate={"prefixes": True})
    root = make_project(tmp_path_factory.mktemp("pub"), raw, *STAGES)
    return Layout(root).package_dir("digits-distilled-ipc2")


def fake_api(tags: tuple[str, ...] = ()):
    """An HfApi double for a repo whose main holds none of the files (a new repo)."""
    api = create_autospec(HfApi, instance=True)
    api.list_repo_refs.return_value = SimpleNamespace(tags=[SimpleNamespace(name=t) for t in tags])
    api.repo_info.return_value = SimpleNamespace(sha="fe11" * 10)
    api.list_repo_tree.return_value = [RepoFile(path=".gitattributes", size=9, oid="0" * 40)]
    api.upload_folder.return_value = SimpleNamespace(oid="0123abcd" * 5)
    return api


LFS = (".parquet", ".safetensors", ".png")  # stored in LFS on the Hub: listed with the sha256 of their content


class Hub:
    """One Hub repo in memory: its commits (the files of each) and tags, served by an autospec'd HfApi whose answers
    are the real client's types (`RepoFile` with its git blob id, or LFS sha256)."""

    def __init__(self) -> None:
        self.commits: list[tuple[str, dict[str, bytes]]] = [("a0" * 20, {".gitattributes": b"*.parquet lfs\n"})]
        self.tags: dict[str, str] = {}

    @property
    def head(self) -> str:
        return self.commits[-1][0]

    def api(self):
        api = create_autospec(HfApi, instance=True)
        tags = lambda *a, **k: SimpleNamespace(tags=[SimpleNamespace(name=t) for t in self.tags])
        api.list_repo_refs.side_effect = tags
        api.repo_info.side_effect = lambda *a, **k: SimpleNamespace(sha=self.head)
        api.list_repo_tree.side_effect = self.tree
        api.upload_folder.side_effect = self.upload
        api.create_tag.side_effect = lambda repo_id, *, tag, revision, **k: self.tags.setdefault(tag, revision)
        return api

    def tree(self, repo_id, *, revision, **kwargs):
        files = dict(self.commits)[revision]
        return [self.entry(path, data) for path, data in files.items()]

    @staticmethod
    def entry(path: str, data: bytes) -> RepoFile:
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if not path.endswith(LFS):
            return RepoFile(path=path, size=len(data), oid=blob)
        lfs = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 130}
        return RepoFile(path=path, size=len(data), oid="f" * 40, lfs=lfs)

    def upload(self, *, folder_path, allow_patterns, delete_patterns, **kwargs):
        stale = lambda path: any(fnmatch.fnmatch(path, pattern) for pattern in delete_patterns)
        files = {path: data for path, data in self.commits[-1][1].items() if not stale(path)}
        files |= {name: (Path(folder_path) / name).read_bytes() for name in allow_patterns}
        self.commits.append((f"{len(self.commits):02d}" * 20, files))
        return SimpleNamespace(oid=self.head)


@pytest.fixture
def online(monkeypatch):
    """A token in the environment and the offline switch off, as on a user's machine."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def publish(folder: Path, api, *args: str):
    with patch("huggingface_hub.HfApi", return_value=api):
        return runner.invoke(app, ["publish", str(folder), "--to", "hub", "--repo", "org/digits-distilled", *args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_creates_uploads_one_commit_and_tags_it(folder: Path, online):
    api = fake_api()
    before = snapshot(folder)
    result = publish(folder, api, "--private")
    assert result.exit_code == 0, result.output
    calls = ["create_repo", "list_repo_refs", "repo_info", "list_repo_tree", "upload_folder", "create_tag"]
    assert [c[0] for c in api.method_calls] == calls
    create, _, _, _, upload, tag = api.method_calls
    assert create.args == ("org/digits-distilled",) and create.kwargs["repo_type"] == "dataset"
    assert create.kwargs["private"] is True and create.kwargs["exist_ok"] is True
    assert upload.kwargs["repo_type"] == "dataset" and upload.kwargs["folder_path"] == str(folder)
    assert tag.kwargs["tag"] == "v1.0.0" and tag.kwargs["revision"] == api.upload_folder.return_value.oid
    assert tag.kwargs["repo_type"] == "dataset"
    assert all(c.kwargs["token"] == SECRET for c in api.method_calls)  # handed to the client, never shown
    assert SECRET not in result.output and "v1.0.0" in result.stdout
    assert snapshot(folder) == before


def test_an_existing_tag_is_never_moved(folder: Path, online):
    api = fake_api(tags=("v1.0.0",))
    result = publish(folder, api)
    assert result.exit_code == 2 and "tag v1.0.0 already exists" in result.stderr, result.output
    api.upload_folder.assert_not_called()
    api.create_tag.assert_not_called()


def test_a_failed_tag_is_named_and_the_same_command_tags_the_uploaded_commit(folder: Path, online):
    """Upload and tag are two calls. The tag failing leaves the commit on main untagged: the error names it and says to
    run the command again, which finds it (main's head holds exactly these bytes) and tags it without uploading."""
    hub = Hub()
    api = hub.api()
    api.create_tag.side_effect = ConnectionError(f"connection reset while sending {SECRET}")
    result = publish(folder, api)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert f"commit {hub.head} on org/digits-distilled holds these files but is not tagged v1.0.0" in result.stderr
    assert "run the same command again" in result.stderr and SECRET not in result.output
    assert len(hub.commits) == 2 and hub.tags == {}
    api = hub.api()  # the network is back
    result = publish(folder, api)
    assert result.exit_code == 0, result.output
    api.upload_folder.assert_not_called()
    assert hub.tags == {"v1.0.0": hub.head} and len(hub.commits) == 2 and f"commit {hub.head}" in result.stdout
    again = publish(folder, hub.api())  # and once tagged, the tag is never moved
    assert again.exit_code == 2 and "tag v1.0.0 already exists" in again.stderr


@pytest.mark.parametrize("change", ["other bytes", "a stale shard"])
def test_a_head_that_is_not_this_folder_is_never_tagged(folder: Path, online, change: str):
    """Only a head holding exactly what the upload would make is tagged as it is: other bytes in a file, or a shard
    the upload would delete, mean a new commit."""
    hub = Hub()
    api = hub.api()
    api.create_tag.side_effect = ConnectionError("reset")
    publish(folder, api)
    sha, files = hub.commits[-1]
    if change == "other bytes":
        files = {**files, "README.md": files["README.md"] + b"\n"}
    else:
        files = {**files, "ipc5/train-00000-of-00001.parquet": b"PAR1"}
    hub.commits[-1] = (sha, files)
    api = hub.api()
    result = publish(folder, api)
    assert result.exit_code == 0, result.output
    api.upload_folder.assert_called_once()
    assert hub.tags == {"v1.0.0": hub.head} and len(hub.commits) == 3
    assert "ipc5/train-00000-of-00001.parquet" not in hub.commits[-1][1]


def test_no_token_is_one_line_and_calls_nothing(folder: Path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    api = fake_api()
    result = publish(folder, api)
    assert result.exit_code == 2 and "no Hugging Face token" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and api.method_calls == []


def _http_error(status: int):
    from huggingface_hub.errors import HfHubHTTPError

    httpx = importlib.import_module("httpx2" if importlib.util.find_spec("httpx2") else "httpx")  # hub's HTTP client
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} error, token {SECRET}", response=httpx.Response(status, request=request))


@pytest.mark.parametrize(
    ("failure", "fragment"),
    [
        (lambda: _http_error(403), "no permission to write to org/digits-distilled"),
        (lambda: _http_error(401), "refused the token"),
        (lambda: ConnectionError(f"connection refused while sending {SECRET}"), "cannot reach the Hugging Face Hub"),
    ],
)
def test_hub_failures_are_one_line_without_the_token(folder: Path, online, failure, fragment):
    api = fake_api()
    api.upload_folder.side_effect = failure()
    before = snapshot(folder)
    result = publish(folder, api)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr
    assert SECRET not in result.output and "Traceback" not in result.output
    api.create_tag.assert_not_called()
    assert snapshot(folder) == before


def test_a_file_holding_the_token_is_never_uploaded(folder: Path, online, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with (copy / "README.md").open("a") as card:
        card.write(f"\ntoken={SECRET}\n")
    api = fake_api()
    result = publish(copy, api)
    assert result.exit_code == 2 and "contains the Hugging Face token" in result.stderr, result.output
    assert SECRET not in result.output and api.method_calls == []


def test_version_must_match_the_card(folder: Path, online):
    api = fake_api()
    result = publish(folder, api, "--version", "1.2.0")
    assert result.exit_code == 2 and "differs from the card's version 1.0.0" in result.stderr, result.output
    assert api.method_calls == []


def test_an_invalid_folder_is_refused_before_any_call(folder: Path, online, tmp_path: Path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "ipc1/train-00000-of-00001.parquet").unlink()
    api = fake_api()
    result = publish(broken, api)
    assert result.exit_code == 2 and "config 'ipc1' declares" in result.stderr, result.output
    assert api.method_calls == []


def test_offline_guard_the_real_client_refuses(folder: Path, tmp_path: Path):
    """With HF_HUB_OFFLINE=1 set before import, the real HfApi raises, and `distiller publish` says so in one line."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_TOKEN": SECRET,
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
    }
    code = (
        "from huggingface_hub import HfApi\n"
        "from huggingface_hub.errors import OfflineModeIsEnabled\n"
        "try:\n    HfApi().create_repo('org/name', repo_type='dataset')\n"
        "except OfflineModeIsEnabled:\n    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "refused", out.stderr
    cli = [sys.executable, "-m", "distiller", "publish", str(folder), "--to", "hub", "--repo", "org/name"]
    out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "HF_HUB_OFFLINE is set" in out.stderr, out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_publish_to_a_directory_copies_the_validated_folder(folder: Path, tmp_path: Path):
    dest = tmp_path / "share" / folder.name
    result = runner.invoke(app, ["publish", str(folder), str(dest), "--to", "dir"])
    assert result.exit_code == 0, result.output
    assert snapshot(dest) == snapshot(folder)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    again = runner.invoke(app, ["publish", str(folder), str(dest), "--to", "dir"])
    assert again.exit_code == 2 and "not an empty directory" in again.stderr
    assert filecmp.cmp(dest / "README.md", folder / "README.md", shallow=False)
    missing = runner.invoke(app, ["publish", str(folder), "--to", "dir"])
    assert missing.exit_code == 2 and "needs a destination" in missing.stderr


@pytest.mark.integration
@pytest.mark.skipif(not LIVE, reason="live Hub test: set HF_TOKEN and DISTILLER_LIVE_HUB=1")
def test_live_round_trip_on_the_hub(folder: Path, tmp_path: Path):
    """Publish to a throwaway private repo, load the tagged version back, delete the repo."""
    api = HfApi(token=LIVE_TOKEN)
    repo = f"{api.whoami()['name']}/distiller-live-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HF_TOKEN": LIVE_TOKEN, "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    try:
        cli = [sys.executable, "-m", "distiller", "publish", str(folder), "--to", "hub", "--repo", repo, "--private"]
        out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        code = (
            "from datasets import load_dataset\n"
            f"print(len(load_dataset('{repo}', 'ipc1', split='train', revision='v1.0.0')))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert out.stdout.strip().splitlines()[-1] == "10", out.stderr
    finally:
        api.delete_repo(repo, repo_type="dataset", missing_ok=True)
