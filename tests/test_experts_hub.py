"""Expert buffers as shareable artifacts: `distiller publish experts` to a Hub model repo (an autospec'd HfApi whose
uploads land in a local folder) and `expert.from` fetching them back (the download mocked, offline), verified against
the run: the same bytes when they fit, one line naming the mismatch when they do not."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import create_autospec, patch

import pytest
import yaml
from helpers import make_project, tiny
from huggingface_hub import HfApi
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.files import read_sealed_json
from distiller.core.paths import Layout
from distiller.methods.buffer import MANIFEST
from distiller.methods.synthetic import load as load_synthetic
from distiller.packaging.contract import FetchedExperts
from distiller.packaging.validate import read_card

runner = CliRunner()
RAW = tiny(expert={"num_experts": 2, "epochs": 3})
TOKEN = "hf_" + "t" * 34
COMMIT = "c0ffee00" * 5


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("trained"), RAW, "download", "expert-buffer")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An HfApi double whose upload_folder copies what it is asked to upload into `tmp_path/hub`."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    store = tmp_path / "hub" / "snapshots" / COMMIT  # where snapshot_download leaves a download: its commit named
    api = create_autospec(HfApi, instance=True)
    api.list_repo_refs.return_value = SimpleNamespace(tags=[])
    api.repo_info.return_value = SimpleNamespace(sha="0" * 40)
    api.list_repo_tree.return_value = []

    def upload_folder(*, folder_path, allow_patterns, **kwargs):
        store.mkdir(parents=True)
        for name in allow_patterns:
            shutil.copyfile(Path(folder_path) / name, store / name)
        return SimpleNamespace(oid="feedbeef" * 5)

    api.upload_folder.side_effect = upload_folder
    return api, store


def publish(project: Path, api, *extra: str):
    args = ["publish", "experts", "--to", "hub", "--repo", "org/digits-experts", "--root", str(project), *extra]
    with patch("huggingface_hub.HfApi", return_value=api):
        return runner.invoke(app, args)


def fetch_into(project: Path, store: Path, *extra: str):
    """expert-buffer in `project` with expert.from naming the Hub repo, the download served from `store`."""
    spec = "expert.from=hf:org/digits-experts@v1.0.0"
    args = ["expert-buffer", "--params", str(project / "params.yaml"), "--root", str(project), "-S", spec, *extra]
    with patch("huggingface_hub.snapshot_download", return_value=str(store)) as download:
        result = runner.invoke(app, args)
    return result, download


def test_published_experts_come_back_as_the_same_buffer(trained: Path, tmp_path: Path, hub):
    api, store = hub
    result = publish(trained, api)
    assert result.exit_code == 0, result.output
    api.create_repo.assert_called_once_with(
        "org/digits-experts", repo_type="model", private=False, exist_ok=True, token=TOKEN
    )
    api.create_tag.assert_called_once()
    assert api.create_tag.call_args.kwargs["tag"] == "v1.0.0" and "huggingface.co/org/digits-experts" in result.stdout
    card = (store / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])["distiller_experts"]
    assert front["num_experts"] == 2 and front["epochs"] == 3 and front["architecture"]["arch"] == "convnet"
    assert len(front["test_accuracy"]) == 2 and "dataset_hash" in front and "preprocess" in front

    fresh = make_project(tmp_path / "fresh", RAW, "download")
    result, download = fetch_into(fresh, store)
    assert result.exit_code == 0, result.output
    download.assert_called_once_with("org/digits-experts", repo_type="model", revision="v1.0.0")
    got, made = files(Layout(fresh).experts_dir), files(Layout(trained).experts_dir)
    assert {k: v for k, v in got.items() if k != MANIFEST} == {k: v for k, v in made.items() if k != MANIFEST}
    fetched = {"repo": "org/digits-experts", "revision": "v1.0.0", "commit": COMMIT}
    manifest = read_sealed_json(Layout(fresh).experts_dir / MANIFEST, "manifest", "")
    assert manifest == {**read_sealed_json(Layout(trained).experts_dir / MANIFEST, "manifest", ""), "fetched": fetched}
    distilled = runner.invoke(app, ["distill", "--params", str(fresh / "params.yaml"), "--root", str(fresh)])
    assert distilled.exit_code == 0, distilled.output


def test_experts_fetched_without_a_revision_record_the_commit(trained: Path, tmp_path: Path, hub):
    """`expert.from: hf:REPO` (main, which moves): the commit the download held goes into the buffer's manifest, the
    distilled set's provenance and the card, so the run can be repeated with `hf:REPO@<commit>`."""
    api, store = hub
    assert publish(trained, api).exit_code == 0
    fresh = make_project(tmp_path / "fresh", RAW, "download")
    spec = "expert.from=hf:org/digits-experts"
    args = ["--params", str(fresh / "params.yaml"), "--root", str(fresh), "-S", spec]
    with patch("huggingface_hub.snapshot_download", return_value=str(store)) as download:
        assert runner.invoke(app, ["expert-buffer", *args]).exit_code == 0
    download.assert_called_once_with("org/digits-experts", repo_type="model", revision=None)
    fetched = {"repo": "org/digits-experts", "revision": "main", "commit": COMMIT}
    assert read_sealed_json(Layout(fresh).experts_dir / MANIFEST, "manifest", "")["fetched"] == fetched
    for stage in ("distill", "evaluate", "package"):
        result = runner.invoke(app, [stage, *args])
        assert result.exit_code == 0, result.output
    assert load_synthetic(Layout(fresh).synthetic)[1]["experts_fetched"] == fetched
    card = read_card(Layout(fresh).package_dir("digits-distilled-ipc1") / "README.md")
    assert card.contract.experts == FetchedExperts(**fetched) and f"at commit `{COMMIT}`" in card.text


