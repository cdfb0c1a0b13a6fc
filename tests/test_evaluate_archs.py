"""Cross-architecture evaluation: the largest budget scored on each network of `evaluate.archs`, on digits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from helpers import make_project, tiny

from distiller.core.errors import DistillerError
from distiller.core.files import json_seal
from distiller.core.params import Params, params_from_dict
from distiller.core.paths import Layout
from distiller.packaging.validate import validate
from distiller.scoring import scorecard
from distiller.stages import distill, evaluate, expert_buffer, package


def _raw(**evaluate: object) -> dict:
    return tiny(distill={"ipc": 2, "budgets": [1]}, evaluate={"epochs": 2, "full_data_runs": 0, **evaluate})


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Layout]:
    raw = _raw(archs=["convnet", "alexnet"], prefixes=True)
    root = make_project(tmp_path_factory.mktemp("archs"), raw, "download", "expert-buffer", "distill")
    return params_from_dict(raw), Layout(root)


def test_metrics_report_every_architecture(distilled):
    p, layout = distilled
    metrics = evaluate.run(p, layout)
    assert {**metrics, "seal": json_seal(metrics)} == json.loads(layout.evaluate_metrics.read_text())
    seconds = json.loads(layout.log("evaluate").read_text())["seconds"]
    archs = metrics["architectures"]
    assert list(archs) == ["convnet", "alexnet"]
    for r in archs.values():
        assert set(r) == {"mean", "std", "runs"} and len(r["runs"]) == p.evaluate.num_eval
        assert all(0 <= a <= 1 for a in r["runs"])
    # the distillation architecture's entry is the main result, trained once; only the largest budget goes to the zoo
    assert archs["convnet"] == metrics["accuracy"] == metrics["budgets"]["2"]["distilled"]
    assert "alexnet ipc 2" in seconds and "convnet ipc 2" not in seconds
    assert not any(name.startswith("alexnet ipc 1") for name in seconds)
    assert metrics["protocol"]["architecture"]["arch"] == "convnet"

    folder = package.run(p, layout)
    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])["distiller"]
    assert set(meta["cross_architecture"]) == {"convnet", "alexnet"}
    assert meta["protocol"]["architectures"]["alexnet"]["norm"] == "none"
    assert meta["protocol"]["architectures"]["convnet"] == meta["protocol"]["architecture"]
    assert "### Cross-architecture" in card and "| convnet (distillation) |" in card and "| alexnet |" in card
    assert validate(folder).configs  # each network is held to the one distiller describes (packaging.network)


def test_default_is_the_distillation_architecture_alone(distilled):
    p, layout = distilled
    p = dataclasses.replace(p, evaluate=dataclasses.replace(p.evaluate, archs=()))
    metrics = evaluate.run(p, layout)
    assert metrics["architectures"] == {"convnet": metrics["accuracy"]}
    meta = yaml.safe_load((package.run(p, layout) / "README.md").read_text().split("---")[1])["distiller"]
    assert "cross_architecture" not in meta and "architectures" not in meta["protocol"]


def test_an_architecture_too_big_for_the_images_fails_before_training(distilled, monkeypatch):
    p, layout = distilled
    p = dataclasses.replace(p, evaluate=dataclasses.replace(p.evaluate, archs=("convnet", "vgg11")))
    monkeypatch.setattr(scorecard, "score", lambda *a, **k: pytest.fail("trained before checking the architectures"))
    with pytest.raises(DistillerError, match=r"vgg11 needs images of at least 32x32 .*got 8x8"):
        evaluate.run(p, layout)


def test_distillation_refuses_another_architecture(tmp_path: Path):
    p = params_from_dict(_raw())
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, arch="resnet18"))
    for stage in (expert_buffer, distill):
        with pytest.raises(DistillerError, match="experts and distillation use the convnet; list other"):
            stage.run(p, Layout(tmp_path))


@pytest.mark.parametrize(
    ("archs", "message"),
    [
        (["resnet"], "evaluate.archs[0] must be one of 'convnet', 'resnet18'"),
        ("resnet18", "evaluate.archs must be a list of 'convnet', 'resnet18'"),
        (["alexnet", "alexnet"], "evaluate.archs lists an architecture twice"),
    ],
)
def test_bad_archs_name_the_key(archs, message):
    with pytest.raises(DistillerError) as err:
        params_from_dict(_raw(archs=archs))
    assert message in str(err.value)
