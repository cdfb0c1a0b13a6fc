"""Several networks trained at once equal the same networks trained one after another, bitwise (on the CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from distiller.core.params import AugmentParams, Families, ModelParams
from distiller.core.paths import Layout
from distiller.core.runtime import generator
from distiller.methods import experts
from distiller.methods.buffer import load_trajectory
from distiller.methods.experts import train_expert, train_experts
from distiller.methods.synthetic import real_subset
from distiller.nets import batched
from distiller.nets import train as train_module
from distiller.nets.augment import dsa, dsa_many
from distiller.nets.models import build_model
from distiller.nets.train import SGDConfig, networks_at_once, train, train_many
from distiller.scoring.evaluate import protocol_for, score
from distiller.stages import download, expert_buffer

CPU = torch.device("cpu")


def with_parallel(p, parallel: int):
    return dataclasses.replace(p, evaluate=dataclasses.replace(p.evaluate, parallel=parallel))


@pytest.mark.parametrize("method", ["mtt", "ratbptt"])
def test_batched_evaluation_scores_equal_one_at_a_time(digits, tiny, method):
    """MTT's protocol (SGD, momentum, decay, lr x0.1 at half, DSA) and the RaT-BPTT inner one (Adam, its DSA)."""
    p = dataclasses.replace(tiny, ratbptt=dataclasses.replace(tiny.ratbptt, inner_optimizer="adam"))
    p = dataclasses.replace(p, evaluate=dataclasses.replace(p.evaluate, ratbptt_optimizer="inner", batch_size=8))
    proto = protocol_for(p, method)
    images, labels = real_subset(digits, 2, generator(0, "subset"))  # 20 images: minibatches of 8, 8 and 4
    one = score(images, labels, digits, with_parallel(p, 1), proto, lr=0.01, runs=3, device=CPU)
    at_once = score(images, labels, digits, with_parallel(p, 3), proto, lr=0.01, runs=3, device=CPU)
    in_pairs = score(images, labels, digits, with_parallel(p, 2), proto, lr=0.01, runs=3, device=CPU)
    assert at_once.runs == one.runs == in_pairs.runs  # exact floats
    assert len(set(one.runs)) > 1  # the networks do differ from each other


def test_batched_experts_equal_one_at_a_time(digits, tiny):
    together = train_experts(digits, tiny.model, tiny.expert, tiny.augment, tiny.seed, [0, 1, 2], CPU)
    for i, (trajectory, acc) in enumerate(together):
        alone, alone_acc = train_expert(digits, tiny.model, tiny.expert, tiny.augment, tiny.seed, i, CPU)
        assert acc == alone_acc
        assert len(trajectory) == len(alone) == tiny.expert.epochs + 1
        for epoch, (a, b) in enumerate(zip(trajectory, alone, strict=True)):
            assert all(torch.equal(a[k], b[k]) for k in b), (i, epoch)


def _train_both(make, images, labels, cfg, augment, k=3):
    alone = [make(i) for i in range(k)]
    for i, net in enumerate(alone):
        train(net, images, labels, cfg, augment, generator(0, "train", i))
    together = [make(i) for i in range(k)]
    train_many(together, images, labels, cfg, augment, [generator(0, "train", i) for i in range(k)])
    return alone, together


def _same(a: list[nn.Module], b: list[nn.Module]) -> bool:
    pairs = zip(a, b, strict=True)
    return all(torch.equal(x, y) for m, n in pairs for x, y in zip(m.parameters(), n.parameters(), strict=True))


def test_networks_without_norm_and_outside_the_model_factory(digits):
    x, y = digits.train_images[:24], digits.train_labels[:24]
    cfg = SGDConfig(epochs=3, lr=0.05, batch_size=10, momentum=0.9, weight_decay=5e-4, decay_at_half=True)
    no_norm = ModelParams(width=8, norm="none", pooling="maxpool")
    make = lambda i: build_model(no_norm, digits.image_shape, digits.num_classes, generator(0, "init", i))
    assert _same(*_train_both(make, x, y, cfg, AugmentParams()))

    def plain(i: int) -> nn.Module:  # any buffer-free module: no bias, a flatten, a residual-free head
        torch.manual_seed(i)
        return nn.Sequential(nn.Conv2d(1, 6, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 10))

    assert _same(*_train_both(plain, x, y, dataclasses.replace(cfg, optimizer="adam"), None))


@pytest.mark.parametrize("shared_graph", [True, False])
def test_soft_labels_and_a_short_last_minibatch(digits, monkeypatch, shared_graph):
    """Label distributions (a distilled set's soft labels) and minibatches of 8, 8 and 4: each network's gradient is
    its own mean loss's, with one backward for all networks and with one per network."""
    monkeypatch.setattr(train_module, "_SHARED_GRAPH_MAX_INPUTS", 10**9 if shared_graph else 0)
    x = digits.train_images[:20]
    y = torch.softmax(torch.randn(20, 10, generator=generator(0, "soft")), 1)
    cfg = SGDConfig(epochs=3, lr=0.05, batch_size=8, momentum=0.9, weight_decay=5e-4, decay_at_half=True)
    make = lambda i: build_model(ModelParams(width=8), digits.image_shape, 10, generator(0, "init", i))
    assert _same(*_train_both(make, x, y, cfg, AugmentParams()))


