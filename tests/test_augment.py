import dataclasses

import pytest
import torch

from distiller.core.params import AUG_FAMILIES, AugmentParams, Families
from distiller.core.runtime import generator
from distiller.nets.augment import augment_pair, dsa

FAMILIES = list(AUG_FAMILIES)


def only(family: str) -> AugmentParams:
    return dataclasses.replace(AugmentParams(), strategy=Families.parse(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_draw_applies_one_transform_to_real_and_synthetic(family):
    """Siamese mode: the same family and parameters for every image of both batches, even of unequal sizes."""
    image = torch.randn(1, 3, 16, 16)
    real, syn = image.repeat(7, 1, 1, 1), image.repeat(3, 1, 1, 1).requires_grad_(True)
    out_real, out_syn = augment_pair(real, syn, only(family), generator(0, family))
    reference = out_real[0]
    for out in (*out_real, *out_syn):
        assert torch.allclose(out, reference, atol=1e-6)
    out_syn.square().sum().backward()
    assert syn.grad is not None and torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["color", "crop", "cutout", "scale", "rotate"])
def test_per_sample_draws_differ_between_images_and_keep_gradients(family):
    x = torch.randn(1, 3, 16, 16).repeat(16, 1, 1, 1).requires_grad_(True)
    out = dsa(x, only(family), generator(1, family))
    distinct = {tuple(o.flatten().round(decimals=4).tolist()) for o in out}
    assert len(distinct) > 1
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_draws_reproduce_from_the_generator():
    x = torch.randn(8, 1, 8, 8)
    first, second = generator(5, "aug"), generator(5, "aug")
    for _ in range(5):
        assert torch.equal(dsa(x, AugmentParams(), first), dsa(x, AugmentParams(), second))


def test_no_clamping_on_normalised_tensors():
    x = torch.full((4, 1, 8, 8), 3.0)  # far outside [0, 1]
    out = dsa(x, only("color"), generator(0))
    assert out.max() > 1.0


def test_strategy_none_is_identity_and_crop_cutout_semantics():
    x = torch.randn(4, 1, 8, 8)
    assert dsa(x, only("none"), generator(0)) is x
    ones = torch.ones(64, 1, 8, 8)
    cut = dsa(ones, only("cutout"), generator(0))
    zeros = (cut == 0).flatten(1).sum(1)
    assert zeros.max() == 16 and zeros.min() >= 4  # a 4x4 square, clipped at the border
    shifted = dsa(ones, only("crop"), generator(0))
    assert ((shifted == 0) | (shifted == 1)).all()  # integer shifts, vacated pixels 0
