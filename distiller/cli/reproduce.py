"""`distiller reproduce FOLDER_OR_REPO`: a packaged set's accuracy, measured again from its card alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distiller.core.errors import DistillerError
from distiller.core.session import session


def reproduce(
    target: Annotated[str, typer.Argument(help="A packaged folder (datasets/NAME) or a Hub dataset repo (org/name).")],
    config: Annotated[
        list[str] | None, typer.Option("--config", help="A config to reproduce, e.g. ipc10 (repeatable; default: all).")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Networks trained per config.")] = 3,
    revision: Annotated[
        str | None, typer.Option("--revision", help="With a repo id: the tag or commit, e.g. v1.0.0.")
    ] = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0.0, help="Largest difference from the card, in accuracy points.")
    ] = 2.0,
    root: Annotated[
        Path, typer.Option("--root", help="Where the source is: data/raw/ for archives, hf: and imagefolder: paths.")
    ] = Path("."),
) -> None:
    """Train fresh networks on a packaged set exactly as its card says and test them on the source's test split.

    Everything comes from the card and its sidecars (network, optimiser, epochs, lr, schedule, augmentation, labels,
    preprocessing, test split), nothing from the pipeline that made the set. Prints the measured accuracy beside the
    card's for each config; exits with 2, naming the configs, when one is more than --tolerance points away.
    """
    from distiller.packaging import reproduce as rep
    from distiller.packaging.validate import read_card

    with session() as reporter:
        folder = rep.fetch(target, revision)
        card = read_card(folder / "README.md").contract
        configs = config or list(card.budgets)
        unknown = [c for c in configs if c not in card.budgets]
        if unknown:
            raise DistillerError(f"{target}: no config {unknown[0]} (the card has {', '.join(card.budgets)})")
        rows = rep.reproduce(folder, card, configs, runs, root, reporter)
        for row in rows:
            typer.echo(row.line())
        off = [r.config for r in rows if abs(r.measured - r.claimed) * 100 > tolerance]
        if off:
            raise DistillerError(f"{', '.join(off)}: more than {tolerance:g} points from the card ({target})")
