"""The package stage: a real Hugging Face datasets folder, loaded back offline with `load_dataset` exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import STAGES, TINY, make_project, tiny
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.params import params_from_dict
from distiller.core.paths import Layout
from distiller.data.prepared import load_prepared
from distiller.methods.synthetic import load as load_synthetic
from distiller.packaging import package

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _build(root: Path, **sections: dict) -> Path:
    raw = tiny(**sections)
    make_project(root, raw, *STAGES)
    p = params_from_dict(raw)
    return Layout(root).package_dir(p.package.folder(p.data.source, p.distill.ipc))


@pytest.fixture(scope="module")
def mtt_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MTT at 3 images per class, packaged with budgets 1, 2, 3 (prefixes of one set, `evaluate.prefixes`)."""
    return _build(tmp_path_factory.mktemp("mtt"), distill={"ipc": 3, "budgets": [1, 2]}, evaluate={"prefixes": True})


@pytest.fixture(scope="module")
def rat_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RaT-BPTT + Boost-DD with learned soft labels, budgets 1 and 2."""
    return _build(
        tmp_path_factory.mktemp("rat"),
        distill={"method": "ratbptt", "ipc": 2, "budgets": [1, 2]},
        ratbptt={"soft_labels": True},
    )


def load(folder: Path, name: str | None, tmp_path: Path):
    from datasets import load_dataset

    return load_dataset(str(folder), name, split="train", cache_dir=str(tmp_path / "cache"))


def test_block_order_makes_every_budget_a_prefix():
    index, block = package.block_order(num_classes=2, ipc=5, budgets=(1, 2, 5))
    # class-major set: class 0 is 0..4, class 1 is 5..9; blocks: {0,5}, {1,6}, {2,3,4,7,8,9}
    assert index.tolist() == [0, 5, 1, 6, 2, 3, 4, 7, 8, 9]
    assert block.tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 2, 2]


def test_layout_matches_the_hub_repository(mtt_folder: Path):
    assert mtt_folder.name == "digits-distilled-ipc3" and mtt_folder.parent.name == "datasets"
    files = sorted(str(p.relative_to(mtt_folder)) for p in mtt_folder.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "images/budgets.png",
        "images/grid.png",
        "ipc1/train-00000-of-00001.parquet",
        "ipc2/train-00000-of-00001.parquet",
        "ipc3/train-00000-of-00001.parquet",
        "preprocessing/normalization.safetensors",
        "preprocessing/split.safetensors",
    ]


def test_every_config_loads_offline_with_the_exact_distilled_tensors(mtt_folder: Path, tmp_path: Path, monkeypatch):
    from datasets import Array3D, ClassLabel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = mtt_folder.parents[1]
    syn, _ = load_synthetic(Layout(root).synthetic)
    data = load_prepared(Layout(root).prepared)
    previous = None
    for k in (1, 2, 3):
        ds = load(mtt_folder, f"ipc{k}", tmp_path)
        assert len(ds) == 10 * k
        assert isinstance(ds.features["pixel_values"], Array3D) and ds.features["pixel_values"].dtype == "float32"
        assert isinstance(ds.features["label"], ClassLabel) and ds.features["label"].names == list(data.classes)
        assert "soft_label" not in ds.features and ds.features["image"].__class__.__name__ == "Image"
        cols = ds.with_format("torch")[:]
        # the same images as the prefix of the distilled set, bit for bit (rows in block order)
        prefix = syn.prefix(k)
        got = sorted(zip(cols["label"].tolist(), cols["pixel_values"], strict=True), key=lambda t: t[0])
        for c in range(10):
            mine = [x for label, x in got if label == c]
            assert all(torch.equal(a, b) for a, b in zip(mine, prefix.images[c * k : (c + 1) * k], strict=True))
        if previous is not None:  # nesting: the smaller config is the first rows of the larger
            assert torch.equal(cols["pixel_values"][: len(previous)], previous)
        previous = cols["pixel_values"]
    assert len(load(mtt_folder, None, tmp_path)) == 30  # the default config is the largest budget


def test_card_parses_and_carries_the_contract(mtt_folder: Path):
    from huggingface_hub import DatasetCard
    from safetensors.torch import load_file

    root = mtt_folder.parents[1]
    card = DatasetCard.load(mtt_folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["task_categories"] == ["image-classification"]
    assert data["size_categories"] == ["n<1K"] and data["source_datasets"] and data["pretty_name"]
    assert {"dataset-distillation", "mtt"} <= set(data["tags"])
    configs = {c["config_name"]: c for c in data["configs"]}
    assert [n for n, c in configs.items() if c.get("default")] == ["ipc3"]
    for name, c in configs.items():
        (entry,) = c["data_files"]
        assert [p.relative_to(mtt_folder).as_posix() for p in mtt_folder.glob(entry["path"])] == [
            f"{name}/train-00000-of-00001.parquet"
        ]
    assert {i["config_name"] for i in data["dataset_info"]} == set(configs)

    meta = data["distiller"]
    assert meta["version"] == "1.0.0" and meta["method"] == "mtt" and "git_commit" in meta
    assert "dvc_lock_sha256" in meta and meta["method_params"]["mtt"]["iterations"] == TINY["mtt"]["iterations"]
    prepared = load_prepared(Layout(root).prepared)
    assert meta["source"]["hash"] == prepared.content_hash
    assert meta["preprocessing"]["kind"] == "normalize" and meta["preprocessing"]["pixel_scale"] == "value / 16"
    assert meta["protocol"]["optimizer"] == "sgd" and meta["protocol"]["augmentation"]["kind"] == "dsa"
    assert meta["protocol"]["architecture"]["width"] == TINY["model"]["width"]
    metrics = json.loads(Layout(root).evaluate_metrics.read_text())
    syn, _ = load_synthetic(Layout(root).synthetic)
    for k in ("1", "2", "3"):
        entry = meta["budgets"][f"ipc{k}"]
        assert entry["lr"] == syn.lr and entry["rows"] == 10 * int(k)
        assert entry["accuracy"]["mean"] == metrics["budgets"][k]["distilled"]["mean"]
        assert entry["accuracy"]["runs"] == TINY["evaluate"]["num_eval"]
        assert entry["random_real"]["mean"] == metrics["budgets"][k]["random_real"]["mean"]
    sidecar = load_file(mtt_folder / "preprocessing/normalization.safetensors")
    assert torch.equal(sidecar["mean"], prepared.mean) and torch.equal(sidecar["std"], prepared.std)
    split = load_file(mtt_folder / "preprocessing/split.safetensors")
    assert torch.equal(split["test_indices"], prepared.test_indices)
    body = card.text
    assert "| `ipc1` | 1 | 10 |" in body and "images/grid.png" in body and "load_dataset(" in body


def test_soft_labels_and_boosted_references_are_packaged(rat_folder: Path, tmp_path: Path):
    from huggingface_hub import DatasetCard

    syn, _ = load_synthetic(Layout(rat_folder.parents[1]).synthetic)
    ds = load(rat_folder, "ipc2", tmp_path)
    assert ds.features["soft_label"].length == 10
    cols = ds.with_format("torch")[:]
    order, _ = package.block_order(10, 2, (1, 2))
    assert torch.equal(cols["soft_label"], syn.soft_labels[order]) and torch.equal(
        cols["pixel_values"], syn.images[order]
    )
    meta = DatasetCard.load(rat_folder / "README.md").data.to_dict()["distiller"]
    assert meta["method"] == "ratbptt" and meta["labels"]["train_on"] == "soft_label"
    assert meta["nested"].startswith("boosted") and {"direct", "naive_subset"} <= set(meta["budgets"]["ipc1"])
    assert meta["budgets"]["ipc1"]["lr"] == TINY_REAL_LR


TINY_REAL_LR = params_from_dict(TINY).evaluate.real_lr


def test_zca_transform_is_packaged_with_the_set(tmp_path: Path):
    """With data.preprocess zca, the sidecar holds the fitted transform and its inverse, and the card says so."""
    import numpy as np
    from datasets import load_dataset
    from huggingface_hub import DatasetCard
    from PIL import Image
    from safetensors import safe_open

    from distiller.data.prepared import to_unit

    folder = _build(tmp_path, data={"preprocess": "zca"}, evaluate={"full_data_runs": 0})
    prepared = load_prepared(Layout(tmp_path).prepared)
    assert prepared.preprocess == "zca"
    files = {str(p.relative_to(folder)) for p in (folder / "preprocessing").iterdir()}
    assert files == {"preprocessing/zca.safetensors", "preprocessing/split.safetensors"}
    with safe_open(str(folder / "preprocessing/zca.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["distiller"])  # one entry of canonical JSON
        assert meta["format"] == "distiller.zca" and meta["eps"] == 0.1
        for name, field in (("mean", "zca_mean"), ("matrix", "zca_matrix"), ("inverse", "zca_inverse")):
            assert torch.equal(f.get_tensor(name), getattr(prepared, field))
    card = DatasetCard.load(folder / "README.md")
    pre = card.data.to_dict()["distiller"]["preprocessing"]
    assert pre["kind"] == "zca" and pre["file"] == "preprocessing/zca.safetensors" and pre["eps"] == 0.1
    assert "ZCA whitening" in card.text and "(x - mean) @ matrix" in card.text
    # the 8-bit previews undo the whitening with the inverse
    syn, _ = load_synthetic(Layout(tmp_path).synthetic)
    ds = load_dataset(str(folder), "ipc1", split="train", cache_dir=str(tmp_path / "cache"))
    expected = (to_unit(syn.images[:1], prepared) * 255).round().to(torch.uint8)[0, 0]
    assert isinstance(ds[0]["image"], Image.Image) and ds[0]["label"] == 0
    assert torch.equal(torch.tensor(np.array(ds[0]["image"])), expected)
    assert runner.invoke(app, ["validate", str(folder)]).exit_code == 0


@pytest.mark.parametrize("which", ["mtt", "rat"])
def test_card_to_contract_to_card_is_the_same_text(which, mtt_folder: Path, rat_folder: Path):
    """The card's `distiller:` mapping is a typed contract, and the whole README is rendered from it alone."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    from distiller.packaging.contract import Contract
    from distiller.packaging.readme import render

    folder = {"mtt": mtt_folder, "rat": rat_folder}[which]
    card = DatasetCard.load(folder / "README.md")
    mapping = card.data.to_dict()["distiller"]
    contract = Contract.from_dict(mapping)
    assert contract.to_dict() == mapping and Contract.from_dict(contract.to_dict()) == contract
    assert contract.budgets[contract.default_config].images_per_class == (3 if which == "mtt" else 2)
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert render(contract, infos) == (folder / "README.md").read_text()


