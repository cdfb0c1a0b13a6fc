"""Stage package: the Hugging Face datasets folder datasets/<source>-distilled-ipc<ipc>/ with its card."""

from __future__ import annotations

from pathlib import Path

from distiller import package
from distiller._runtime import SILENT, Reporter, configure_torch
from distiller.params import Params
from distiller.paths import Layout


def run(p: Params, layout: Layout, progress: Reporter = SILENT) -> Path:
    """Build the folder from the distilled set and its evaluation (`distiller.package`)."""
    configure_torch()
    return package.build(p, layout)


def summary(folder: Path) -> str:
    return f"packaged {folder}"
