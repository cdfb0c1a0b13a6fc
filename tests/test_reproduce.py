"""`distiller reproduce`: a packaged set trained again from its card alone lands within the difference its card's and
its own spreads allow, and a card whose lr or preprocessing was corrupted does not (the config is named, exit 2).
Digits with normalisation, digits with ZCA, a tiny MNIST in the real archive format, and a Hub repo id (the download
mocked, offline). Hostile cards (docs/reliability.md): every one ends in exit 2 with one line naming the key, file or
path, before anything trains, and the folder goes through `validate`'s whole check first."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import yaml
from helpers import STAGES, make_project, tiny
from test_forgery import forge_tensors
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.files import load_safetensors, save_safetensors
from distiller.core.params import params_from_dict
from distiller.core.paths import Layout
from distiller.data.sources import archives
from distiller.packaging import contract as schema
from distiller.packaging import retrain, sidecars
from distiller.packaging.reproduce import FLOOR, allowed
from distiller.packaging.validate import read_card

runner = CliRunner()
pytestmark = pytest.mark.integration
# strong enough that accuracy says something (real images, 60 epochs), small enough for seconds
LEARNABLE = {
    "model": {"width": 16},
    "distill": {"ipc": 10, "budgets": [10]},
    "mtt": {"iterations": 2},
    "evaluate": {"num_eval": 3, "epochs": 60, "full_data_runs": 0},
}


def package(root: Path, raw: dict) -> Path:
    make_project(root, raw, *STAGES)
    p = params_from_dict(raw)
    return Layout(root).package_dir(p.package.folder(p.data.source, p.distill.ipc))


def reproduce(target: Path | str, root: Path, *extra: str):
    """The default rule and the card's number of networks, unless `extra` says otherwise."""
    return runner.invoke(app, ["reproduce", str(target), "--root", str(root), *extra])


def refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), result.stderr
    assert "measured" not in result.stdout  # refused before anything trained


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits")
    return package(root, tiny(**LEARNABLE)), root


def test_a_packaged_set_reproduces_under_the_default_rule_with_the_cards_networks(digits_folder):
    folder, root = digits_folder
    result = reproduce(folder, root)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ipc10: measured") and "(3 networks), card" in result.stdout
    assert "allowed" in result.stdout


def test_a_fixed_tolerance_overrides_the_rule(digits_folder):
    folder, root = digits_folder
    result = reproduce(folder, root, "--runs", "1", "--tolerance", "0")
    assert result.exit_code == 2 and "ipc10: more than 0.00 points from the card" in result.stderr, result.output


def _front(edit):
    def apply(card: dict) -> None:
        edit(card["distiller"])

    return apply


def _edit_card(folder: Path, edit) -> None:
    """Edit the card's YAML front matter as data (`edit` changes the mapping in place), keeping its body."""
    _, front, body = (folder / "README.md").read_text().split("---\n", 2)
    card = yaml.safe_load(front)
    edit(card)
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n{body}")


def _corrupted(folder: Path, tmp_path: Path, corrupt) -> Path:
    """A copy of `folder` in `tmp_path` whose card's front matter `corrupt` edited."""
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    _edit_card(copy, corrupt)
    return copy


def test_a_corrupted_lr_does_not_reproduce_and_names_the_config(digits_folder, tmp_path: Path):
    folder, root = digits_folder
    result = reproduce(_corrupted(folder, tmp_path, _front(lambda d: d["budgets"]["ipc10"].update(lr=1000.0))), root)
    assert result.exit_code == 2, result.output
    assert "ipc10: more than" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _shift(key: str, by: float):
    """The card's normalisation and its sidecar shifted alike (so `validate`, which compares them, passes): only the
    training split can tell. 0.01 is a shift an instance-normalised ConvNet would barely notice in its accuracy."""

    def shift(folder: Path) -> None:
        path = folder / "preprocessing" / "normalization.safetensors"
        forge_tensors(path, "distiller.normalization", "1", lambda t, m: t.__setitem__(key, t[key] + by))
        values = load_safetensors(path, "distiller.normalization", "1", "sidecar")[0][key]
        rounded = [round(float(v), 8) for v in values]  # as the package stage rounds them
        _edit_card(folder, _front(lambda d: d["preprocessing"].__setitem__(key, rounded)))

    return shift


@pytest.mark.parametrize("shift", [_shift("mean", 3), _shift("mean", 0.01), _shift("std", 0.01)], ids=["+3", "m", "s"])
def test_a_corrupted_normalisation_is_named_before_any_training(digits_folder, tmp_path: Path, shift):
    folder, root = digits_folder
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    shift(copy)
    refused(reproduce(copy, root), "the card's preprocessing", "training split's")


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
        refused(reproduce(copy, tmp_path), f"the ZCA {name} is not that of digits's training split")


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
    monkeypatch.setitem(sidecars.SIZES, "mnist", (200, 100))  # the archives stand for MNIST's, sizes included


