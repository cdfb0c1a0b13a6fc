"""The package stage: a Hugging Face `datasets` folder laid out exactly as its Hub repository will be.

`datasets/<source>-distilled-ipc<max>/` holds one config per budget, `ipc<k>/train-00000-of-00001.parquet`, declared
in the card's YAML `configs:` (the largest budget is the default), so `load_dataset(folder_or_repo, "ipc1")` works
offline and on the Hub alike. Rows are stored block-major: the budget-k rows are the first k x classes rows of every
larger config, and each row's `block` says which budget first includes it.

Everything a consumer needs to reproduce the accuracy travels in the folder: the exact float pixels (`pixel_values`,
no 8-bit rounding), the learned lr, the preprocessing (card and `preprocessing/normalization.safetensors`, or
`preprocessing/zca.safetensors` with the ZCA mean, matrix and inverse), the evaluation split of sources without a
test split (`preprocessing/split.safetensors`), the evaluation protocol and the measured accuracy of every budget
beside its references, under one `distiller:` mapping in the card's YAML (the card contract,
`distiller.packaging.contract`, built by `distiller.packaging.card` and rendered by `distiller.packaging.readme`;
docs/packaging.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from distiller.core.files import atomic_dir, save_safetensors
from distiller.core.params import Params
from distiller.core.paths import Layout
from distiller.core.runtime import quiet_datasets
from distiller.data.prepared import Prepared, to_pixels
from distiller.methods.synthetic import SyntheticSet
from distiller.packaging import card, readme
from distiller.packaging.card import BUDGETS_PNG, GRID, NORMALIZATION, SHARD, SPLIT, ZCA, config_name
from distiller.packaging.sidecars import check_picture


def block_order(num_classes: int, ipc: int, budgets: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row order of the largest config: for each budget block, every class's new images (class-major inside).

    Returns (indices into the class-major set, block index of each row); the budget-b_m config is the first
    b_m x classes rows."""
    index, block = [], []
    lo = 0
    for m, hi in enumerate(budgets):
        for c in range(num_classes):
            for j in range(lo, hi):
                index.append(c * ipc + j)
                block.append(m)
        lo = hi
    return torch.tensor(index), torch.tensor(block, dtype=torch.int32)


def features(data: Prepared, soft_labels: bool, preview: bool) -> Any:
    """The one schema of every config: exact float pixels, named classes, optional soft labels and 8-bit preview."""
    from datasets import Array3D, ClassLabel, Features, List, Value
    from datasets import Image as ImageFeature

    cols: dict[str, Any] = {
        "pixel_values": Array3D(shape=data.image_shape, dtype="float32"),
        "label": ClassLabel(names=list(data.classes)),
    }
    if soft_labels:
        cols["soft_label"] = List(Value("float32"), length=data.num_classes)
    cols["block"] = Value("int32")
    if preview:
        cols["image"] = ImageFeature()
    return Features(cols)


def build(p: Params, layout: Layout) -> Path:
    """Write the datasets folder for the current pipeline outputs; returns its path."""
    inp = card.read_inputs(p, layout)
    contract = card.checked(p, inp, layout)
    folder = layout.package_dir(p.package.folder(inp.data.source, inp.syn.ipc))
    with atomic_dir(folder) as out, quiet_datasets():  # the CLI shows its own progress
        infos = write_configs(out, inp.syn, inp.data, inp.budgets, p.package.preview)
        write_sidecars(out, inp.data)
        (out / "images").mkdir()
        copy_picture(layout.grid, out / GRID)
        copy_picture(layout.budgets_png, out / BUDGETS_PNG)
        (out / "README.md").write_text(readme.render(contract, infos))
    return folder


def copy_picture(src: Path, dest: Path) -> None:
    """A picture of the pipeline's outputs, copied only when it is a regular file holding a readable image."""
    check_picture(src, "re-run the stage that writes it")
    shutil.copyfile(src, dest)


def write_configs(
    out: Path, syn: SyntheticSet, data: Prepared, budgets: tuple[int, ...], preview: bool
) -> dict[str, Any]:
    """One parquet shard per budget (block-major rows); returns each config's `DatasetInfo`."""
    from datasets import Dataset, DatasetInfo
    from datasets.splits import SplitDict, SplitInfo

    feats = features(data, syn.soft_labels is not None, preview)
    order, block = block_order(data.num_classes, syn.ipc, budgets)
    infos: dict[str, Any] = {}
    for m, b in enumerate(budgets):
        rows = order[: b * data.num_classes]
        columns: dict[str, Any] = {
            "pixel_values": [x.numpy() for x in syn.images[rows].cpu()],
            "label": syn.labels[rows].cpu().tolist(),
        }
        if syn.soft_labels is not None:
            columns["soft_label"] = syn.soft_labels[rows].cpu().tolist()
        columns["block"] = block[: len(rows)].tolist()
        if preview:
            columns["image"] = _previews(syn.images[rows], data)
        ds = Dataset.from_dict(columns, features=feats)
        shard = out / config_name(b) / SHARD
        shard.parent.mkdir(parents=True)
        ds.to_parquet(str(shard))
        assert m == int(block[len(rows) - 1])
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_bytes=ds.data.nbytes, num_examples=len(ds)))
        size = ds.data.nbytes
        infos[config_name(b)] = DatasetInfo(
            features=feats, splits=splits, download_size=shard.stat().st_size, dataset_size=size
        )
    return infos


def write_sidecars(out: Path, data: Prepared) -> None:
    """The preprocessing (normalisation, or ZCA with its inverse) and, for sources without one, the test split."""
    (out / "preprocessing").mkdir()
    if data.preprocess == "zca":
        c, h, w = data.image_shape
        tensors = {"mean": data.zca_mean, "matrix": data.zca_matrix, "inverse": data.zca_inverse}
        meta = {
            "applies_to": f"pixels scaled to [0, 1] ({data.pixel_scale}), each image flattened to C*H*W = "
            f"{c}*{h}*{w} values (C-major); whitened z = (x - mean) @ matrix, back: x = z @ inverse + mean",
            "eps": data.zca_eps,
            "fitted_by": "kornia.enhance.ZCAWhitening(eps=eps, compute_inv=True) on the training images",
        }
        save_safetensors(out / ZCA, tensors, "distiller.zca", "1", meta)
    else:
        meta = {"applies_to": f"pixels scaled to [0, 1] ({data.pixel_scale}); x_norm = (x - mean) / std per channel"}
        save_safetensors(
            out / NORMALIZATION, {"mean": data.mean, "std": data.std}, "distiller.normalization", "1", meta
        )
    if len(data.test_indices):
        meta = {"source": data.source, "order": "the source's own sample order"}
        save_safetensors(out / SPLIT, {"test_indices": data.test_indices}, "distiller.split", "1", meta)


def _previews(images: torch.Tensor, data: Prepared) -> list[Image.Image]:
    pixels = to_pixels(images, data).numpy()  # (N, H, W, C) uint8
    return [Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else Image.fromarray(a, "RGB") for a in pixels]
