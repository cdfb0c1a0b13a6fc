"""`distiller reproduce`: a packaged set trained again from its card alone lands near the card's accuracy, and a card
whose lr or preprocessing was corrupted does not (the config is named, exit 2). Digits with normalisation, digits with
ZCA, a tiny MNIST in the real archive format, and a Hub repo id (the download mocked, offline)."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import yaml
from helpers import STAGES, make_project, tiny
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.files import load_safetensors, save_safetensors
from distiller.core.params import params_from_dict
from distiller.core.paths import Layout
from distiller.data.sources import archives

runner = CliRunner()
pytestmark = pytest.mark.integration
# strong enough that accuracy says something (real images, 100 epochs), small enough for seconds
LEARNABLE = {
    "model": {"width": 16},
    "distill": {"ipc": 10, "budgets": [10]},
    "mtt": {"iterations": 2},
    "evaluate": {"num_eval": 3, "epochs": 60, "full_data_runs": 0},
}
TOLERANCE = "6"  # points: 3 networks of a 60-epoch protocol on a few hundred test images


def package(root: Path, raw: dict) -> Path:
    make_project(root, raw, *STAGES)
    p = params_from_dict(raw)
    return Layout(root).package_dir(p.package.folder(p.data.source, p.distill.ipc))


def reproduce(target: Path | str, root: Path, *extra: str):
    args = ["reproduce", str(target), "--runs", "3", "--tolerance", TOLERANCE, "--root", str(root), *extra]
    return runner.invoke(app, args)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits")
    return package(root, tiny(**LEARNABLE)), root


def test_a_packaged_set_reproduces_within_tolerance(digits_folder):
    folder, root = digits_folder
    result = reproduce(folder, root)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ipc10: measured") and "card" in result.stdout


def _scale_lr(d: dict) -> None:
    d["distiller"]["budgets"]["ipc10"]["lr"] *= 1000


def _nudge(key: str, by: float):
    def nudge(d: dict) -> None:  # 0.01 is a shift an instance-normalised ConvNet would barely notice in its accuracy
        d["distiller"]["preprocessing"][key] = [m + by for m in d["distiller"]["preprocessing"][key]]

    return nudge


def _corrupted(folder: Path, tmp_path: Path, corrupt) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    _, front, body = (copy / "README.md").read_text().split("---\n", 2)
    card = yaml.safe_load(front)
    corrupt(card)
    (copy / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n{body}")
    return copy


def test_a_corrupted_lr_does_not_reproduce_and_names_the_config(digits_folder, tmp_path: Path):
    folder, root = digits_folder
    result = reproduce(_corrupted(folder, tmp_path, _scale_lr), root)
    assert result.exit_code == 2, result.output
    assert "ipc10: more than" in result.stderr and len(result.stderr.strip().splitlines()) == 1


NORMALISATION = [_nudge("mean", 3), _nudge("mean", 0.01), _nudge("std", 0.01)]


@pytest.mark.parametrize("corrupt", NORMALISATION, ids=["+3", "mean", "std"])
def test_a_corrupted_normalisation_is_named_before_any_training(digits_folder, tmp_path: Path, corrupt):
    folder, root = digits_folder
    result = reproduce(_corrupted(folder, tmp_path, corrupt), root)
    assert result.exit_code == 2, result.output
    assert "the card's preprocessing" in result.stderr and "training split's" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "measured" not in result.stdout


def test_a_zca_set_reproduces_and_a_sidecar_fitted_on_other_images_is_named(tmp_path: Path):
    raw = tiny(**LEARNABLE, data={"preprocess": "zca"})
    folder = package(tmp_path, raw)
    result = reproduce(folder, tmp_path)
    assert result.exit_code == 0, result.output
    for name in ("mean", "matrix"):  # a transform that is a valid sidecar, but not of the card's training images
        copy = tmp_path / f"{name}-{folder.name}"
        shutil.copytree(folder, copy)
        sidecar = copy / "preprocessing" / "zca.safetensors"
        tensors, meta = load_safetensors(sidecar, "distiller.zca", "1", "ZCA sidecar")
        tensors[name] = tensors[name] * 1.05
        save_safetensors(sidecar, tensors, "distiller.zca", "1", {k: v for k, v in meta.items() if k != "seal"})
        result = reproduce(copy, tmp_path)
        assert result.exit_code == 2, result.output
        assert f"the ZCA {name} is not that of digits's training split" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "measured" not in result.stdout


def _learnable_mnist(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four MNIST archives whose classes are learnable: class c is a bright bar at row 2c plus noise."""
    from test_sources import MNIST_FILES, write_idx_gz

    rng = np.random.default_rng(0)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        x = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            x[i, 2 * c + 4 : 2 * c + 7, 4:24] = 250
        return x.astype(np.uint8), labels.astype(np.uint8)

    folder.mkdir()
    (tx, ty), (sx, sy) = images(200), images(100)
    for name, array in zip(MNIST_FILES, (tx, ty, sx, sy), strict=True):
        write_idx_gz(folder / f"{name}.gz", array)
    monkeypatch.setitem(archives.CHECKSUMS, "mnist", {f"{n}.gz": archives.md5(folder / f"{n}.gz") for n in MNIST_FILES})


def test_an_mnist_format_set_reproduces_from_its_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The test images come from the archives in data/raw as the card names them, resized to the card's input."""
    _learnable_mnist(tmp_path / "incoming", monkeypatch)
    archives.import_archives("mnist", tmp_path / "incoming", tmp_path / "data" / "raw")
    raw = tiny(**LEARNABLE, data={"source": "mnist", "resolution": 8})
    folder = package(tmp_path, raw)
    monkeypatch.chdir(tmp_path.parent)  # --root relative to the working directory, as a user types it
    result = reproduce(folder, Path(tmp_path.name))
    assert result.exit_code == 0, result.output


def test_a_hub_repo_is_fetched_at_its_revision(digits_folder):
    folder, root = digits_folder
    with patch("huggingface_hub.snapshot_download", return_value=str(folder)) as fetch:
        result = reproduce("org/digits-distilled-ipc10", root, "--revision", "v1.0.0", "--config", "ipc10")
    assert result.exit_code == 0, result.output
    fetch.assert_called_once_with("org/digits-distilled-ipc10", repo_type="dataset", revision="v1.0.0")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["no/such/thing"], "neither a dataset folder nor a Hub repo id"),
        (["--config", "ipc3"], "no config ipc3"),
    ],
)
def test_bad_targets_are_one_line(digits_folder, args, fragment):
    folder, root = digits_folder
    target = [] if args[0].startswith("no/") else [str(folder)]
    result = runner.invoke(app, ["reproduce", *target, *args, "--root", str(root)])
    assert result.exit_code == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
