import pytest
import torch

from distiller._runtime import DistillerError
from distiller.data import load_prepared, prepare, save_prepared, stratified_split
from distiller.params import DataParams


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
