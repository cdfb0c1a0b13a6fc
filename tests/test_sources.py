"""Sources, from tiny files in each real on-disk format: MNIST IDX gz, CIFAR python batches, parquet, image folders.

After torchvision's `inject_fake_data`: nothing is downloaded. The fake archives' MD5s are injected into
`archives.CHECKSUMS`. Hostile inputs (files beside the archives, pickles that call functions, decompression bombs,
undecodable images, splits that leave a class empty) are in the second half.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.errors import DistillerError
from distiller.core.params import DataParams
from distiller.core.paths import Layout
from distiller.data.prepare import prepare
from distiller.data.prepared import load_prepared, to_unit
from distiller.data.sources import archives

runner = CliRunner()
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """An IDX file as LeCun's: magic 0x0000 08 <ndim> (unsigned bytes), big-endian dimensions, the bytes; gzipped."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder of the four MNIST archives: 20 train and 10 test 28x28 images, every class in both."""
    rng = np.random.default_rng(0)
    arrays = {
        MNIST_FILES[0]: rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        MNIST_FILES[1]: (np.arange(20) % 10).astype(np.uint8),
        MNIST_FILES[2]: rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        MNIST_FILES[3]: (np.arange(10) % 10).astype(np.uint8),
    }
    src = tmp_path / "archives"
    src.mkdir()
    for name, array in arrays.items():
        write_idx_gz(src / f"{name}.gz", array)
    monkeypatch.setitem(archives.CHECKSUMS, "mnist", {f"{n}.gz": archives.md5(src / f"{n}.gz") for n in arrays})
    return src, arrays


@pytest.fixture
def project(tmp_path: Path, tiny_yaml: Path) -> Path:
    return tmp_path


def download(project: Path, *extra: str):
    return runner.invoke(app, ["download", "--params", str(project / "params.yaml"), "--root", str(project), *extra])


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_checksums_come_from_torchvision(monkeypatch: pytest.MonkeyPatch):
    from torchvision.datasets import CIFAR100, MNIST, FashionMNIST

    monkeypatch.setattr(archives, "CHECKSUMS", {})
    assert archives.checksums("mnist") == dict(MNIST.resources)
    assert archives.checksums("fashion-mnist") == dict(FashionMNIST.resources)
    assert archives.checksums("cifar100") == {CIFAR100.filename: CIFAR100.tgz_md5}


def test_from_copies_verified_archives_and_prepares_mnist(project: Path, mnist):
    from torchvision.datasets import MNIST

    src, arrays = mnist
    result = download(project, "--source", "mnist", "--from", str(src))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("mnist: 20 train / 10 test images, 10 classes, shape (1, 28, 28), normalize")
    raw = project / "data" / "raw" / "MNIST" / "raw"  # data.root is relative to --root
    for name in MNIST_FILES:
        assert (raw / f"{name}.gz").read_bytes() == (src / f"{name}.gz").read_bytes()
    data = load_prepared(Layout(project).prepared)
    assert data.classes == tuple(MNIST.classes) and data.license == "cc-by-sa-3.0"
    assert data.pixel_scale == "value / 255" and len(data.test_indices) == 0
    pixels = torch.from_numpy(arrays[MNIST_FILES[0]]).float().unsqueeze(1) / 255
    assert torch.allclose(to_unit(data.train_images, data), pixels, atol=1e-6)
    assert data.train_labels.tolist() == arrays[MNIST_FILES[1]].tolist()
    assert data.test_labels.tolist() == arrays[MNIST_FILES[3]].tolist()
    # offline, the archives now in data.root are enough (verified, never downloaded again)
    assert download(project, "--source", "mnist").exit_code == 0


def test_wrong_checksum_names_the_file_and_writes_nothing(project: Path, mnist, monkeypatch):
    src, _ = mnist
    monkeypatch.setitem(archives.CHECKSUMS["mnist"], "t10k-labels-idx1-ubyte.gz", "0" * 32)
    result = download(project, "--source", "mnist", "--from", str(src))
    assert_one_line_error(result, "t10k-labels-idx1-ubyte.gz", "MD5")
    assert not (project / "data").exists()  # checked before anything is copied
    assert not Layout(project).prepared.exists()


