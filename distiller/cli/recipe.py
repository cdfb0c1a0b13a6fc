"""`distiller recipe list | show NAME | use NAME`: the named settings of `recipes/` (`distiller.core.recipes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distiller.core.session import session

recipe_app = typer.Typer(
    name="recipe",
    no_args_is_help=True,
    help="Named settings (the papers' and ours) in `recipes/`: list them, show one, or merge one into params.yaml.",
)
RootOpt = Annotated[Path, typer.Option("--root", help="Project directory that holds recipes/.", show_default=True)]
NameArg = Annotated[str, typer.Argument(help="A recipe's name, e.g. cifar10-mtt-ipc10 (see `distiller recipe list`).")]


@recipe_app.command("list")
def list_(root: RootOpt = Path(".")) -> None:
    """Every recipe, one line each: dataset, method, images per class, where its values come from (a paper, or ours),
    the published figure and ours (`distiller recipe show NAME` has the details)."""
    from distiller.core.recipes import catalogue

    with session():
        recipes = catalogue(root / "recipes")
    rows = [("recipe", "dataset", "method", "ipc", "values from", "published", "measured")]
    for name, r in recipes.items():
        a = r.about
        rows.append(
            (
                name,
                a.dataset,
                a.method,
                str(a.ipc),
                _short(a.values, ":(,"),
                _short(a.published, ":("),
                _short(a.measured, "(,") or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _short(text: str, stops: str) -> str:
    """The head of a free-text field, up to the first of `stops` (the figure, or who chose the values)."""
    cut = min((i for i in (text.find(c) for c in stops) if i > 0), default=len(text))
    return text[:cut].strip()


@recipe_app.command()
def show(name: NameArg, root: RootOpt = Path(".")) -> None:
    """Print a recipe file: where its values come from, and the params it sets."""
    from distiller.core.recipes import find

    with session():
        text = find(root / "recipes", name).path.read_text()
    typer.echo(text, nl=False)


@recipe_app.command()
def use(
    name: NameArg,
    root: RootOpt = Path("."),
    params: Annotated[Path, typer.Option("--params", "-p", help="The params file to merge it into.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Merge a recipe into params.yaml (rendered again, so `git diff params.yaml` shows what changed); then run
    `dvc repro` (or `dvc exp run`)."""
    from distiller.core import recipes

    with session():
        recipe = recipes.find(root / "recipes", name)
        recipes.use(recipe, params)
    changed = ", ".join(recipes.dotted(recipe.overrides))
    typer.echo(f"{params}: recipe {recipe.name} merged ({changed}); run `dvc repro`")
