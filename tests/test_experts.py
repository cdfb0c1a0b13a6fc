import json
import shutil
from dataclasses import replace

import pytest
import torch

from distiller.core.errors import DistillerError
from distiller.core.params import ModelParams
from distiller.methods.buffer import load_buffer, load_trajectory, manifest, save_trajectory, write_manifest
from distiller.methods.experts import train_expert


@pytest.fixture
def expert(digits, tiny):
    return train_expert(digits, tiny.model, tiny.expert, tiny.augment, tiny.seed, 0, torch.device("cpu"))


def test_trajectory_records_init_and_every_epoch(expert, tiny):
    trajectory, acc = expert
    assert len(trajectory) == tiny.expert.epochs + 1 and 0 <= acc <= 1
    assert set(trajectory[0]) == {
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "features.1.bias",
        "features.4.weight",
        "features.4.bias",
        "features.5.weight",
        "features.5.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert not torch.equal(trajectory[0]["classifier.weight"], trajectory[-1]["classifier.weight"])


def test_trajectories_round_trip_by_name(expert, digits, tiny, tmp_path):
    trajectory, _ = expert
    path = tmp_path / "expert_000.safetensors"
    save_trajectory(trajectory, path, manifest(digits, tiny.model, tiny.expert, tiny.augment, tiny.seed))
    loaded = load_trajectory(path)
    assert len(loaded) == len(trajectory)
    for epoch, (a, b) in enumerate(zip(trajectory, loaded, strict=True)):
        assert set(a) == set(b), epoch
        for name in a:
            assert torch.equal(a[name], b[name]), (epoch, name)


def test_buffer_for_other_data_or_architecture_is_refused(expert, digits, tiny, tmp_path):
    trajectory, acc = expert
    info = manifest(digits, tiny.model, replace(tiny.expert, num_experts=1), tiny.augment, tiny.seed)
    seal = save_trajectory(trajectory, tmp_path / "expert_000.safetensors", info)
    write_manifest(tmp_path, info, [acc], [seal])
    assert len(load_buffer(tmp_path, digits, tiny.model, min_epochs=2).trajectories) == 1
    with pytest.raises(DistillerError, match="another architecture"):
        load_buffer(tmp_path, digits, ModelParams(width=16), min_epochs=2)
    with pytest.raises(DistillerError, match="distillation needs 9"):
        load_buffer(tmp_path, digits, tiny.model, min_epochs=9)
    sealed = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**sealed, "dataset_hash": "0" * 64}))  # edited by hand
    with pytest.raises(DistillerError, match="was edited or is not distiller's"):
        load_buffer(tmp_path, digits, tiny.model, min_epochs=2)
    write_manifest(tmp_path, {**info, "dataset_hash": "0" * 64}, [acc], [seal])  # a buffer made for other data
    with pytest.raises(DistillerError, match="trained on other data"):
        load_buffer(tmp_path, digits, tiny.model, min_epochs=2)


def test_an_expert_from_another_buffer_is_refused(expert, digits, tiny, tmp_path):
    """Each trajectory names the data, network and lr it was trained for; a file swapped in from another buffer (another
    split, seed or lr) is refused even though it is intact."""
    trajectory, acc = expert
    info = manifest(digits, tiny.model, replace(tiny.expert, num_experts=1), tiny.augment, tiny.seed)
    other = {**info, "dataset_hash": "f" * 64}
    seal = save_trajectory(trajectory, tmp_path / "expert_000.safetensors", other)
    write_manifest(tmp_path, info, [acc], [seal])
    with pytest.raises(DistillerError, match="trained for another buffer"):
        load_buffer(tmp_path, digits, tiny.model, min_epochs=2)
    with pytest.raises(DistillerError, match="expert buffer not found"):
        load_buffer(tmp_path / "nowhere", digits, tiny.model, min_epochs=2)


def test_a_swapped_or_copied_expert_is_refused(expert, digits, tiny, tmp_path):
    """The manifest records each file's seal: an intact expert of the same buffer under another name is refused."""
    trajectory, acc = expert
    info = manifest(digits, tiny.model, tiny.expert, tiny.augment, tiny.seed)
    doubled = [{k: 2 * v for k, v in params.items()} for params in trajectory]
    pair = (trajectory, doubled)
    seals = [save_trajectory(t, tmp_path / f"expert_{i:03d}.safetensors", info) for i, t in enumerate(pair)]
    write_manifest(tmp_path, info, [acc, acc], seals)
    assert len(load_buffer(tmp_path, digits, tiny.model, min_epochs=2).trajectories) == 2
    shutil.copyfile(tmp_path / "expert_000.safetensors", tmp_path / "expert_001.safetensors")
    with pytest.raises(DistillerError, match=r"expert_001\.safetensors: not the expert the manifest lists"):
        load_buffer(tmp_path, digits, tiny.model, min_epochs=2)


def test_a_buffer_trained_with_other_params_than_the_run_is_refused(expert, digits, tiny, tmp_path):
    """The distill stage passes the manifest its own params would write: a buffer trained at another lr, epoch count,
    batch, augmentation or seed is refused naming each param, since the card would state this run's as theirs."""
    trajectory, acc = expert
    ours = replace(tiny.expert, num_experts=1)
    info = manifest(digits, tiny.model, ours, tiny.augment, tiny.seed)
    write_manifest(tmp_path, info, [acc], [save_trajectory(trajectory, tmp_path / "expert_000.safetensors", info)])
    assert len(load_buffer(tmp_path, digits, tiny.model, 2, expected=info).trajectories) == 1
    run = manifest(digits, tiny.model, replace(ours, lr=0.01, batch_size=32, augment=False), tiny.augment, 4)
    with pytest.raises(DistillerError) as e:
        load_buffer(tmp_path, digits, tiny.model, 2, expected=run)
    named = ["expert.lr 0.05 (this run: 0.01)", "seed 0 (this run: 4)", "expert.batch_size 256 (this run: 32)"]
    assert all(n in str(e.value) for n in [*named, "expert.augment True (this run: False)"]), e.value
    assert "expert.epochs" not in str(e.value)
