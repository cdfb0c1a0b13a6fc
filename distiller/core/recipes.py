"""Recipes: named settings (dataset x method x images per class) as files in `recipes/`, each saying where its values
come from, so that a paper's setting is one command away instead of a table to copy by hand.

A recipe file holds `about` (the dataset, method and IPC; where the values come from: a paper's table, or "ours";
the published figure; our measured result with its command) and `params`, overrides of the defaults nested as in
params.yaml. Every recipe is validated against the params schema when it is read (`load`), so one that no longer fits
is a one-line error. `use` merges a recipe into a params file, which is rendered again (every key with its help), so
`git diff params.yaml` shows what changed; then `dvc repro` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distiller.core import config, safeyaml
from distiller.core.errors import DistillerError
from distiller.core.files import write_text
from distiller.core.params import Params, params_from_dict, render
from distiller.core.paths import relative

NAME_SUFFIX = ".yaml"


@dataclass(frozen=True)
class About:
    """What a recipe is and where its values come from."""

    dataset: str  # data.source
    method: Literal["mtt", "ratbptt"]
    ipc: int = field(metadata={"ge": 1})
    values: str = ""  # where the values come from: "MTT paper, Table ..." or "ours: ..."
    published: str = ""  # the paper's figure for this setting, as quoted, or why there is none
    measured: str = ""  # our result, with the date, machine and command that produced it; "" if never run
    note: str = ""  # what a user should know (reduced for a CPU, disputed values, ...)


@dataclass(frozen=True)
class Recipe:
    name: str
    about: About
    overrides: dict[str, Any]  # nested like params.yaml
    params: Params  # the defaults with the overrides, validated
    path: Path  # the file it was read from


def load(path: Path) -> Recipe:
    """A recipe file, read with limits and validated (its `about`, and its params against the schema)."""
    raw = safeyaml.load_file(path, "recipe")
    if not isinstance(raw, dict) or set(raw) != {"about", "params"}:
        raise DistillerError(f"{path}: a recipe holds exactly `about` and `params`")
    about = config.build(About, raw["about"], where=str(path), prefix="about")
    if not isinstance(raw["params"], dict):
        raise DistillerError(f"{path}: `params` must be a mapping of params.yaml's sections")
    p = params_from_dict(raw["params"], where=str(path))
    if (p.data.source, p.distill.method, p.distill.ipc) != (about.dataset, about.method, about.ipc):
        raise DistillerError(
            f"{path}: about says {about.dataset} {about.method} ipc {about.ipc}, its params "
            f"{p.data.source} {p.distill.method} ipc {p.distill.ipc}"
        )
    return Recipe(path.name.removesuffix(NAME_SUFFIX), about, raw["params"], p, path)


def catalogue(folder: Path) -> dict[str, Recipe]:
    """Every recipe of `folder` (`recipes/`), by name, each validated."""
    if not folder.is_dir():
        raise DistillerError(f"{folder}: no recipes folder (run from the project's root, or give --root)")
    return {r.name: r for r in sorted((load(f) for f in folder.glob(f"*{NAME_SUFFIX}")), key=lambda r: r.name)}


def find(folder: Path, name: str) -> Recipe:
    """The recipe called `name` (a plain name: `recipes/<name>.yaml`, nothing outside the folder)."""
    path = folder / f"{relative(name, 'recipe name', folder)}{NAME_SUFFIX}"
    if not path.is_file():
        known = sorted(f.name.removesuffix(NAME_SUFFIX) for f in folder.glob(f"*{NAME_SUFFIX}"))
        raise DistillerError(
            f"no recipe '{name}'{config.did_you_mean(name, known)}; `distiller recipe list` shows them all"
        )
    return load(path)


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, section by section (a recipe's value wins)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def use(recipe: Recipe, params_file: Path) -> Params:
    """Merge `recipe` into `params_file` (created when missing) and write it back rendered; returns the result."""
    base = config.load_yaml(params_file) if params_file.exists() else {}
    p = params_from_dict(merged(base, recipe.overrides), where=f"{params_file} with recipe {recipe.name}")
    write_text(params_file, render(p))
    return p


def dotted(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"mtt": {"syn_steps": 50}} -> {"mtt.syn_steps": 50}: a recipe as `-S` overrides."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        out |= dotted(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return out