def test_an_mnist_format_set_reproduces_from_its_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The test images come from the archives in data/raw as the card names them, resized to the card's input; a card
    that says its images were not resized, or that its test split is smaller than the source's, is refused."""
    _learnable_mnist(tmp_path / "incoming", monkeypatch)
    archives.import_archives("mnist", tmp_path / "incoming", tmp_path / "data" / "raw")
    raw = tiny(**LEARNABLE, data={"source": "mnist", "resolution": 8})
    folder = package(tmp_path, raw)
    monkeypatch.chdir(tmp_path.parent)  # --root relative to the working directory, as a user types it
    result = reproduce(folder, Path(tmp_path.name))
    assert result.exit_code == 0, result.output
    unresized = _corrupted(folder, tmp_path / "a", _front(lambda d: d["preprocessing"].pop("resize")))
    refused(reproduce(unresized, Path(tmp_path.name)), "input_shape is [1, 8, 8]", "images, not resized")
    monkeypatch.delitem(sidecars.SIZES, "mnist")  # so that only the loaded source can tell
    fewer = _corrupted(folder, tmp_path / "b", _front(lambda d: d["source"]["test_split"].update(count=99)))
    refused(reproduce(fewer, Path(tmp_path.name)), "test_split.count is 99, but mnist's test split holds 100")


def _hub_snapshot(folder: Path, cache: Path) -> Path:
    """`folder` laid out as huggingface_hub's cache holds a download: symbolic links into blobs/, plus the Hub's own
    .gitattributes."""
    snapshot, blobs = cache / "snapshots" / "abc123", cache / "blobs"
    blobs.mkdir(parents=True)
    for i, path in enumerate(p for p in sorted(folder.rglob("*")) if p.is_file()):
        blob = blobs / f"blob{i}"
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (snapshot / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    return snapshot


def test_a_hub_repo_is_fetched_at_its_revision(digits_folder, tmp_path: Path):
    folder, root = digits_folder
    snapshot = _hub_snapshot(folder, tmp_path / "hub")
    with patch("huggingface_hub.snapshot_download", return_value=str(snapshot)) as fetch:
        result = reproduce("org/digits-distilled-ipc10", root, "--revision", "v1.0.0", "--config", "ipc10")
    assert result.exit_code == 0, result.output
    fetch.assert_called_once_with("org/digits-distilled-ipc10", repo_type="dataset", revision="v1.0.0")


def test_glob_characters_in_the_folder_path_are_plain_characters(digits_folder, tmp_path: Path):
    folder, root = digits_folder
    odd = tmp_path / "g[1]" / "we[ir]d* name"
    shutil.copytree(folder, odd)
    result = reproduce(odd, root, "--runs", "1")
    assert result.exit_code == 0, result.output


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


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--runs", "0"], "greater than or equal to 1"), (["--runs", "101"], "less than or equal to 100")],
)
def test_runs_are_bounded_with_a_one_line_usage_error(digits_folder, args, fragment):
    import subprocess
    import sys

    folder, _ = digits_folder
    command = [sys.executable, "-m", "distiller", "reproduce", str(folder), *args]
    out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--runs" in out.stderr and fragment in out.stderr


# ---------------------------------------------------------------------------------------------------------------------
# the rule


def _result(*values: float) -> schema.Result:
    import statistics

    return schema.Result(statistics.fmean(values), statistics.pstdev(values), len(values), values)


def test_the_rule_adds_both_spreads_as_standard_errors():
    """3 standard errors of the difference of two means: sample std 0.02 on both sides, 3 networks each."""
    assert allowed(_result(0.70, 0.72, 0.74), (0.69, 0.71, 0.73)) == pytest.approx(3 * 100 * (2 * 0.02**2 / 3) ** 0.5)
    wide, narrow = allowed(_result(0.60, 0.64, 0.62), (0.62, 0.62)), allowed(_result(0.62, 0.62, 0.62), (0.62, 0.62))
    assert wide > narrow  # the card's spread counts, not only this run's


def test_a_card_whose_std_is_zero_is_not_impossible_to_pass():
    assert allowed(_result(0.9, 0.9, 0.9), (0.9, 0.9, 0.9)) == FLOOR  # both spreads 0: the floor
    assert allowed(_result(0.9), (0.9,)) == FLOOR  # one network each: no spread at all
    assert allowed(_result(0.9, 0.9), (0.88, 0.92)) > FLOOR  # this run's spread still counts


def test_one_network_borrows_the_other_sides_spread():
    card = _result(0.70, 0.72, 0.74)
    assert allowed(card, (0.71,)) == pytest.approx(3 * 100 * 0.02 * (1 / 3 + 1) ** 0.5)


