"""The networks a card describes, checked to be networks distiller builds (for `validate`).

A card's `protocol.architecture` (and each of `protocol.architectures`) must be exactly what `distiller.nets.models`
describes for the network it names: the ConvNet's depth and width at least 1, so shallow that every pooling still
has a map of 2x2 or more to pool, its first conv padded as distiller pads it for that input, its norm, pooling and
activation distiller's words; a zoo network's definition, head and parameter count those of the network it names.
A card that describes any other network (depth 6 on 8x8 images, width 0, a GELU) is one no distiller run measured,
and would otherwise reach `reproduce` as a division by zero or a network other than the one it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distiller.core import config
from distiller.core.errors import DistillerError, first_line
from distiller.core.params import ModelParams
from distiller.nets import models
from distiller.packaging.contract import Architecture, Contract


def check(contract: Contract, where: Path | str) -> None:
    """Every network of `contract` (see the module's docstring); errors name the key."""
    proto = contract.protocol
    _network(proto.architecture, "distiller.protocol.architecture", where)
    for name, a in (proto.architectures or {}).items():
        key = f"distiller.protocol.architectures.{name}"
        if a.arch != name:
            raise DistillerError(f"{where}: {key} describes {a.arch}, not {name}")
        _network(a, key, where)
    scored = sorted(contract.cross_architecture or {})
    if scored != sorted(proto.architectures or {}):
        raise DistillerError(
            f"{where}: distiller.cross_architecture scores {scored}, but distiller.protocol.architectures describes "
            f"{sorted(proto.architectures or {})}"
        )


def _network(a: Architecture, key: str, where: Path | str) -> None:
    model = _convnet(a, key, where) if a.arch == "convnet" else ModelParams(arch=a.arch)
    try:
        described: dict[str, Any] = models.describe(model, a.input_shape, a.num_classes)
    except DistillerError as e:  # a zoo network refuses inputs too small for it, naming the smallest side
        raise DistillerError(f"{where}: {key}: {e}") from None
    except (RuntimeError, TypeError, ValueError, OverflowError) as e:  # sizes beyond any tensor's
        raise DistillerError(f"{where}: {key} is no network distiller builds ({first_line(e)})") from None
    if a.arch == "convnet":
        described["first_padding"] = models.first_padding(a.input_shape)
    described.setdefault("precision", "fp32")  # a description names bf16 only; the zoo trains in fp32
    card = config.to_dict(a)
    for k in [*described, *(k for k in card if k not in described)]:
        mine, theirs = _plain(card.get(k)), _plain(described.get(k))
        if mine != theirs:
            raise DistillerError(f"{where}: {key}.{k} is {mine!r}, but the {a.arch} it describes has {theirs!r}")


def _convnet(a: Architecture, key: str, where: Path | str) -> ModelParams:
    """The ConvNet's params, once depth, width and pooling are there and the depth fits the input."""
    if a.depth is None or a.width is None or a.pooling is None:
        raise DistillerError(f"{where}: {key} describes a convnet without its depth, width or pooling")
    _, h, w = a.input_shape
    side = min(h, w) + 2 * models.first_padding(a.input_shape) - 2  # after the first conv
    for block in range(1, a.depth + 1):
        if side < 2:
            raise DistillerError(
                f"{where}: {key}.depth {a.depth} is too deep for {h}x{w} inputs: block {block} would pool a "
                f"{side}x{side} map"
            )
        side //= 2
    return ModelParams(
        arch="convnet",
        depth=a.depth,
        width=a.width,
        norm="none" if a.norm == "none" else "instancenorm",
        pooling=a.pooling,
        precision=a.precision,
    )


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value
