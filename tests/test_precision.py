"""`model.precision`: fp32 is torch's own arithmetic, bit for bit; bf16 runs the ConvNet's forward and backward in
bfloat16 on float32 masters, and everything that leaves the network (logits, gradients, the MTT meta-gradient) is
float32 and close to fp32's; `auto` resolves per device; a bf16 run records its precision, refuses fp32 experts, and
its card is reproduced in bf16."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import STAGES, make_project, tiny
from torch import nn
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.errors import DistillerError
from distiller.core.params import ModelParams, params_from_dict
from distiller.core.paths import Layout
from distiller.methods.mtt import Student, meta_gradient
from distiller.nets import models, precision
from distiller.packaging.validate import read_card
from distiller.stages.runner import resolved

SHAPE, CLASSES = (1, 28, 28), 10


def net(prec: str) -> nn.Module:
    return models.build_model(
        ModelParams(depth=3, width=16, precision=prec), SHAPE, CLASSES, torch.Generator().manual_seed(0)
    )


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(20, *SHAPE, generator=torch.Generator().manual_seed(1)), torch.arange(CLASSES).repeat(2)


def test_fp32_is_torchs_own_layers_bit_for_bit():
    ours = net("fp32")
    plain = copy.deepcopy(ours)
    for name, m in list(plain.features.named_children()):  # the same weights in torch's own layers
        if isinstance(m, nn.Conv2d):
            twin = nn.Conv2d(m.in_channels, m.out_channels, 3, padding=m.padding)
        elif isinstance(m, nn.GroupNorm):
            twin = nn.GroupNorm(m.num_groups, m.num_channels)
        else:
            continue
        twin.load_state_dict(m.state_dict())
        plain.features[int(name)] = twin
    head = nn.Linear(plain.classifier.in_features, CLASSES)
    head.load_state_dict(plain.classifier.state_dict())
    x, y = batch()
    expected = head(plain.features(x).flatten(1))
    assert torch.equal(ours(x), expected)
    g1 = torch.autograd.grad(F.cross_entropy(ours(x), y), list(ours.parameters()))
    g2 = torch.autograd.grad(F.cross_entropy(expected, y), [*plain.features.parameters(), *head.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_bf16_computes_in_bf16_on_fp32_masters_and_returns_fp32():
    fp32, bf16 = net("fp32"), net("bf16")
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    seen = []
    bf16.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x, y = batch()
    logits = bf16(x)
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    grads = torch.autograd.grad(F.cross_entropy(logits, y), list(bf16.parameters()))
    exact = torch.autograd.grad(F.cross_entropy(fp32(x), y), list(fp32.parameters()))
    assert all(g.dtype == torch.float32 for g in grads)
    g, e = torch.cat([g.flatten() for g in grads]), torch.cat([e.flatten() for e in exact])
    assert (g - e).norm() <= 0.1 * e.norm()  # bf16 keeps 8 bits of mantissa: a few % through three blocks


def test_the_mtt_meta_gradient_in_bf16_is_fp32_and_close_to_fp32s():
    p = params_from_dict(tiny(mtt={"syn_steps": 3})).mtt
    out = {}
    for prec in ("fp32", "bf16"):
        model = net(prec)
        start = {k: v.detach() for k, v in model.named_parameters()}
        target = {k: v - 0.01 for k, v in start.items()}
        x, y = batch()
        images, lr = x.clone().requires_grad_(True), torch.tensor(0.01, requires_grad=True)
        student = Student(model, images, y, lr, None, torch.Generator().manual_seed(2))
        meta_gradient(p, student, start, target)
        out[prec] = (images.grad, lr.grad)
    for g, e in zip(out["bf16"], out["fp32"], strict=True):
        assert g.dtype == torch.float32
        assert (g - e).norm() <= 0.1 * e.norm()


def test_auto_picks_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: False)
    assert precision.resolve("auto", "cpu") == "fp32"
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    assert precision.resolve("auto", "cpu") == "bf16"
    for capability, expected in (((7, 5), "fp32"), ((8, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, c=capability: c)
        assert precision.resolve("auto", "cuda") == expected
    assert precision.resolve("fp32", "cuda") == "fp32" and precision.resolve("bf16", "cpu") == "bf16"


def test_a_stage_records_the_precision_auto_resolved_to(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    p = resolved(params_from_dict(tiny(model={"width": 8, "precision": "auto"})))
    assert p.model.precision == "bf16"
    assert models.describe(p.model, SHAPE, CLASSES)["precision"] == "bf16"
    assert "precision" not in models.describe(dataclasses.replace(p.model, precision="fp32"), SHAPE, CLASSES)


@pytest.mark.integration
def test_a_bf16_run_end_to_end_states_its_precision_and_reproduces_in_it(tmp_path: Path):
    raw = tiny(model={"width": 8, "precision": "bf16"})
    root = make_project(tmp_path / "bf16", raw, *STAGES)
    p = params_from_dict(raw)
    folder = Layout(root).package_dir(p.package.folder(p.data.source, p.distill.ipc))
    card = read_card(folder / "README.md")
    assert card.contract.protocol.architecture.precision == "bf16"
    done = CliRunner().invoke(app, ["reproduce", str(folder), "--root", str(root), "--runs", "1", "--tolerance", "100"])
    assert done.exit_code == 0, done.output
    fp32 = dataclasses.replace(p, model=dataclasses.replace(p.model, precision="fp32"))  # experts of another precision
    from distiller.stages import distill

    with pytest.raises(DistillerError, match=r"model\.precision included: the experts' is bf16"):
        distill.run(fp32, Layout(root))
