"""DD-Ranking's label- and augmentation-robust scores: the formulas on hand-computed values, a soft-label set scored
against a teacher-labelled random subset (hand-computed), and `evaluate.ddranking` writing them to the metrics and the
card."""

from __future__ import annotations

import math
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from helpers import STAGES, make_project, tiny
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.files import read_sealed_json
from distiller.core.params import params_from_dict
from distiller.core.paths import Layout
from distiller.core.runtime import generator
from distiller.methods.synthetic import SyntheticSet, real_subset
from distiller.packaging.validate import read_card, validate
from distiller.scoring import ddranking, scorecard
from distiller.scoring.evaluate import EvalResult, protocol_for

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


def test_the_teacher_labels_are_its_softmax_at_temperature_one():
    # logits (0, ln 3) -> (1/4, 3/4); (ln 2, 0) -> (2/3, 1/3); (ln 2, ln 2, 0) -> (2/5, 2/5, 1/5);
    # at T = 2, (0, ln 9) -> (1/4, 3/4) again
    assert ddranking.TEMPERATURE == 1.0
    got = ddranking.soft_labels(torch.tensor([[0.0, math.log(3)], [math.log(2), 0.0]]))
    assert got.tolist()[0] == pytest.approx([0.25, 0.75]) and got.tolist()[1] == pytest.approx([2 / 3, 1 / 3])
    got = ddranking.soft_labels(torch.tensor([[math.log(2), math.log(2), 0.0]]))
    assert got.tolist()[0] == pytest.approx([0.4, 0.4, 0.2])
    assert ddranking.soft_labels(torch.tensor([[0.0, math.log(9)]]), 2.0).tolist()[0] == pytest.approx([0.25, 0.75])


# What each set scores in the test below, by what it is and how it trains: (with augmentation, without).
ACCURACY = {
    "full data": (0.95, 0.95),
    "set, soft labels": (0.80, 0.70),
    "set, hard labels": (0.60, 0.60),
    "random, teacher labels": (0.72, 0.66),
    "random, hard labels": (0.40, 0.35),  # what the scores compared against before: it must not be used
}


def test_a_soft_label_set_is_scored_against_a_teacher_labelled_random_subset(digits):
    """A soft-label set (RaT-BPTT's) against the random subset on the teacher's soft labels, as DD-Ranking does, with
    the training patched to the accuracies above. By hand: HLR = 0.95 - 0.60 = 0.35; IOR = 0.80 - 0.72 = 0.08 (0.40
    against hard labels); LRS = robust(0.5 * 0.08 - 0.5 * 0.35) = robust(-0.135); ARS = robust(0.5 * (0.80 - 0.72) +
    0.5 * (0.70 - 0.66)) = robust(0.06). The random subset's labels are the teacher's, which is the full-data
    baseline's first network."""
    p = params_from_dict(tiny(distill={"method": "ratbptt"}, evaluate={"ddranking": True}))
    x, y = real_subset(digits, 1, generator(7, "a made-up set"))
    syn = SyntheticSet(x, y, None, 1, torch.nn.functional.one_hot(y, 10).float() * 0.9 + 0.01)
    seen: dict[str, torch.Tensor] = {}

    def score(images, targets, data, q, proto, *, runs, networks=None, **kwargs):
        if len(images) == len(data.train_images):
            kind = "full data"
        elif torch.equal(images, syn.images):
            kind = "set, soft labels" if targets.ndim == 2 else "set, hard labels"
        else:
            kind = "random, teacher labels" if targets.ndim == 2 else "random, hard labels"
            seen[kind] = targets
        return EvalResult((ACCURACY[kind][proto.augment is None],) * len(networks or range(runs)))

    with patch("distiller.scoring.scorecard.score", score):
        metrics, _ = scorecard.scorecard(syn, "ratbptt", {}, digits, p, torch.device("cpu"))
    fair = metrics["ddranking"]
    assert fair["random_labels"] == "teacher" and fair["temperature"] == 1.0
    assert fair["hlr"]["mean"] == pytest.approx(0.35) and fair["ior"]["mean"] == pytest.approx(0.08)
    assert fair["lrs"]["mean"] == pytest.approx(ddranking.robust(-0.135), abs=1e-6)
    assert fair["ars"]["mean"] == pytest.approx(ddranking.robust(0.06), abs=1e-6)
    assert metrics["budgets"]["1"]["random_real"]["mean"] == 0.40  # the accuracy table keeps the plain baseline
    proto = protocol_for(p, "ratbptt")
    teacher = ddranking.teacher_labels(_random(p, digits), digits, p, proto, torch.device("cpu"))
    assert torch.equal(seen["random, teacher labels"], teacher)
    assert torch.allclose(teacher.sum(1), torch.ones(len(teacher))) and not torch.equal(teacher, teacher.round())


def _random(p, data) -> torch.Tensor:
    return real_subset(data, 1, generator(p.seed, "random-real"))[0]


def test_evaluate_writes_the_scores_to_the_metrics_and_the_card(tmp_path: Path):
    raw = tiny(evaluate={"ddranking": True})
    root = make_project(tmp_path, raw, *STAGES)
    fair = read_sealed_json(Layout(root).evaluate_metrics, "metrics", "")["ddranking"]
    assert set(fair) == {"lrs", "ars", "hlr", "ior", "weight", "random_labels"} and 0 <= fair["lrs"]["mean"] <= 1
    assert fair["random_labels"] == "hard"  # an MTT set has hard labels: so does its random subset
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
