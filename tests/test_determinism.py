"""The `deterministic` param: read and checked like every param, applied by `configure_torch` (the one place torch is
configured), set by every stage, recorded in the params stamp of what the stage writes, and on the CPU (where results
are bitwise reproducible already) changing no bit. Its effect on CUDA is tests/test_gpu.py's, run where CUDA is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_project, tiny

from distiller.core.errors import DistillerError
from distiller.core.params import params_from_dict
from distiller.core.paths import Layout
from distiller.core.runtime import CUBLAS_WORKSPACE, configure_torch
from distiller.methods.synthetic import load as load_synthetic


@pytest.fixture
def restore_torch(monkeypatch: pytest.MonkeyPatch):
    """Each test starts with the default mode and no cuBLAS setting, and leaves the process as it found it."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    configure_torch()
    yield
    configure_torch()


def mode() -> tuple[bool, bool, bool]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )


def test_the_param_defaults_off_and_is_checked():
    assert params_from_dict({}).deterministic is False
    assert params_from_dict({"deterministic": True}).deterministic is True
    with pytest.raises(DistillerError, match="deterministic must be true or false"):
        params_from_dict({"deterministic": "sometimes"})


def test_configure_torch_applies_the_mode_and_takes_it_back(restore_torch, monkeypatch: pytest.MonkeyPatch):
    import os

    configure_torch(deterministic=True)
    assert mode() == (True, True, False)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE == ":4096:8"
    configure_torch(deterministic=False)  # the next stage in the same process runs as its params say
    assert mode() == (False, False, False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other deterministic setting is the user's choice
    configure_torch(deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")  # one cuBLAS is not deterministic under is replaced
    configure_torch(deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE


def test_a_stage_applies_the_mode_stamps_it_and_changes_no_bit_on_the_cpu(restore_torch, tmp_path: Path):
    """distill with `deterministic: true` runs with torch's deterministic mode on, records the param in the set's
    provenance (the params stamp), and distils bitwise the images and lr of a run without it (the CPU)."""
    raw = {**tiny(distill={"ipc": 2}), "device": "cpu"}
    plain = make_project(tmp_path / "plain", raw, "download", "expert-buffer", "distill")
    assert mode()[0] is False
    strict = make_project(tmp_path / "strict", {**raw, "deterministic": True}, "download", "expert-buffer", "distill")
    assert mode() == (True, True, False)  # set by the stages' configure_torch, not by this test
    (a, prov_a), (b, prov_b) = (load_synthetic(Layout(r).synthetic) for r in (plain, strict))
    assert prov_a["params"]["deterministic"] is False and prov_b["params"]["deterministic"] is True
    assert torch.equal(a.images, b.images) and a.lr == b.lr