def test_more_networks_allow_a_smaller_difference():
    """As in the issue's Fashion-MNIST IPC 1 card (spread near 1.6 points, 5 networks): 2.24 points under the card
    with 3 networks is within the rule, and the allowance shrinks as networks are added."""
    card = _result(0.6043, 0.6363, 0.6203, 0.6003, 0.6403)
    three = allowed(card, (0.5809, 0.5979, 0.6149))
    five = allowed(card, (0.5809, 0.5979, 0.6149, 0.5889, 0.6069))
    assert three > 2.24 and FLOOR < five < three


# ---------------------------------------------------------------------------------------------------------------------
# hostile cards: refused before anything trains, by `validate`'s check or by reproduce's own


def _forge_split(value: int):
    def forge(folder: Path) -> None:
        def edit(t, m) -> None:
            t["test_indices"] = t["test_indices"].clone()
            t["test_indices"][-1] = value

        forge_tensors(folder / "preprocessing" / "split.safetensors", "distiller.split", "1", edit)

    return forge


def _card(edit):
    return lambda folder: _edit_card(folder, edit)


_arch = lambda **kw: _card(_front(lambda d: d["protocol"]["architecture"].update(kw)))
_proto = lambda **kw: _card(_front(lambda d: d["protocol"].update(kw)))
_aug = lambda **kw: _card(_front(lambda d: d["protocol"]["augmentation"].update(kw)))
_split = lambda **kw: _card(_front(lambda d: d["source"]["test_split"].update(kw)))
_budget = lambda **kw: _card(_front(lambda d: d["budgets"]["ipc10"].update(kw)))
_info = lambda **kw: _card(lambda card: card["dataset_info"].update(kw))

