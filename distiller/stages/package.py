"""Stage package: the Hugging Face datasets folder datasets/<source>-distilled-ipc<ipc>/ with its card."""

from __future__ import annotations

from pathlib import Path

from distiller.core.params import Params
from distiller.core.paths import Layout
from distiller.core.runtime import SILENT, Reporter, configure_torch
from distiller.packaging import package


def run(p: Params, layout: Layout, progress: Reporter = SILENT) -> Path:
    """Build the folder from the distilled set and its evaluation (`distiller.packaging.package`)."""
    configure_torch(p.deterministic)
    return package.build(p, layout)


def summary(folder: Path) -> str:
    return f"packaged {folder}"