def test_validate_accepts_the_folder(mtt_folder: Path):
    result = runner.invoke(app, ["validate", str(mtt_folder)])
    assert result.exit_code == 0, result.output
    assert "valid (mtt, version 1.0.0; ipc1 10 rows, ipc2 20 rows, ipc3 30 rows; default ipc3)" in result.stdout


def _broken(folder: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    edit(copy)
    return copy


def _card_edit(old: str, new: str):
    def edit(folder: Path) -> None:
        card = folder / "README.md"
        text = card.read_text()
        assert old in text
        card.write_text(text.replace(old, new, 1))

    return edit


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda f: (f / "ipc2/train-00000-of-00001.parquet").unlink(), "config 'ipc2' declares"),
        (_card_edit("rows: 20", "rows: 21"), "20 rows, but the card says 21"),
        (_card_edit("version: 1.0.0", "version: one"), "not a semantic version"),
        (_card_edit("license: cc-by-4.0\n", ""), "card YAML lacks license"),
        (_card_edit("  default: true\n", ""), "exactly one config must be the default"),
        (lambda f: shutil.copy(f / "ipc1/train-00000-of-00001.parquet", f / "extra.parquet"), "no config declares"),
        (lambda f: (f / "link.png").symlink_to("/etc/hostname"), "symbolic links are not published"),
        (
            lambda f: shutil.copy(f / "ipc1/train-00000-of-00001.parquet", f / "ipc2/train-00000-of-00001.parquet"),
            "its data files hold",
        ),
        (_card_edit("num_examples: 20", "num_examples: 21"), "20 rows, but the card's dataset_info says 21"),
        (lambda f: (f / "preprocessing/split.safetensors").write_bytes(b"junk"), "sidecar missing or unreadable"),
        (lambda f: (f / "README.md").write_text("---\nlicense: [\n---\n"), "not valid YAML"),
        (_card_edit("rows: 20", "rows: twenty"), "distiller.budgets.ipc2.rows must be an integer, got 'twenty'"),
        (_card_edit("  method: mtt\n", "  method: gan\n"), "distiller.method must be one of 'mtt', 'ratbptt'"),
        (_card_edit("  default_config: ipc3\n", ""), "distiller.default_config is missing"),
        (_card_edit("  nested:", "  nestd:"), "unknown key 'distiller.nestd' (did you mean 'distiller.nested'?)"),
        (_card_edit("path: ipc1/train-*.parquet", "path: /etc/passwd"), "must be a relative path inside the folder"),
        (_card_edit("      first_padding: 1\n", ""), "lacks first_padding (the first conv's padding"),
    ],
)
def test_validate_refuses_a_broken_folder_in_one_line(mtt_folder: Path, tmp_path: Path, edit, fragment):
    broken = _broken(mtt_folder, tmp_path, edit)
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr


