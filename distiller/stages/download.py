"""Stage download: the source dataset, split and preprocessed, as artifacts/data/prepared.safetensors."""

from __future__ import annotations

from pathlib import Path

from distiller.core.params import Params
from distiller.core.paths import Layout
from distiller.core.runtime import SILENT, Reporter, configure_torch
from distiller.data.prepare import prepare
from distiller.data.prepared import Prepared, save_prepared
from distiller.data.sources import archives


def run(p: Params, layout: Layout, progress: Reporter = SILENT, *, from_dir: Path | None = None) -> Prepared:
    """Prepare `data.source`; `from_dir` (`distiller download --from DIR`) is a folder of the source's original
    archives, verified and copied into `data.root` first."""
    configure_torch(p.deterministic)
    if from_dir is not None:
        archives.import_archives(p.data.source, from_dir, archives.data_root(p.data, layout.root))
    data = prepare(p.data, layout.root)
    save_prepared(data, layout.prepared)
    return data


def summary(data: Prepared) -> str:
    return (
        f"{data.source}: {len(data.train_labels)} train / {len(data.test_labels)} test images, "
        f"{data.num_classes} classes, shape {data.image_shape}, {data.preprocess}, hash {data.content_hash[:12]}"
    )
