"""The CUDA path: a tiny pipeline on the GPU, reproducible with `deterministic: true` (skipped without CUDA; not yet
run on a GPU with the param, docs/scaling.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import STAGES, make_project, tiny

from distiller.core.paths import Layout
from distiller.core.runtime import configure_torch
from distiller.methods.synthetic import load as load_synthetic

pytestmark = pytest.mark.gpu


@pytest.fixture
def deterministic(monkeypatch: pytest.MonkeyPatch):
    """The param `deterministic: true` sets the mode in every stage (`runtime.configure_torch`); put it back after."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield {"deterministic": True}
    configure_torch()


@pytest.mark.parametrize("method", ["mtt", "ratbptt"])
def test_the_pipeline_runs_on_cuda_and_reproduces(method: str, tmp_path: Path, deterministic):
    device = os.environ.get("DISTILLER_TEST_DEVICE", "cuda")
    raw = {**tiny(distill={"method": method, "ipc": 2, "budgets": [1, 2]}), "device": device, **deterministic}
    runs = [make_project(tmp_path / str(i), raw, *STAGES) for i in range(2)]
    a, b = (load_synthetic(Layout(r).synthetic)[0] for r in runs)
    assert torch.equal(a.images, b.images)
    assert all((r / "datasets" / "digits-distilled-ipc2" / "README.md").is_file() for r in runs)


def test_checkpointed_mtt_matches_full_on_cuda(tmp_path: Path, deterministic):
    """mtt.memory checkpoint replays the generator on the GPU too: the images of full MTT to float32 rounding."""
    device = os.environ.get("DISTILLER_TEST_DEVICE", "cuda")
    images = {}
    for memory in ("full", "checkpoint"):
        raw = {**tiny(distill={"ipc": 2}, mtt={"memory": memory, "batch_syn": 5}), "device": device, **deterministic}
        root = make_project(tmp_path / memory, raw, "download", "expert-buffer", "distill")
        images[memory] = load_synthetic(Layout(root).synthetic)[0].images
    assert torch.allclose(images["full"], images["checkpoint"], rtol=1e-5, atol=1e-5)