def test_swapped_rows_break_nesting(mtt_folder: Path, tmp_path: Path):
    from datasets import Dataset

    def shuffle(folder: Path) -> None:
        shard = folder / "ipc2/train-00000-of-00001.parquet"
        ds = Dataset.from_parquet(str(shard), cache_dir=str(tmp_path / "c"))
        size = shard.stat().st_size
        ds.select(list(reversed(range(len(ds))))).to_parquet(str(shard))
        _card_edit(f"download_size: {size}", f"download_size: {shard.stat().st_size}")(folder)

    result = runner.invoke(app, ["validate", str(_broken(mtt_folder, tmp_path, shuffle))])
    assert result.exit_code == 2 and "not the previous config's" in result.stderr, result.output


def test_package_refuses_stale_inputs_by_name(mtt_folder: Path):
    root = mtt_folder.parents[1]
    raw = json.loads(json.dumps(TINY))
    raw["distill"] = {"ipc": 4}
    result = runner.invoke(app, ["package", "--root", str(root), "-S", "distill.ipc=4", "-S", "device=cpu"])
    assert result.exit_code == 2 and "distill.ipc 4" in result.stderr, result.output


@pytest.mark.integration
def test_the_card_alone_reproduces_training(mtt_folder: Path, tmp_path: Path):
    """The example script (datasets, torch, the card; no distiller) trains on a config and prints both figures."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples/train_from_card.py"), str(mtt_folder), "ipc2", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "ipc2: reproduced" in out.stdout and "card" in out.stdout


def test_git_dirty_counts_code_not_the_tools_own_outputs(tmp_path: Path):
    from distiller.core.provenance import git_state

    def sh(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for name in ("code.py", "dvc.lock", "datasets/a/README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("one\n")
    sh("init", "-q")
    sh("add", ".")
    sh("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    commit, dirty = git_state(tmp_path)
    assert commit and dirty is False
    (tmp_path / "dvc.lock").write_text("two\n")
    (tmp_path / "datasets/a/README.md").write_text("two\n")  # another set packaged before this one
    assert git_state(tmp_path)[1] is False
    (tmp_path / "code.py").write_text("two\n")
    assert git_state(tmp_path)[1] is True
