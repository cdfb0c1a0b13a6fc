from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from distiller._runtime import DistillerError
from distiller.params import Params, load_params, params_from_dict, parse_override, to_dict

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
    assert load_params(path, {"augment.strategy": "none"}).augment.strategy == "none"
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
