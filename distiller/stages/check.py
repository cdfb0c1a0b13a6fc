"""Stage check: params.yaml checked whole at every change of it, before anything else can say "up to date".

Every other stage lists in dvc.yaml only the params it reads, so DVC re-runs nothing for a key no stage declares: a
typo such as `distill.ipcc: 3` would leave every stage up to date and the run silently on `distill.ipc`'s old value.
This stage's dep is params.yaml itself, so every edit of the file runs it, and loading the file (done by the stage
runner before `run`) fails on any unknown key, type or range with the one line every params error is (the key, a
did-you-mean, exit code 2). It writes a marker, artifacts/check/params.txt, that no other stage reads: a valid edit
re-runs this stage and nothing more.
"""

from __future__ import annotations

from distiller.core.files import write_text
from distiller.core.params import Params
from distiller.core.paths import Layout
from distiller.core.runtime import SILENT, Reporter

MARKER = "params.yaml was read whole and every key is valid (`distiller check`)\n"


def run(p: Params, layout: Layout, progress: Reporter = SILENT) -> Params:
    """The params were loaded and checked on the way in (`distiller.stages.runner.load`); record that they were."""
    write_text(layout.params_checked, MARKER)
    return p


def summary(p: Params) -> str:
    return f"params valid: {p.distill.method} on {p.data.source}, distill.ipc {p.distill.ipc}, seed {p.seed}"