def test_truncated_archive_is_refused(project: Path, mnist):
    src, _ = mnist
    path = src / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    result = download(project, "--source", "mnist", "--from", str(src))
    assert_one_line_error(result, "train-images-idx3-ubyte.gz", "truncated")
    assert not (project / "data").exists() and not Layout(project).prepared.exists()


def test_truncated_gz_whose_checksum_matches_is_one_line(project: Path, mnist, monkeypatch):
    """A file whose MD5 is right but which cannot be unpacked (here: the checksum table itself was made from it)."""
    src, _ = mnist
    raw = project / "data" / "raw" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / f"{name}.gz").write_bytes((src / f"{name}.gz").read_bytes())
    bad = raw / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    monkeypatch.setitem(archives.CHECKSUMS["mnist"], bad.name, archives.md5(bad))
    assert_one_line_error(download(project, "--source", "mnist"), str(bad), "cannot unpack")
    assert not Layout(project).prepared.exists()


def offline(monkeypatch: pytest.MonkeyPatch) -> list:
    """torchvision's downloader with no network; returns the list of calls it gets."""
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise URLError("no network")

    monkeypatch.setattr(tv_utils, "download_url", fail)
    return calls


def test_missing_archives_offline_say_where_to_put_them(project: Path, mnist, monkeypatch):
    calls = offline(monkeypatch)
    message = assert_one_line_error(download(project, "--source", "mnist"), "download failed", "--from DIR")
    assert str(project / "data" / "raw" / "MNIST" / "raw") in message and calls
    # a bad archive already in data.root is reported before torchvision could download over it
    calls.clear()
    raw = project / "data" / "raw" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"not the archive")
    assert_one_line_error(download(project, "--source", "mnist"), "train-labels-idx1-ubyte.gz", "MD5")
    assert not calls and not Layout(project).prepared.exists()


def test_from_refuses_other_sources_and_missing_files(project: Path, mnist):
    src, _ = mnist
    assert_one_line_error(download(project, "--from", str(src)), "--from applies to mnist")  # source: digits
    (src / "t10k-images-idx3-ubyte.gz").unlink()
    assert_one_line_error(download(project, "--source", "mnist", "--from", str(src)), "missing t10k-images")
    assert not (project / "data").exists()


