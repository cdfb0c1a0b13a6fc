import torch
from torch.func import functional_call

from distiller._runtime import generator
from distiller.models import build_model
from distiller.params import ModelParams


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