def test_a_download_that_names_no_commit_is_refused(trained: Path, tmp_path: Path, hub):
    api, store = hub
    assert publish(trained, api).exit_code == 0
    elsewhere = tmp_path / "copied"
    shutil.copytree(store, elsewhere)
    fresh = make_project(tmp_path / "fresh", RAW, "download")
    result, _ = fetch_into(fresh, elsewhere)
    assert result.exit_code == 2 and "does not say which commit it holds" in result.stderr, result.output
    assert not Layout(fresh).experts_dir.exists()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (tiny(data={"split_seed": 1}), "trained on other data or preprocessing"),
        (tiny(data={"preprocess": "zca"}), "trained on other data or preprocessing"),
        (tiny(model={"width": 16}), "another network"),
    ],
    ids=["other split", "other preprocessing", "other network"],
)
def test_experts_that_do_not_fit_the_run_are_refused_by_name(trained: Path, tmp_path: Path, hub, raw, fragment):
    api, store = hub
    assert publish(trained, api).exit_code == 0
    other = make_project(tmp_path / "other", raw, "download")
    result, _ = fetch_into(other, store)
    assert result.exit_code == 2 and fragment in result.stderr and "expert.from" in result.stderr, result.output
    assert not Layout(other).experts_dir.exists()


def test_a_tampered_download_is_refused(trained: Path, tmp_path: Path, hub):
    api, store = hub
    assert publish(trained, api).exit_code == 0
    shutil.copyfile(store / "expert_000.safetensors", store / "expert_001.safetensors")
    fresh = make_project(tmp_path / "fresh", RAW, "download")
    result, _ = fetch_into(fresh, store)
    assert result.exit_code == 2 and "not the expert the manifest lists" in result.stderr, result.output


def test_a_local_buffer_folder_and_publish_to_dir(trained: Path, tmp_path: Path):
    dest = tmp_path / "shared-experts"
    result = runner.invoke(app, ["publish", str(Layout(trained).experts_dir), "--to", "dir", str(dest)])
    assert result.exit_code == 0, result.output
    assert (dest / "README.md").is_file() and (dest / "manifest.json").is_file()
    fresh = make_project(tmp_path / "fresh", RAW, "download")
    args = ["expert-buffer", "--params", str(fresh / "params.yaml"), "--root", str(fresh), "-S", f"expert.from={dest}"]
    assert runner.invoke(app, args).exit_code == 0
    assert files(Layout(fresh).experts_dir) == files(Layout(trained).experts_dir)


def test_publishing_a_ratbptt_buffer_is_refused(tmp_path: Path, hub):
    api, _ = hub
    project = make_project(tmp_path / "rat", tiny(distill={"method": "ratbptt"}), "download", "expert-buffer")
    result = publish(project, api)
    assert result.exit_code == 2 and "holds no experts" in result.stderr, result.output
    api.create_repo.assert_not_called()
