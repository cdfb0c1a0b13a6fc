"""Every artifact path in one place: stages, the CLI, tests and `dvc.yaml` agree through this module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    # download
    @property
    def data_dir(self) -> Path:
        return self.root / "artifacts" / "data"

    @property
    def prepared(self) -> Path:
        return self.data_dir / "prepared.safetensors"

    # expert-buffer
    @property
    def experts_dir(self) -> Path:
        return self.root / "artifacts" / "experts"

    # distill
    @property
    def distill_dir(self) -> Path:
        return self.root / "artifacts" / "distill"

    @property
    def synthetic(self) -> Path:
        return self.distill_dir / "synthetic.safetensors"

    @property
    def curves(self) -> Path:
        return self.distill_dir / "curves.csv"

    @property
    def curves_png(self) -> Path:
        return self.distill_dir / "curves.png"

    @property
    def grid(self) -> Path:
        return self.distill_dir / "grid.png"

    @property
    def references_dir(self) -> Path:
        return self.distill_dir / "references"

    def reference(self, budget: int) -> Path:
        """A set distilled directly (no boosting) at `budget` images per class."""
        return self.references_dir / f"direct_ipc{budget}.safetensors"

    # evaluate
    @property
    def evaluate_dir(self) -> Path:
        return self.root / "artifacts" / "evaluate"

    @property
    def budgets_csv(self) -> Path:
        return self.evaluate_dir / "budgets.csv"

    @property
    def budgets_png(self) -> Path:
        return self.evaluate_dir / "budgets.png"

    # package
    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    def package_dir(self, source: str, ipc: int) -> Path:
        """`datasets/<source>-distilled-ipc<max>/`; dvc.yaml's package stage names the same folder."""
        return self.datasets_dir / f"{source}-distilled-ipc{ipc}"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    # checkpoints of interrupted stages: never a declared output (git- and DVC-ignored), removed when a stage completes
    def checkpoints(self, stage: str) -> Path:
        return self.root / ".checkpoints" / stage

    # metrics
    @property
    def distill_metrics(self) -> Path:
        return self.root / "metrics" / "distill.json"

    @property
    def evaluate_metrics(self) -> Path:
        return self.root / "metrics" / "evaluate.json"
