"""What a dataset card says about each source: its Hub id (or "original"), a title, and how to get its raw images.

Kept apart from `distiller.data.sources`, which loads them: the package stage needs the words, not the loaders.
"""

from __future__ import annotations

from pathlib import Path


def describe(source: str, root: Path | str = ".") -> dict[str, str]:
    """What the dataset card says about a source: its Hub id (or "original"), a title, how to get its raw images."""
    if source in CARD:
        return CARD[source]
    kind, _, rest = source.partition(":")
    if kind == "hf":
        repo, _, config = rest.partition(":")
        local = (Path(root) / repo).exists()
        return {
            "hub_id": "original" if local else repo,
            "title": repo if not local else Path(repo).name,
            "loader": f'datasets.load_dataset("{repo}"{f", {config!r}" if config else ""}): the train split '
            "(and test split when present), images in [0, 1] as value / 255",
        }
    if kind == "imagefolder":
        return {
            "hub_id": "original",
            "title": f"image folder {Path(rest).name}",
            "loader": "one folder of PNG/JPEG images per class, classes sorted by folder name, files by name; "
            "value / 255",
        }
    return {}


# MNIST and Fashion-MNIST: what a consumer reads to rebuild the test set without distiller
IDX = (
    "the original IDX archives (train: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz; test: "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), checked against torchvision's MD5s: uint8 (N, 28, 28), "
    "value / 255, not padded; the arrays of torchvision.datasets.{cls}(root, train=True/False)"
)

CARD: dict[str, dict[str, str]] = {
    "digits": {
        "hub_id": "sklearn-digits",
        "title": "scikit-learn digits (UCI ML hand-written digits, 8x8)",
        "loader": "sklearn.datasets.load_digits(): images (1797, 8, 8) with values 0..16, targets 0..9",
        "homepage": "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    },
    "mnist": {
        "hub_id": "ylecun/mnist",
        "title": "MNIST (hand-written digits, 28x28 grey)",
        "loader": IDX.format(cls="MNIST"),
        "homepage": "https://yann.lecun.com/exdb/mnist/",
    },
    "fashion-mnist": {
        "hub_id": "zalando-datasets/fashion_mnist",
        "title": "Fashion-MNIST (Zalando article images, 28x28 grey)",
        "loader": IDX.format(cls="FashionMNIST"),
        "homepage": "https://github.com/zalandoresearch/fashion-mnist",
    },
    "cifar10": {
        "hub_id": "uoft-cs/cifar10",
        "title": "CIFAR-10 (32x32 colour, 10 classes)",
        "loader": "torchvision.datasets.CIFAR10(root, train=True/False): uint8 (N, 32, 32, 3), value / 255",
        "homepage": "https://www.cs.toronto.edu/~kriz/cifar.html",
    },
    "cifar100": {
        "hub_id": "uoft-cs/cifar100",
        "title": "CIFAR-100 (32x32 colour, 100 fine classes)",
        "loader": "torchvision.datasets.CIFAR100(root, train=True/False): uint8 (N, 32, 32, 3), value / 255, "
        "fine labels",
        "homepage": "https://www.cs.toronto.edu/~kriz/cifar.html",
    },
}

# (images of the training split, images of the source's own test split or None) of the sources named above, so that
# `distiller validate` can hold a card's test split to its source without the source at hand
SIZES: dict[str, tuple[int, int | None]] = {
    "digits": (1797, None),
    "mnist": (60000, 10000),
    "fashion-mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
}
