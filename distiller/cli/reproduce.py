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
    runs: Annotated[
        int | None,
        typer.Option(
            "--runs",
            min=1,
            max=100,
            help="Networks trained per config, 1 to 100 (default: as many as the card's accuracy of that config).",
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="With a repo id: the tag or commit, e.g. v1.0.0.")
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            min=0.0,
            help="Largest difference from the card, in accuracy points (default: the rule above, from both spreads).",
        ),
    ] = None,
    root: Annotated[
        Path, typer.Option("--root", help="Where the source is: data/raw/ for archives, hf: and imagefolder: paths.")
    ] = Path("."),
) -> None:
    """Train fresh networks on a packaged set exactly as its card says and test them on the source's test split.

    The folder must pass `distiller validate` first, every training value of the card must be one reproduce builds,
    and the source must be the one the card describes; each refusal is one line naming the key or file. Everything
    comes from the card and its sidecars (network, optimiser, epochs, lr, schedule, augmentation, labels,
    preprocessing, test split), nothing from the pipeline that made the set. Prints the measured accuracy beside the
    card's for each config, with the difference allowed; exits with 2, naming the configs, when one is further away.

    The difference allowed follows from both spreads: max(1, 3 * sqrt(s_card^2 / n_card + s^2 / n)) points, where
    s_card and s are the sample stds of the card's n_card networks and of the n trained here (a side of one network
    borrows the other side's std): 3 standard errors of the difference of two means, and never under 1 point, so a
    card whose std is 0 can still be reproduced (docs/packaging.md). --tolerance fixes it instead.
    """
    from distiller.packaging import reproduce as rep
    from distiller.packaging.validate import checked

    with session() as reporter, rep.fetched(target, revision) as folder, checked(folder) as ok:
        rows = rep.reproduce(ok, config or list(ok.card.contract.budgets), runs, root, tolerance, reporter)
        for row in rows:
            typer.echo(row.line())
        off = [f"{r.config}: more than {r.allowed:.2f} points from the card" for r in rows if not r.agrees]
        if off:
            raise DistillerError(f"{'; '.join(off)} ({target})")
