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
from distiller.core.files import read_sealed_json, write_sealed_json
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


def forged(trained: Path, tmp_path: Path, edit) -> Path:
    """A copy of the trained buffer whose manifest `edit` changed, its seal recomputed (a forger's, not an editor's)."""
    folder = tmp_path / "forged"
    shutil.copytree(Layout(trained).experts_dir, folder)
    info = read_sealed_json(folder / "manifest.json", "manifest", "")
    edit(info, folder)
    write_sealed_json(folder / "manifest.json", info)
    return folder


def from_folder(project: Path, folder: Path, *extra: str):
    args = ["expert-buffer", "--params", str(project / "params.yaml"), "--root", str(project)]
    return runner.invoke(app, [*args, "-S", f"expert.from={folder}", *extra])


def refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), result.stderr
    assert "Traceback" not in result.output


def _outside(name: str):
    def edit(info: dict, folder: Path) -> None:
        target = (folder / name) if not name.startswith("/") else Path(name)
        if target.parent.is_dir():  # the file it names exists and is a genuine expert of this buffer
            shutil.copyfile(folder / "expert_000.safetensors", target)
        info["files"][0] = name

    return edit


@pytest.mark.parametrize("name", ["../evil.safetensors", "../../evil.safetensors", "sub/expert_000.safetensors"])
def test_a_manifest_naming_files_outside_its_buffer_is_refused(trained: Path, tmp_path: Path, name):
    """Names a manifest lists stay inside the buffer: nothing is read from, or written to, any other place."""
    folder = forged(trained, tmp_path / "shared" / "buffer", _outside(name))
    fresh = make_project(tmp_path / "fresh", RAW, "download")
    before = files(tmp_path)
    refused(from_folder(fresh, folder), "manifest.json", repr(name), "inside the folder")
    assert {k: v for k, v in files(tmp_path).items() if not k.endswith(".distiller.lock")} == before
    dest = tmp_path / "published"
    refused(runner.invoke(app, ["publish", str(folder), "--to", "dir", str(dest)]), repr(name), "inside the folder")
    assert not dest.exists() and not list(tmp_path.glob(".published*"))


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda info, _: info.update(test_accuracy=[]), "0 accuracies"),
        (lambda info, _: info.update(test_accuracy=[0.5, 7.0]), "test_accuracy: wrong type or out of range"),
        (lambda info, _: info.update(test_accuracy="high"), "test_accuracy: wrong type or out of range"),
        (lambda info, _: info.update(num_experts=5), "num_experts 5"),
        (lambda info, _: info.update(lr=float("nan")), "lr: wrong type"),
        (lambda info, _: info.update(seals=[1, 2]), "seals: wrong type"),
        (lambda info, _: info.update(architecture="convnet"), "architecture: wrong type"),
    ],
    ids=[
        "no accuracies",
        "accuracy above 1",
        "accuracy not a list",
        "more experts than files",
        "lr NaN",
        "seals",
        "arch",
    ],
)
def test_a_forged_manifest_is_one_line_for_publish_and_expert_from(trained: Path, tmp_path: Path, edit, fragment):
    folder = forged(trained, tmp_path, edit)
    dest = tmp_path / "published"
    refused(runner.invoke(app, ["publish", str(folder), "--to", "dir", str(dest)]), "manifest.json", fragment)
    assert not dest.exists()
    fresh = make_project(tmp_path / "fresh", RAW, "download")
    refused(from_folder(fresh, folder), "manifest.json", fragment)
    assert not Layout(fresh).experts_dir.exists()


OTHER = {**tiny(expert={"num_experts": 3, "epochs": 4, "lr": 0.02, "batch_size": 64, "augment": False}), "seed": 3}


@pytest.fixture(scope="module")
def other_buffer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuine buffer for the same data and network, trained with other expert params and seed."""
    return Layout(make_project(tmp_path_factory.mktemp("other"), OTHER, "download", "expert-buffer")).experts_dir


def test_experts_trained_with_other_params_are_refused_naming_them(other_buffer: Path, tmp_path: Path):
    fresh = make_project(tmp_path / "fresh", RAW, "download")
    result = from_folder(fresh, other_buffer)
    keys = ["expert.lr 0.02 (this run: 0.05)", "expert.epochs 4 (this run: 3)", "expert.batch_size 64", "seed 3"]
    refused(result, "expert.from", *keys, "expert.augment False (this run: True)", "expert.num_experts 3")
    assert not Layout(fresh).experts_dir.exists()


def test_experts_taken_with_their_params_give_a_card_that_states_them(other_buffer: Path, tmp_path: Path):
    """Set to the buffer's params, the run takes the experts, and the card states the params they were trained
    with; a later distill with other expert params refuses the buffer rather than stamp them."""
    fresh = make_project(tmp_path / "fresh", OTHER, "download")
    assert from_folder(fresh, other_buffer).exit_code == 0
    args = ["--params", str(fresh / "params.yaml"), "--root", str(fresh)]
    refused(runner.invoke(app, ["distill", *args, "-S", "expert.lr=0.05"]), "expert.lr 0.02 (this run: 0.05)")
    for stage in ("distill", "evaluate", "package"):
        assert runner.invoke(app, [stage, *args]).exit_code == 0, stage
    (folder,) = Layout(fresh).datasets_dir.iterdir()
    front = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    stated = front["distiller"]["method_params"]
    assert stated["seed"] == 3 and stated["expert"]["lr"] == 0.02 and stated["expert"]["epochs"] == 4
    assert stated["expert"]["batch_size"] == 64 and stated["expert"]["augment"] is False


@pytest.mark.parametrize("version", ["banana", "1.0", "v1.0.0", "1.0.0.0"])
def test_publish_experts_needs_a_semantic_version(trained: Path, tmp_path: Path, hub, version):
    api, store = hub
    refused(publish(trained, api, "--version", version), "--version must be a semantic version", repr(version))
    api.create_repo.assert_not_called()
    dest = tmp_path / "published"
    args = ["publish", str(Layout(trained).experts_dir), "--to", "dir", str(dest), "--version", version]
    refused(runner.invoke(app, args), "--version must be a semantic version")
    assert not dest.exists() and not store.exists()