HOSTILE = {  # the probes, and their neighbours: (damage a copy of the folder, what the one line says)
    "depth 6 on 8x8": (_arch(depth=6), "architecture.depth 6 is too deep for 8x8"),
    "width 0": (_arch(width=0), "architecture.width must be >= 1"),
    "5 classes": (_arch(num_classes=5), "ClassLabel column of 5 classes"),
    "3 input channels": (_arch(input_shape=[3, 8, 8]), "the card's network takes (3, 8, 8)"),
    "first padding 9": (_arch(first_padding=9), "architecture.first_padding is 9"),
    "gelu": (_arch(activation="gelu"), "architecture.activation must be one of 'relu'"),
    "batchnorm": (_arch(norm="batchnorm"), "architecture.norm must be one of"),
    "no pooling": (_arch(pooling="none"), "architecture.pooling must be one of"),
    "a zoo network": (_arch(arch="vgg11"), "distiller.protocol.architecture"),
    "cosine schedule": (_proto(lr_schedule="cosine"), "distiller.protocol.lr_schedule must be one of"),
    "another optimiser": (_proto(optimizer="rmsprop"), "distiller.protocol.optimizer must be one of"),
    "sample std": (_proto(std="sample"), "distiller.protocol.std must be one of"),
    "an unknown DSA family": (_aug(strategy="color_noise"), "unknown family 'noise'"),
    "another augmentation": (_aug(kind="autoaugment"), "augmentation.kind must be one of 'dsa'"),
    "per-batch draws": (_aug(draws="per-batch"), "augmentation.draws must be one of 'per-sample'"),
    "a DSA scale of 0": (_aug(scale=0), "augmentation.scale must be >= 1"),
    "a crop of 5 sides": (_aug(crop=5.0), "augmentation.crop must be < 1"),
    "soft labels without the column": (
        _card(_front(lambda d: d["labels"].update(train_on="soft_label"))),
        "train on soft_label, but the column is missing",
    ),
    "an unknown split tensor": (_split(tensor="train_indices"), "test_split.tensor must be one of 'test_indices'"),
    "a split named validation": (
        _split(kind="canonical", split="validation", file=None, tensor=None),
        "test_split.split must be one of 'test'",
    ),
    "the canonical test split of a source without one": (
        lambda f: (
            _split(kind="canonical", split="test", file=None, tensor=None)(f),
            (f / "preprocessing/split.safetensors").unlink(),
        ),
        "test_split is its canonical test split, but digits has none",
    ),
    "indices without their file": (_split(file=None), "test_split.file is missing with kind indices"),
    "a test index beyond the source": (_forge_split(99999), "test index 99999 is beyond digits's 1797 images"),
    "test count": (_split(count=7), "of 7 indices"),
    "a config the card lacks": (
        _card(_front(lambda d: d["budgets"].update(ipc5=d["budgets"]["ipc10"]))),
        "do not match distiller.budgets",
    ),
    "images_per_class": (_budget(images_per_class=3), "images_per_class 3 x 10 classes"),
    "rows": (_budget(rows=7), "100 rows, but the card says 7"),
    "an emptied normalisation sidecar": (
        lambda f: (f / "preprocessing/normalization.safetensors").write_bytes(b""),
        "normalization.safetensors: sidecar missing or unreadable",
    ),
    "a sidecar outside the folder": (
        _card(_front(lambda d: d["preprocessing"].update(file="../normalization.safetensors"))),
        "must be a relative path inside the folder",
    ),
    "a mean that disagrees with its runs": (
        _card(_front(lambda d: d["budgets"]["ipc10"]["accuracy"].update(mean=0.5))),
        "say otherwise",
    ),
    "dataset_size 10**18": (_info(dataset_size=10**18), "dataset_size is 1000000000000000000"),
    "num_bytes 10**18": (
        _card(lambda card: card["dataset_info"]["splits"][0].update(num_bytes=10**18)),
        "num_bytes is 1000000000000000000",
    ),
    "another pixel scale": (  # only the source can tell: `validate` passes it
        _card(_front(lambda d: d["preprocessing"].update(pixel_scale="value / 255"))),
        "preprocessing.pixel_scale is 'value / 255', but digits's pixels are scaled by 'value / 16'",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_cards_are_one_line_before_anything_trains(digits_folder, tmp_path: Path, case):
    folder, root = digits_folder
    damage, fragment = HOSTILE[case]
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    damage(copy)
    refused(reproduce(copy, root), fragment)
    if case != "another pixel scale":
        refused(runner.invoke(app, ["validate", str(copy)]), fragment)


def test_a_test_index_beyond_a_source_validate_cannot_size_is_named_by_reproduce(
    digits_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Sources validate knows no size of (hf:, imagefolder:) are held to the loaded source by reproduce."""
    folder, root = digits_folder
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    _forge_split(1797)(copy)
    monkeypatch.delitem(sidecars.SIZES, "digits")
    assert runner.invoke(app, ["validate", str(copy)]).exit_code == 0
    refused(reproduce(copy, root), "split.safetensors: test index 1797 is beyond digits's 1797 images")


def _literal_fields(cls: type, prefix: str) -> list[str]:
    """Every Literal-typed key under `cls` (nested dataclasses included), dotted from `prefix`."""
    hints, keys = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is not None else []
        inner = args[0] if len(args) == 1 and typing.get_origin(tp) is not typing.Literal else tp
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            keys += _literal_fields(inner, f"{prefix}{f.name}.")
        elif typing.get_origin(inner) is typing.Literal:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_training_word_of_the_contract_is_one_reproduce_builds_or_refuses():
    """A value the contract allows (a Literal) that says how to train or test is listed in `retrain.BUILT`, so a word
    added to the contract later is refused by reproduce until it is built, never trained as something else."""
    keys = [
        *_literal_fields(schema.Protocol, "protocol."),
        *_literal_fields(schema.Preprocessing, "preprocessing."),
        *_literal_fields(schema.Labels, "labels."),
        *_literal_fields(schema.EvalSplit, "source.test_split."),
    ]
    assert "protocol.architecture.activation" in keys and "protocol.augmentation.draws" in keys
    assert sorted(k for k in keys if k not in retrain.BUILT) == []


@pytest.mark.parametrize("key", sorted(retrain.BUILT))
def test_a_value_reproduce_does_not_build_is_refused_by_name(digits_folder, key):
    """Each key of `BUILT` with a value outside it (as a contract that allowed more would hold it): one line."""
    import copy

    from distiller.core.errors import DistillerError

    folder, _ = digits_folder
    c = copy.deepcopy(read_card(folder / "README.md").contract)
    *parents, leaf = key.split(".")
    node = c
    for part in parents:
        node = getattr(node, part)
    object.__setattr__(node, leaf, "something else")  # past the contract's own checks, as a wider contract would
    with pytest.raises(DistillerError, match=rf"distiller\.{key} is 'something else'; reproduce builds"):
        retrain.refuse_unbuilt(c, "card")


def test_inputs_that_are_not_square_are_refused_by_name(digits_folder):
    """The contract allows them (an imagefolder of 8x6 images); reproduce builds square inputs only."""
    import copy

    from distiller.core.errors import DistillerError

    folder, _ = digits_folder
    c = copy.deepcopy(read_card(folder / "README.md").contract)
    object.__setattr__(c.protocol.architecture, "input_shape", (1, 8, 6))
    with pytest.raises(DistillerError, match=r"architecture\.input_shape is 8x6; reproduce builds square inputs only"):
        retrain.refuse_unbuilt(c, "card")


def test_every_dsa_family_is_built():
    from distiller.core.families import AUG_FAMILIES

    assert sorted(retrain.FAMILIES) == sorted(AUG_FAMILIES)
