"""Every artifact path in one place: stages, the CLI, tests and `dvc.yaml` agree through this module; and the one
check (`inside`) every name read from a manifest, a card or the command line passes before it becomes a path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from distiller.core.errors import DistillerError


def relative(name: object, what: str, where: object, *, nested: bool = False) -> str:
    """`name` checked to stay inside the folder it is read against: a non-empty string of printable characters, not
    absolute, with no `..` component, no backslash and no colon (a drive or a URL), and unless `nested` no folder
    either (a plain file name). Anything else is one line naming `where` (the file or folder that gave the name)."""
    text = name if isinstance(name, str) else ""
    parts = PurePosixPath(text).parts
    if (
        not parts
        or text.startswith("/")
        or ".." in parts
        or "\\" in text
        or ":" in text
        or not text.isprintable()
        or (not nested and len(parts) != 1)
    ):
        kind = "a relative path" if nested else "a plain file name"
        raise DistillerError(f"{where}: {what} {name!r} must be {kind} inside the folder")
    return text


def inside(folder: Path, name: object, what: str, where: object = None, *, nested: bool = False) -> Path:
    """`folder / name` for a name read from a manifest, a card or the command line, once `relative` let it through."""
    return folder / relative(name, what, folder if where is None else where, nested=nested)


class _Below:
    """A path below the project root: `layout.prepared` is `layout.root / "artifacts/data/prepared.safetensors"`."""

    def __init__(self, relative: str) -> None:
        self.relative = relative

    def __get__(self, layout: Layout, owner: type) -> Path:
        return layout.root / self.relative


@dataclass(frozen=True)
class Layout:
    """The paths of a project rooted at `root`, stage by stage in pipeline order."""

    root: Path = Path(".")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str will do

    params_checked = _Below("artifacts/check/params.txt")  # check: a marker no other stage reads
    prepared = _Below("artifacts/data/prepared.safetensors")  # download
    experts_dir = _Below("artifacts/experts")  # expert-buffer
    distill_dir = _Below("artifacts/distill")  # distill
    synthetic = _Below("artifacts/distill/synthetic.safetensors")
    curves = _Below("artifacts/distill/curves.csv")
    curves_png = _Below("artifacts/distill/curves.png")
    grid = _Below("artifacts/distill/grid.png")
    references_dir = _Below("artifacts/distill/references")
    distill_metrics = _Below("metrics/distill.json")
    evaluate_dir = _Below("artifacts/evaluate")  # evaluate
    budgets_csv = _Below("artifacts/evaluate/budgets.csv")
    budgets_png = _Below("artifacts/evaluate/budgets.png")
    evaluate_metrics = _Below("metrics/evaluate.json")
    datasets_dir = _Below("datasets")  # package
    dvc_lock = _Below("dvc.lock")
    lock = _Below(".distiller.lock")  # held by the running stage command (git- and DVC-ignored)

    def reference(self, budget: int) -> Path:
        """A set distilled directly (no boosting) at `budget` images per class."""
        return self.references_dir / f"direct_ipc{budget}.safetensors"

    def package_dir(self, name: str) -> Path:
        """`datasets/<name>/` (`package.name`, by default `<source>-distilled-ipc<max>`: dvc.yaml names that folder)."""
        return self.datasets_dir / name

    def log(self, stage: str) -> Path:
        """Wall times of a stage's last run: apart from its outputs, so that those are a function of their inputs
        alone (git-ignored, not a DVC output)."""
        return self.root / "logs" / f"{stage}.json"

    def checkpoints(self, stage: str) -> Path:
        """Checkpoints of an interrupted stage: never a declared output (git- and DVC-ignored), removed when the stage
        completes."""
        return self.root / ".checkpoints" / stage