def cifar10_archive(
    folder: Path, monkeypatch: pytest.MonkeyPatch, replace: dict[str, bytes] | None = None
) -> tuple[np.ndarray, list[int], list[str]]:
    """cifar-10-python.tar.gz with the real layout: 5 training batches of 2 images, a test batch of 4, batches.meta
    (members named in `replace` get those bytes instead)."""
    from torchvision.datasets import CIFAR10

    rng = np.random.default_rng(1)
    build = folder / "build" / "cifar-10-batches-py"
    build.mkdir(parents=True)
    names = [f"class_{i}" for i in range(10)]
    images = rng.integers(0, 256, (14, 3 * 32 * 32), dtype=np.uint8)  # rows: R plane, G plane, B plane
    labels = [i % 10 for i in range(14)]
    batches = {f"data_batch_{b + 1}": slice(2 * b, 2 * b + 2) for b in range(5)} | {"test_batch": slice(10, 14)}
    for name, rows in batches.items():
        entry = {"batch_label": name, "data": images[rows], "labels": labels[rows], "filenames": ["x.png"]}
        (build / name).write_bytes(pickle.dumps(entry, protocol=2))
    (build / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))
    for name, content in (replace or {}).items():
        (build / name).write_bytes(content)
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build, arcname="cifar-10-batches-py")
    assert [b for b, _ in CIFAR10.train_list + CIFAR10.test_list] == list(batches)  # the real archive's members
    monkeypatch.setitem(archives.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": archives.md5(archive)})
    return images, labels, names


def test_cifar10_from_its_python_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    images, labels, names = cifar10_archive(tmp_path / "download", monkeypatch)
    root = tmp_path / "raw"
    archives.import_archives("cifar10", tmp_path / "download", root)
    assert (root / "cifar-10-python.tar.gz").is_file()
    data = prepare(DataParams(source="cifar10", root=str(root)))
    assert data.image_shape == (3, 32, 32) and data.classes == tuple(names) and data.license == "unknown"
    assert len(data.train_labels) == 10 and len(data.test_labels) == 4
    assert data.train_labels.tolist() == labels[:10] and data.test_labels.tolist() == labels[10:]
    pixels = torch.from_numpy(images).float().view(-1, 3, 32, 32) / 255
    assert torch.allclose(to_unit(data.test_images, data), pixels[10:], atol=1e-6)
    small = prepare(DataParams(source="cifar10", root=str(root), resolution=16))
    assert small.image_shape == (3, 16, 16)


def grey(value: int, size: tuple[int, int] = (6, 6)) -> Image.Image:
    return Image.new("L", size, value)


def test_hf_local_parquet_uses_its_test_split_and_resizes(tmp_path: Path):
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    feats = Features(
        {"picture": ImageFeature(), "digit": ClassLabel(names=["zero", "one", "two"]), "note": Value("string")}
    )
    folder = tmp_path / "hfdata"
    folder.mkdir()
    for split, n in (("train", 9), ("test", 6)):
        values = [20 * i for i in range(n)]
        rows = {"picture": [grey(v) for v in values], "digit": [i % 3 for i in range(n)], "note": ["x"] * n}
        Dataset.from_dict(rows, features=feats).to_parquet(str(folder / f"{split}.parquet"))
    data = prepare(DataParams(source="hf:hfdata", resolution=4), root=tmp_path)  # relative to the project root
    assert data.image_shape == (1, 4, 4) and data.classes == ("zero", "one", "two")
    assert len(data.test_indices) == 0 and len(data.train_labels) == 9 and len(data.test_labels) == 6
    assert data.test_labels.tolist() == [0, 1, 2, 0, 1, 2]
    # a uniform image stays uniform through the resize: pixel value / 255
    expected = torch.tensor([20.0 * i for i in range(6)]).view(-1, 1, 1, 1).expand(-1, 1, 4, 4) / 255
    assert torch.allclose(to_unit(data.test_images, data), expected, atol=1e-6)
    assert prepare(DataParams(source=f"hf:{folder}"), root="/").image_shape == (1, 6, 6)  # native size


def test_hf_saved_dataset_with_named_columns_and_no_test_split(tmp_path: Path):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    n = 12
    rgb = [Image.new("RGB", (5, 5), (10 * i, 0, 255 - 10 * i)) for i in range(n)]
    rows = {"thumb": [grey(0, (2, 2))] * n, "photo": rgb, "kind": ["dog" if i % 2 else "cat" for i in range(n)]}
    feats = Features({"thumb": ImageFeature(), "photo": ImageFeature(), "kind": Value("string")})
    DatasetDict({"train": Dataset.from_dict(rows, features=feats)}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DistillerError, match=r"2 Image columns \(thumb, photo\).*data.image_column"):
        prepare(DataParams(source="hf:saved"), root=tmp_path)
    with pytest.raises(DistillerError, match=r"no ClassLabel column.*data.label_column"):
        prepare(DataParams(source="hf:saved", image_column="photo"), root=tmp_path)
    data = prepare(DataParams(source="hf:saved", image_column="photo", label_column="kind"), root=tmp_path)
    assert data.image_shape == (3, 5, 5) and data.classes == ("cat", "dog")
    assert len(data.test_indices) == 4 and torch.bincount(data.test_labels).tolist() == [2, 2]  # stratified
    with pytest.raises(DistillerError, match="cannot load"):
        prepare(DataParams(source="hf:no-such-folder"), root=tmp_path)


def test_imagefolder_sorts_classes_and_needs_a_resolution_for_mixed_sizes(tmp_path: Path):
    folder = tmp_path / "pics"
    for c, name in enumerate(["b_dog", "a_cat", "c_eel"]):  # created out of order: classes sort by name
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8) if i % 2 else (6, 10), (60 * c, 20 * i, 0)).save(folder / name / f"{i}.png")
    grey(30).save(folder / "c_eel" / "4.jpg")
    (folder / "a_cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DistillerError, match=r"differ in size.*data.resolution"):
        prepare(DataParams(source="imagefolder:pics"), root=tmp_path)
    data = prepare(DataParams(source="imagefolder:pics", resolution=5, test_fraction=0.25), root=tmp_path)
    assert data.classes == ("a_cat", "b_dog", "c_eel") and data.image_shape == (3, 5, 5)  # RGB: not all grey
    assert len(data.train_labels) + len(data.test_labels) == 13
    assert torch.bincount(data.test_labels).tolist() == [1, 1, 1]  # stratified
    pixels = to_unit(data.train_images, data)
    red = {c: pixels[data.train_labels == c][:, 0] for c in (0, 1)}  # uniform images stay uniform when resized
    assert torch.allclose(red[0], torch.full_like(red[0], 60 / 255), atol=1e-6)  # a_cat was made with red 60
    assert torch.allclose(red[1], torch.zeros_like(red[1]), atol=1e-6)  # b_dog with red 0


def test_imagefolder_through_the_cli(project: Path):
    folder = project / "greys"
    for name in ("one", "two"):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            img = io.BytesIO()
            grey(40 * i, (7, 7)).save(img, format="PNG")
            (folder / name / f"{i}.png").write_bytes(img.getvalue())
    result = download(project, "--source", "imagefolder:greys")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("imagefolder:greys: 6 train / 2 test images, 2 classes, shape (1, 7, 7)")


def test_unknown_source_suggests_a_name():
    with pytest.raises(DistillerError, match=r"did you mean 'mnist'.*hf:<repo_id>"):
        prepare(DataParams(source="mnsit"))


# ---------------------------------------------------------------------------------------------------------------------
# hostile sources: only verified archives are read, every bad file is one line naming it


def test_files_beside_the_archives_are_never_read(project: Path, mnist, monkeypatch):
    """torchvision's classes would read extracted IDX files and cached `processed/*.pt` tensors (with torch.load)
    placed beside the archives; no checksum covers those, so they are never read."""
    src, arrays = mnist
    raw = project / "data" / "raw" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        write_idx_gz(raw / "x.gz", np.full_like(arrays[name], 7))
        with gzip.open(raw / "x.gz") as f:
            (raw / name).write_bytes(f.read())  # extracted, every label 7
    (raw.parent / "processed").mkdir()
    for name in ("training.pt", "test.pt"):
        (raw.parent / "processed" / name).write_bytes(b"not even a tensor file")
    calls = offline(monkeypatch)
    assert_one_line_error(download(project, "--source", "mnist"), "download failed")  # no archive, no data
    assert calls and not Layout(project).prepared.exists()
    assert download(project, "--source", "mnist", "--from", str(src)).exit_code == 0
    data = load_prepared(Layout(project).prepared)
    assert data.train_labels.tolist() == arrays[MNIST_FILES[1]].tolist()  # from the archives, not the 7s


class _Calls:
    """A pickled object that, when unpickled by an unrestricted loader, runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_cifar_pickle_that_calls_a_function_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Even from an archive whose checksum matches (here: forged), a pickle is read as arrays and plain data only."""
    marker = tmp_path / "ran"
    evil = pickle.dumps({"data": _Calls(marker), "labels": [0, 1]}, protocol=2)
    cifar10_archive(tmp_path / "download", monkeypatch, replace={"data_batch_1": evil})
    root = tmp_path / "raw"
    archives.import_archives("cifar10", tmp_path / "download", root)
    with pytest.raises(DistillerError, match=r"cifar-10-python.tar.gz: cannot read .*data_batch_1 \(refused"):
        prepare(DataParams(source="cifar10", root=str(root)))
    assert not marker.exists()


def test_a_cifar_batch_of_the_wrong_shape_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    wrong = pickle.dumps({"data": np.zeros((2, 10), dtype=np.uint8), "labels": [0, 1]}, protocol=2)
    cifar10_archive(tmp_path / "download", monkeypatch, replace={"data_batch_2": wrong})
    archives.import_archives("cifar10", tmp_path / "download", tmp_path / "raw")
    with pytest.raises(DistillerError, match=r"data_batch_2: `data` is not an \(N, 3072\) array"):
        prepare(DataParams(source="cifar10", root=str(tmp_path / "raw")))


def png_bomb(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims `width` x `height` pixels: a few bytes that would decode to gigabytes."""
    import zlib

    buf = io.BytesIO()
    grey(0, (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", width, height)  # IHDR data starts after the signature, length and type
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # the IHDR chunk's CRC over type and data
    return bytes(png)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (png_bomb(100_000, 100_000), "claims more than 50000000 pixels, not decoded"),
        (png_bomb(10_000, 10_000), "claims more than 50000000 pixels, not decoded"),  # below PIL's own error
        (b"not an image at all", "not a readable image"),
        (None, "not a readable image"),  # a PNG cut short
    ],
    ids=["bomb", "bomb below PIL's error", "garbage", "truncated"],
)
def test_hostile_images_in_an_imagefolder_are_one_line(project: Path, monkeypatch, content, fragment):
    from distiller.data.sources import images

    monkeypatch.setattr(images, "MAX_PIXELS", 50_000_000)
    folder = project / "pics"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            grey(40 * i).save(folder / name / f"{i}.png")
    bad = folder / "b" / "2.png"
    bad.write_bytes(content if content is not None else bad.read_bytes()[:-30])
    assert_one_line_error(download(project, "--source", "imagefolder:pics"), str(bad), fragment)
    assert not Layout(project).prepared.exists()


def test_an_undecodable_image_in_an_hf_source_names_its_row(tmp_path: Path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    good = io.BytesIO()
    grey(9).save(good, format="PNG")
    rows = {"image": [{"bytes": good.getvalue(), "path": None}, {"bytes": b"junk", "path": None}], "label": [0, 1]}
    feats = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    (tmp_path / "hf").mkdir()
    Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "hf" / "train.parquet"))
    with pytest.raises(DistillerError, match=r"hf:hf: train row 1: not a readable image"):
        prepare(DataParams(source="hf:hf"), root=tmp_path)


def test_a_split_that_leaves_a_class_without_test_images_is_refused_at_download(project: Path):
    folder = project / "pics"
    for name, n in (("many", 8), ("lonely", 1)):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            grey(10 * i).save(folder / name / f"{i}.png")
    result = download(project, "--source", "imagefolder:pics")
    assert_one_line_error(result, "class 'lonely' has no test image", "data.test_fraction")  # round(0.25 * 1) = 0
    assert not Layout(project).prepared.exists()
    result = download(project, "--source", "imagefolder:pics", "-S", "data.test_fraction=0.9")
    assert_one_line_error(result, "has no train image")


def test_a_fifo_among_the_images_is_named_not_waited_for(project: Path):
    folder = project / "pics"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            grey(40 * i).save(folder / name / f"{i}.png")
    os.mkfifo(folder / "a" / "fifo.png")
    assert_one_line_error(download(project, "--source", "imagefolder:pics"), "fifo.png", "not a regular file")


def _hf_folder(root: Path) -> None:
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    feats = Features({"img": ImageFeature(), "lab": ClassLabel(names=["x", "y"]), "n": Value("float32")})
    rows = {"img": [grey(10 * i) for i in range(8)], "lab": [i % 2 for i in range(8)], "n": [0.5] * 8}
    (root / "hf").mkdir()
    Dataset.from_dict(rows, features=feats).to_parquet(str(root / "hf" / "train.parquet"))


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["data.label_column=img"], "column 'img' (data.label_column) is not a ClassLabel, integer or string column"),
        (["data.image_column=lab"], "column 'lab' (data.image_column) is not an Image column"),
        (["data.label_column=n"], "column 'n' (data.label_column) is not a ClassLabel, integer or string column"),
        (["data.test_fraction=0.9"], "has no train image"),
    ],
)
def test_hf_columns_of_the_wrong_kind_are_one_line(project: Path, overrides, fragment):
    """Also: `datasets` prints no progress bar of its own, so the error is the one line on stderr."""
    _hf_folder(project)
    sets = [arg for o in overrides for arg in ("-S", o)]
    assert_one_line_error(download(project, "--source", "hf:hf", *sets), fragment)


def test_a_source_named_by_a_path_packages_under_package_name(project: Path):
    """`imagefolder:pics` cannot name a folder or a Hub repo: the package stage asks for package.name and uses it."""
    folder = project / "pics"
    for c in range(3):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(6):
            grey(40 * c + 5 * i).save(folder / f"class{c}" / f"{i}.png")
    sets = ["--params", str(project / "params.yaml"), "--root", str(project), "-S", "data.source=imagefolder:pics"]
    for stage in ("download", "expert-buffer", "distill", "evaluate"):
        result = runner.invoke(app, [stage, *sets])
        assert result.exit_code == 0, (stage, result.output)
    assert_one_line_error(runner.invoke(app, ["package", *sets]), "set package.name", "imagefolder:pics")
    result = runner.invoke(app, ["package", *sets, "-S", "package.name=pics-distilled-ipc1"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["validate", str(project / "datasets" / "pics-distilled-ipc1")]).exit_code == 0
