"""DSA augmentation families as a param value: `color_crop_cutout_flip_scale_rotate`, any subset joined by '_', or
`none`, parsed once by one rule for every key that takes them (`augment.strategy`, `ratbptt.augment`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distiller.core.config import did_you_mean
from distiller.core.errors import DistillerError

AUG_FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class Families:
    """DSA families applied in turn (or one of them, drawn, in mode single); written `crop_scale_rotate` or `none`."""

    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: Any, key: str = "augment.strategy") -> Families:
        """The one rule for every families param: known families joined by '_', each once, or `none`."""
        if not isinstance(text, str):
            raise DistillerError(f"{key} must be a string of DSA families, got {text!r}")
        names = () if text == "none" else tuple(text.split("_"))
        for name in names:
            if name not in AUG_FAMILIES:
                raise DistillerError(
                    f"{key}: unknown family '{name}'{did_you_mean(name, AUG_FAMILIES)}; use "
                    f"{'_'.join(AUG_FAMILIES)} or a subset joined by '_', or 'none'"
                )
        if len(set(names)) < len(names):
            raise DistillerError(f"{key}: '{text}' names a family twice")
        return cls(names)

    from_config = parse  # what distiller.core.config calls

    def to_config(self) -> str:
        return "_".join(self.names) or "none"
