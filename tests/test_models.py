import pytest
import torch
from torch.func import functional_call

from distiller.core.errors import DistillerError
from distiller.core.params import ModelParams
from distiller.core.runtime import generator
from distiller.nets.models import build_model, describe


def test_convnet_is_buffer_free_and_functional_call_matches_forward():
    model = build_model(ModelParams(width=8), (1, 8, 8), 10, generator(0, "m"))
    assert list(model.buffers()) == []
    assert any(isinstance(m, torch.nn.GroupNorm) and m.num_groups == m.num_channels == 8 for m in model.modules())
    x = torch.randn(5, 1, 8, 8)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert torch.allclose(functional_call(model, params, (x,)), model(x))


def test_init_comes_from_the_generator_only():
    state = torch.random.get_rng_state()
    a = build_model(ModelParams(width=8), (1, 8, 8), 10, generator(0, "m"))
    b = build_model(ModelParams(width=8), (1, 8, 8), 10, generator(0, "m"))
    c = build_model(ModelParams(width=8), (1, 8, 8), 10, generator(1, "m"))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        if "weight" in name and pa.dim() > 1:
            assert not torch.equal(pa, pc)


def test_head_sizes():
    """D=2 on 8x8 leaves 2x2; a 28x28 single-channel input is padded to 32x32 as in the reference."""
    assert build_model(ModelParams(width=64), (1, 8, 8), 10, generator(0)).classifier.in_features == 64 * 2 * 2
    assert build_model(ModelParams(width=128, depth=3), (1, 28, 28), 10, generator(0)).classifier.in_features == 2048
    assert build_model(ModelParams(width=128, depth=3), (3, 32, 32), 10, generator(0)).classifier.in_features == 2048


# ---------------------------------------------------------------------------------------------------------------------
# the cross-architecture zoo

ZOO = ["resnet18", "resnet18_ap", "vgg11", "alexnet"]
ARCHS = ["convnet", *ZOO]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_runs_forward_and_backward_without_buffers(arch, shape):
    p = ModelParams(arch=arch, width=8, depth=3)
    model = build_model(p, shape, 10, generator(0, "m"))
    assert list(model.buffers()) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = torch.randn(2, *shape)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.allclose(functional_call(model, params, (x,)), out, atol=1e-6)
    out.square().mean().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in model.parameters())
    desc = describe(p, shape, 10)
    assert desc["arch"] == arch and desc["input_shape"] == list(shape)


@pytest.mark.parametrize("arch", ZOO)
def test_zoo_init_comes_from_the_generator_only(arch):
    state = torch.random.get_rng_state()
    a, b, c = (build_model(ModelParams(arch=arch), (3, 32, 32), 10, generator(s, "m")) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        if "weight" in name and pa.dim() > 1:
            assert not torch.equal(pa, pc)


def _count(p: ModelParams, shape: tuple[int, int, int], classes: int) -> int:
    return sum(t.numel() for t in build_model(p, shape, classes, generator(0)).parameters())


def test_parameter_counts():
    """ConvNet-3 (width 128) as methods.md 1.1 derives them; the zoo counted by hand from MTT's definitions."""
    convnet3 = ModelParams(width=128, depth=3)
    assert _count(convnet3, (3, 32, 32), 10) == 320_010  # CIFAR-10
    assert _count(convnet3, (3, 32, 32), 100) == 504_420  # CIFAR-100
    assert _count(ModelParams(width=128, depth=4), (3, 64, 64), 200) == 857_160  # Tiny ImageNet, ConvNetD4
    assert _count(ModelParams(width=128, depth=3), (1, 28, 28), 10) == 320_010 - 2 * 9 * 128  # MNIST: one channel
    # ResNet-18 with affine norms has the familiar CIFAR-10 count; the AP head flattens the 4x4 map instead
    assert _count(ModelParams(arch="resnet18"), (3, 32, 32), 10) == 11_173_962
    assert _count(ModelParams(arch="resnet18_ap"), (3, 32, 32), 10) == 11_173_962 - 5_130 + 512 * 16 * 10 + 10
    # AlexNet: convs 9728 + 614592 + 442624 + 442560 + 331968, head 192*4*4*10 + 10
    assert _count(ModelParams(arch="alexnet"), (3, 32, 32), 10) == 1_872_202
    assert _count(ModelParams(arch="alexnet"), (1, 28, 28), 10) == 1_872_202 - 2 * 25 * 128
    # VGG-11: 8 convs with bias and an affine norm each, head 512*10 + 10
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    assert _count(ModelParams(arch="vgg11"), (3, 32, 32), 10) == sum(9 * i * o + 3 * o for i, o in convs) + 5_130


def test_heads_see_28x28_grey_as_32x32():
    grey, rgb = (1, 28, 28), (3, 32, 32)
    for arch in ("convnet", "vgg11", "alexnet"):
        p = ModelParams(arch=arch, width=128, depth=3)
        assert describe(p, grey, 10).get("head_features") == describe(p, rgb, 10).get("head_features")
    assert describe(ModelParams(arch="resnet18_ap"), grey, 10)["head_features"] == 512 * 3 * 3  # as in MTT


@pytest.mark.parametrize(
    ("arch", "side", "need"), [("resnet18", 8, 9), ("resnet18_ap", 15, 16), ("vgg11", 16, 32), ("alexnet", 7, 8)]
)
def test_too_small_inputs_are_refused_with_the_minimum(arch, side, need):
    with pytest.raises(DistillerError, match=f"model.arch {arch} needs images of at least {need}x{need}"):
        build_model(ModelParams(arch=arch), (1, side, side), 10, generator(0))
    with pytest.raises(DistillerError, match=f"at least {need}x{need}"):
        describe(ModelParams(arch=arch), (3, side, side), 10)
    build_model(ModelParams(arch=arch), (3, need, need), 10, generator(0))


def test_convnet_description_is_unchanged():
    """Expert manifests compare this dict: the zoo must not change what the ConvNet's says."""
    assert describe(ModelParams(), (1, 8, 8), 10) == {
        "arch": "convnet",
        "depth": 2,
        "width": 64,
        "norm": "instancenorm (GroupNorm(C, C), affine)",
        "pooling": "avgpool",
        "activation": "relu",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
    }


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)], ids=["mnist", "cifar", "digits"])
@pytest.mark.parametrize(("norm", "pooling"), [("instancenorm", "avgpool"), ("none", "maxpool")])
def test_the_card_describes_the_convnet_that_reproduce_rebuilds(shape, norm, pooling):
    """The card's architecture is enough to rebuild the network a set was scored with, the first
    conv's wider padding on 28x28 inputs included: same parameters, same outputs."""
    from distiller.core import config
    from distiller.packaging.card import rebuildable
    from distiller.packaging.contract import Architecture
    from distiller.packaging.retrain import convnet

    p = ModelParams(width=8, depth=2, norm=norm, pooling=pooling)
    ours = build_model(p, shape, 10, torch.Generator().manual_seed(0))
    card = config.build(Architecture, rebuildable(describe(p, shape, 10)))
    rebuilt = convnet(card, torch.Generator().manual_seed(0))
    assert [t.shape for t in rebuilt.parameters()] == [t.shape for t in ours.parameters()]
    with torch.no_grad():
        for mine, theirs in zip(rebuilt.parameters(), ours.parameters(), strict=True):
            mine.copy_(theirs)
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(rebuilt(x), ours(x), atol=1e-6)