SLOW = pytest.mark.slow


@pytest.mark.parametrize(  # resnet18: bias-free convs, strides, residual adds, adaptive pooling
    ("arch", "shape"),
    [
        ("resnet18", (3, 16, 16)),
        pytest.param("resnet18_ap", (3, 16, 16), marks=SLOW),
        pytest.param("vgg11", (1, 28, 28), marks=SLOW),
        pytest.param("alexnet", (3, 16, 16), marks=SLOW),
    ],
)
def test_zoo_networks_trained_at_once_equal_one_at_a_time(arch, shape):
    x, y = torch.randn(6, *shape, generator=generator(0, "x")), torch.arange(6) % 3
    cfg = SGDConfig(epochs=2, lr=0.01, batch_size=4, momentum=0.9, weight_decay=5e-4)
    make = lambda i: build_model(ModelParams(arch=arch), shape, 3, generator(0, "init", i))
    assert _same(*_train_both(make, x, y, cfg, AugmentParams(), k=2))


def test_networks_with_buffers_train_exactly_and_are_refused_by_vmap(digits):
    """Each network's own forward updates its own running statistics; a functional vmap call cannot carry them."""

    def with_batchnorm(i: int) -> nn.Module:
        torch.manual_seed(i)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))

    x, y = digits.train_images[:20], digits.train_labels[:20]
    cfg = SGDConfig(epochs=2, lr=0.1, batch_size=8, momentum=0.9)
    alone, together = _train_both(with_batchnorm, x, y, cfg, AugmentParams())
    assert _same(alone, together)
    pairs = zip(alone, together, strict=True)
    assert all(torch.equal(a, b) for m, n in pairs for a, b in zip(m.buffers(), n.buffers(), strict=True))
    gens = [generator(0, i) for i in range(2)]
    with pytest.raises(ValueError, match="buffers"):
        train_many(together[:2], x, y, cfg, None, gens, kernels="grouped")


@pytest.mark.parametrize("mode", ["single", "all"])
def test_dsa_many_draws_each_batch_from_its_own_generator(mode):
    p = dataclasses.replace(AugmentParams(), strategy=Families.parse("color_crop_cutout_flip_scale_rotate"), mode=mode)
    x = torch.randn(4, 6, 1, 8, 8, generator=generator(0, "x"))
    mine, theirs = [generator(1, k) for k in range(4)], [generator(1, k) for k in range(4)]
    for _ in range(10):  # enough steps for several family groupings in single mode
        together = dsa_many(x, p, mine)
        assert torch.equal(together, torch.stack([dsa(x[k], p, theirs[k]) for k in range(4)]))
    assert together.is_contiguous()


def test_grouped_kernels_agree_to_rounding(digits):
    nets = [build_model(ModelParams(width=8), digits.image_shape, 10, generator(0, "init", i)) for i in range(3)]
    x = digits.train_images[:15].view(3, 5, *digits.image_shape)
    grouped = batched.forward(nets[0], batched.stack(nets), x)
    assert torch.allclose(torch.stack([net(x[k]) for k, net in enumerate(nets)]), grouped, atol=1e-5)


def test_expert_buffer_resumes_group_checkpoints_under_another_parallel(tmp_path, tiny, monkeypatch):
    """Experts are checkpointed after their group; a rerun with another `expert.parallel` trains only the missing
    ones and writes the buffer an uninterrupted one-at-a-time run writes."""
    p = dataclasses.replace(tiny, expert=dataclasses.replace(tiny.expert, num_experts=3, epochs=2, parallel=1))
    reference, project = Layout(tmp_path / "ref"), Layout(tmp_path / "p")
    for layout in (reference, project):
        download.run(p, layout)
    reference_accuracies = expert_buffer.run(p, reference)

    real = experts.train_experts
    calls: list[list[int]] = []

    def killed_after_first_group(*args, **kwargs):
        calls.append(list(args[5]))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(experts, "train_experts", killed_after_first_group)
    in_pairs = dataclasses.replace(p, expert=dataclasses.replace(p.expert, parallel=2))
    with pytest.raises(KeyboardInterrupt):
        expert_buffer.run(in_pairs, project)
    assert calls == [[0, 1], [2]] and not project.experts_dir.exists()

    calls.clear()
    monkeypatch.setattr(experts, "train_experts", lambda *a, **k: (calls.append(list(a[5])), real(*a, **k))[1])
    all_at_once = dataclasses.replace(p, expert=dataclasses.replace(p.expert, parallel=3))
    assert expert_buffer.run(all_at_once, project) == reference_accuracies
    assert calls == [[2]]  # experts 0 and 1 came from their checkpoints
    for i in range(3):
        mine, theirs = (
            load_trajectory(lay.experts_dir / f"expert_{i:03d}.safetensors") for lay in (project, reference)
        )
        assert all(torch.equal(a[k], b[k]) for a, b in zip(mine, theirs, strict=True) for k in a)


def test_networks_at_once_auto_is_all():
    assert networks_at_once(0, 5) == 5 and networks_at_once(1, 5) == 1
    assert networks_at_once(4, 5) == 4 and networks_at_once(8, 5) == 5
