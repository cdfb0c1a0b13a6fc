import pytest
import torch

from distiller.core.errors import DistillerError
from distiller.core.params import DataParams
from distiller.data.prepare import prepare, stratified_split
from distiller.data.prepared import load_prepared, save_prepared


def test_digits_split_is_stratified_and_fixed(digits):
    assert digits.image_shape == (1, 8, 8) and digits.num_classes == 10
    n_train, n_test = len(digits.train_labels), len(digits.test_labels)
    assert n_train + n_test == 1797 and abs(n_test / 1797 - 0.25) < 0.01
    test_count, train_count = torch.bincount(digits.test_labels), torch.bincount(digits.train_labels)
    share = test_count / (train_count + test_count)
    assert torch.allclose(share, torch.full((10,), 0.25), atol=0.01)
    assert prepare(DataParams()).content_hash == digits.content_hash  # same seed, same split
    assert prepare(DataParams(split_seed=1)).content_hash != digits.content_hash


def test_normalisation_uses_training_statistics(digits):
    assert torch.allclose(digits.train_images.mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(digits.train_images.std(), torch.tensor(1.0), atol=1e-3)
    assert digits.classes == tuple(str(i) for i in range(10))


def test_split_indices_are_disjoint_and_complete():
    labels = torch.arange(4).repeat(25)
    train, test = stratified_split(labels, 0.2, seed=3)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(train.tolist() + test.tolist()) == list(range(100))
    assert torch.equal(torch.bincount(labels[test]), torch.full((4,), 5))


def test_prepared_file_round_trips_and_refuses_damage(digits, tmp_path):
    path = tmp_path / "prepared.safetensors"
    save_prepared(digits, path)
    loaded = load_prepared(path)
    assert loaded.content_hash == digits.content_hash
    assert torch.equal(loaded.train_images, digits.train_images) and torch.equal(
        loaded.test_indices, digits.test_indices
    )
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # flip bits inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(DistillerError, match="content hash mismatch"):
        load_prepared(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DistillerError, match="cannot read prepared data"):
        load_prepared(path)
    with pytest.raises(DistillerError, match="prepared data not found"):
        load_prepared(tmp_path / "nothing.safetensors")


def test_unknown_source_is_refused():
    with pytest.raises(DistillerError, match="unknown source 'mnsit'"):
        prepare(DataParams(source="mnsit"))


# ---------------------------------------------------------------------------------------------------------------------
# ZCA whitening (MTT's variant, docs/methods.md)


@pytest.fixture(scope="module")
def zca():
    return prepare(DataParams(preprocess="zca", zca_eps=0.1))


def _digit_pixels() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8) in [0, 1]


def test_normalize_stays_the_default_and_stores_no_zca(digits, tmp_path):
    assert digits.preprocess == "normalize" and digits.zca_matrix.numel() == 0 and digits.zca_eps == 0
    save_prepared(digits, tmp_path / "prepared.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "prepared.safetensors"), framework="pt") as f:
        assert not any(k.startswith("zca") for k in f.keys())  # noqa: SIM118
        assert "zca_eps" not in f.metadata()["distiller"]


def test_zca_whitens_train_and_test_with_the_training_fit(zca, digits):
    from kornia.enhance import ZCAWhitening

    assert zca.preprocess == "zca" and zca.zca_eps == 0.1
    assert torch.equal(zca.test_indices, digits.test_indices)  # the same split as with normalize
    pixels = _digit_pixels()
    test = pixels[zca.test_indices]
    train = pixels[[i for i in range(len(pixels)) if i not in set(zca.test_indices.tolist())]]
    assert zca.zca_mean.shape == (1, 64) and zca.zca_matrix.shape == (64, 64) == zca.zca_inverse.shape
    assert torch.allclose(zca.zca_mean, train.flatten(1).mean(0, keepdim=True), atol=1e-6)  # the train mean
    reference = ZCAWhitening(eps=0.1, compute_inv=True).fit(train)
    assert torch.allclose(zca.train_images, reference(train), atol=1e-5)
    assert torch.allclose(zca.test_images, reference(test), atol=1e-5)  # test images use the train fit
    assert torch.equal(zca.mean, torch.zeros(1)) and torch.equal(zca.std, torch.ones(1))  # MTT whitens raw pixels
    # kornia scales each covariance eigenvalue s to s / (s + eps): the whitened training covariance has exactly those
    s = torch.linalg.eigvalsh(torch.cov(train.flatten(1).double().T))
    w = torch.linalg.eigvalsh(torch.cov(zca.train_images.flatten(1).double().T))
    assert torch.allclose(w, s / (s + 0.1), atol=1e-4)


def test_zca_with_a_small_eps_gives_identity_covariance():
    from distiller.data.prepare import fit_zca

    g = torch.Generator().manual_seed(0)
    mixed = torch.randn(2000, 12, generator=g) @ torch.randn(12, 12, generator=g)  # correlated features
    x = (mixed / 10 + 0.5).view(-1, 3, 2, 2)
    fit = fit_zca(x, eps=1e-6)
    z = (x.flatten(1) - fit["zca_mean"]) @ fit["zca_matrix"]
    assert torch.allclose(torch.cov(z.T), torch.eye(12), atol=5e-3)  # float32 fit


def test_zca_inverse_round_trips_to_pixels(zca):
    from distiller.data.prepared import preprocess, to_unit

    pixels = _digit_pixels()[zca.test_indices]
    assert torch.allclose(to_unit(zca.test_images, zca), pixels, atol=1e-5)
    assert torch.allclose(preprocess(pixels, zca), zca.test_images, atol=1e-5)


def test_zca_file_round_trips_and_the_hash_covers_the_transform(zca, digits, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    assert zca.content_hash != digits.content_hash
    path = tmp_path / "prepared.safetensors"
    save_prepared(zca, path)
    loaded = load_prepared(path)
    assert loaded.preprocess == "zca" and loaded.zca_eps == 0.1 and loaded.content_hash == zca.content_hash
    assert torch.equal(loaded.zca_inverse, zca.zca_inverse) and torch.equal(loaded.zca_mean, zca.zca_mean)
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    tensors["zca_inverse"][0, 0] += 1  # a different inverse, same images: still caught
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(DistillerError, match="content hash mismatch"):
        load_prepared(path)


def test_a_validation_split_is_carved_out_of_train_and_never_packaged(digits, tmp_path):
    """data.validation: tuning scores on images held out of the training set, never on the test split; such a run
    is refused by the package stage."""
    import dataclasses

    from helpers import STAGES, make_project, tiny
    from typer.testing import CliRunner

    from distiller.cli.app import app
    from distiller.core.params import Params
    from distiller.data.prepared import to_unit

    tuned = prepare(dataclasses.replace(Params().data, validation=0.2))
    assert tuned.held_out == "validation"
    assert len(tuned.train_labels) + len(tuned.test_labels) == len(digits.train_labels)
    rows = lambda x, data: {tuple(r) for r in (to_unit(x, data) * 16).round().flatten(1).int().tolist()}  # value/16
    assert rows(tuned.test_images, tuned) <= rows(digits.train_images, digits)  # carved out of train, not test
    assert torch.bincount(tuned.test_labels).min() > 0
    root = make_project(tmp_path, tiny(data={"validation": 0.2}), *STAGES[:-1])
    result = CliRunner().invoke(app, ["package", "--params", str(root / "params.yaml"), "--root", str(root)])
    assert result.exit_code == 2 and "validation split" in result.stderr, result.output
