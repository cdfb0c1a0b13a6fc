"""DD-Ranking's label- and augmentation-robust scores: the formulas on hand-computed values, and `evaluate.ddranking`
writing them to the metrics and the card."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import STAGES, make_project, tiny
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.files import read_sealed_json
from distiller.core.params import params_from_dict
from distiller.core.paths import Layout
from distiller.packaging.validate import read_card, validate
from distiller.scoring import ddranking

runner = CliRunner()
E = math.e


def test_the_map_sends_minus_one_to_zero_and_one_to_one():
    assert ddranking.robust(-1) == pytest.approx(0.0, abs=1e-15)
    assert ddranking.robust(1) == pytest.approx(1.0)
    assert ddranking.robust(0) == pytest.approx((1 - 1 / E) / (E - 1 / E))  # 0.268941...
    assert ddranking.robust(0) == pytest.approx(0.2689414214)


def test_lrs_by_hand():
    # full 0.90, the set on hard labels 0.60, on its own labels 0.70, random 0.40:
    # HLR = 0.30, IOR = 0.30, a = 0.5 * 0.30 - 0.5 * 0.30 = 0, LRS = (1 - e^-1) / (e - e^-1)
    score, hlr, ior = ddranking.lrs(0.90, 0.60, 0.70, 0.40)
    assert (hlr, ior) == pytest.approx((0.30, 0.30)) and score == pytest.approx(0.2689414214)
    # a perfect set: nothing to recover (HLR 0) and everything over random (IOR 1): a = 0.5, LRS = (e^0.5 - e^-1)/...
    assert ddranking.lrs(1.0, 1.0, 1.0, 0.0)[0] == pytest.approx((math.exp(0.5) - 1 / E) / (E - 1 / E))
    assert ddranking.lrs(0.9, 0.6, 0.7, 0.4, w=1.0)[0] == pytest.approx(ddranking.robust(0.30))


def test_ars_by_hand():
    # with augmentation 0.80 vs 0.50, without 0.60 vs 0.45: b = 0.5 * 0.30 + 0.5 * 0.15 = 0.225
    assert ddranking.ars(0.80, 0.50, 0.60, 0.45) == pytest.approx((math.exp(0.225) - 1 / E) / (E - 1 / E))


def test_scores_pair_the_networks_and_summarise():
    out = ddranking.scores([0.9, 0.8], [0.6, 0.5], [0.7, 0.6], [0.4, 0.5], [0.6, 0.6], [0.4, 0.4])
    # full data averages to 0.85; network 0: HLR 0.25, IOR 0.30; network 1: HLR 0.35, IOR 0.10
    assert out["hlr"]["values"] == pytest.approx([0.25, 0.35]) and out["ior"]["values"] == pytest.approx([0.3, 0.1])
    assert out["lrs"]["values"] == pytest.approx([ddranking.robust(0.025), ddranking.robust(-0.125)], abs=1e-6)
    # ARS: with augmentation 0.30 and 0.10 over random, without 0.20 and 0.20: b = 0.25 and 0.15
    assert out["ars"]["values"] == pytest.approx([ddranking.robust(0.25), ddranking.robust(0.15)], abs=1e-6)
    assert out["lrs"]["std"] == pytest.approx(abs(out["lrs"]["values"][0] - out["lrs"]["values"][1]) / 2, abs=1e-6)


def test_evaluate_writes_the_scores_to_the_metrics_and_the_card(tmp_path: Path):
    raw = tiny(evaluate={"ddranking": True})
    root = make_project(tmp_path, raw, *STAGES)
    fair = read_sealed_json(Layout(root).evaluate_metrics, "metrics", "")["ddranking"]
    assert set(fair) == {"lrs", "ars", "hlr", "ior", "weight"} and 0 <= fair["lrs"]["mean"] <= 1
    p = params_from_dict(raw)
    folder = Layout(root).package_dir(p.package.folder(p.data.source, p.distill.ipc))
    card = read_card(folder / "README.md")
    assert card.contract.ddranking is not None and card.contract.ddranking.lrs.mean == fair["lrs"]["mean"]
    assert "label-robust score" in card.text
    validate(folder)


def test_the_scores_need_the_full_data_baseline(tiny_yaml: Path):
    result = runner.invoke(
        app, ["params", "-p", str(tiny_yaml), "-S", "evaluate.ddranking=true", "-S", "evaluate.full_data_runs=0"]
    )
    assert result.exit_code == 2 and "evaluate.full_data_runs >= 1" in result.stderr
