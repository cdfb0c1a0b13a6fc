from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from distiller.core.config import parse_override
from distiller.core.errors import DistillerError
from distiller.core.params import Families, Params, load_params, params_from_dict, render, to_dict

ROOT = Path(__file__).resolve().parents[1]


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, f"{k}.")
    return out


def test_params_yaml_matches_the_dataclass_defaults():
    """params.yaml mirrors the dataclasses key for key, and both hold the same values."""
    assert load_params(ROOT / "params.yaml") == Params()
    assert _keys(yaml.safe_load((ROOT / "params.yaml").read_text())) == _keys(to_dict(Params()))


def test_params_yaml_is_rendered_from_the_schema():
    """One source of truth for each key's help: the schema's, which params.yaml repeats as its comments."""
    assert (ROOT / "params.yaml").read_text() == render(), "params.yaml is stale: run `distiller params > params.yaml`"
    assert params_from_dict(yaml.safe_load(render(params_from_dict({"distill": {"ipc": 3}})))).distill.ipc == 3
    text = render()
    for line in text.splitlines():
        assert len(line) <= 120, line
        if line.strip() and not line.startswith("#") and ":" in line and not line.rstrip().endswith(":"):
            assert "  # " in line, f"no help for: {line}"


def test_augmentation_families_are_parsed_once_with_one_rule():
    assert params_from_dict({"augment": {"strategy": "crop_rotate"}}).augment.strategy == Families(("crop", "rotate"))
    assert params_from_dict({"ratbptt": {"augment": "none"}}).ratbptt.augment == Families(())
    assert to_dict(params_from_dict({"ratbptt": {"augment": "none"}}))["ratbptt"]["augment"] == "none"
    for key in ("augment.strategy", "ratbptt.augment"):
        section, name = key.split(".")
        for bad, message in (("crop_", "unknown family ''"), ("crop_crop", "names a family twice"), (3, "string")):
            raw = {section: {name: bad}} if section == "augment" else {"ratbptt": {"augment": bad}}
            with pytest.raises(DistillerError, match=message) as err:
                params_from_dict(raw)
            assert key in str(err.value)


def test_params_are_frozen():
    p = Params()
    with pytest.raises(FrozenInstanceError):
        p.distill.ipc = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"distill": {"ipcc": 1}}, "unknown key 'distill.ipcc' (did you mean 'distill.ipc'?)"),
        ({"distil": {"ipc": 1}}, "unknown key 'distil' (did you mean 'distill'?)"),
        ({"distill": {"ipc": "ten"}}, "distill.ipc must be an integer, got 'ten'"),
        ({"distill": {"ipc": 2.5}}, "distill.ipc must be an integer"),
        ({"distill": {"ipc": True}}, "distill.ipc must be an integer"),
        ({"distill": {"ipc": 0}}, "distill.ipc must be >= 1, got 0"),
        ({"mtt": {"lr_img": -1}}, "mtt.lr_img must be > 0"),
        ({"model": {"norm": "batchnorm"}}, "model.norm must be one of 'instancenorm', 'none'"),
        ({"distill": 3}, "distill must be a mapping"),
        ({"augment": {"strategy": "color_crpo"}}, "unknown family 'crpo' (did you mean 'crop'?)"),
        ({"mtt": {"max_start_epoch": 10}, "expert": {"epochs": 10}}, "exceeds expert.epochs (10)"),
        ({"device": "tpu"}, "device: 'tpu' is not one of"),
        ({"device": "cudaXYZ"}, "device: 'cudaXYZ' is not one of"),
        ({"augment": {"rotate": float("inf")}}, "augment.rotate must be a finite number"),
        ({"distill": {}, "mtt": {"lr_img": float("nan")}}, "mtt.lr_img must be a finite number"),
        ({"package": {"version": "1.2"}}, "package.version must be a semantic version like 1.2.0, got '1.2'"),
        ({"package": {"version": 1.2}}, "package.version must be a string"),
        ({"package": {"verison": "1.0.0"}}, "did you mean 'package.version'"),
    ],
)
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(DistillerError) as err:
        params_from_dict(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_ints_are_accepted_for_floats():
    p = params_from_dict({"mtt": {"lr_img": 100}})
    assert p.mtt.lr_img == 100.0 and isinstance(p.mtt.lr_img, float)


def test_overrides_and_file_errors(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("distill:\n  ipc: 10\n")
    assert load_params(path, dict([parse_override("distill.ipc=1")])).distill.ipc == 1
    assert load_params(path, {"augment.strategy": "none"}).augment.strategy == Families(())
    with pytest.raises(DistillerError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    path.write_text("distill: [unclosed\n")
    with pytest.raises(DistillerError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(DistillerError, match="key=value"):
        parse_override("distill.ipc")


def test_to_dict_round_trips():
    p = params_from_dict({"distill": {"ipc": 3}, "seed": 7})
    assert params_from_dict(to_dict(p)) == p


def test_exponent_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads `1e-5` as a string; a float param takes it as the number it obviously is
    path = tmp_path / "params.yaml"
    path.write_text("mtt:\n  lr_lr: 1e-5\n")
    assert load_params(path, {"expert.lr": "2E-2"}).mtt.lr_lr == 1e-5
    with pytest.raises(DistillerError, match=r"mtt\.lr_lr"):
        load_params(path, {"mtt.lr_lr": "fast"})
