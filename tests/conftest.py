"""Shared fixtures: an isolated environment, tiny params, and a prepared digits file made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TINY, write_params

from distiller.core.params import Params, params_from_dict
from distiller.core.runtime import configure_torch


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's config, tokens or caches, and none writes to them."""
    home = tmp_path_factory.mktemp("home")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(home / "dvc-global"))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(home / "dvc-system"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(home / "dvc-site"))
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n"
    )


@pytest.fixture
def tiny() -> Params:
    return params_from_dict(TINY)


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.yaml", TINY)


@pytest.fixture(scope="session")
def digits():
    from distiller.data.prepare import prepare

    return prepare(Params().data)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    configure_torch()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The gpu tier runs only where CUDA is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
