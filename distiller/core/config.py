"""A small engine between YAML mappings and frozen dataclasses: checked on the way in, plain data on the way out.

Schemas (`distiller.core.params`, `distiller.packaging.contract`) declare fields with `setting(default, help, ge=...,
...)`, `field(metadata={"ge": ...})` or plain annotations; this module knows nothing of what they mean. `build` rejects
unknown keys (with a did-you-mean), missing required keys, wrong types, non-finite numbers and out-of-range values
(bounds on a tuple apply to every element), each as one `DistillerError` line naming the dotted key. Annotations it
understands: int, float, bool, str, `Literal[...]`, `X | None`, `tuple[X, ...]`, `dict[str, X]`, `Any`, nested
dataclasses, and value types with a `from_config(value, key)` classmethod and a `to_config()` method (e.g. the
augmentation families). `to_dict` is the inverse; a field whose default is None is left out while it is None.
`render_yaml` writes a dataclass as commented YAML, every key followed by its help, which makes the schema the one
source of each key's documentation.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from distiller.core import safeyaml
from distiller.core.errors import DistillerError


def yaml_key(f: dataclasses.Field[Any]) -> str:
    """A field's key in YAML: its name, without the trailing underscore that lets a key be a Python keyword (`from`)."""
    return f.name.removesuffix("_")


def setting(default: Any, help: str, **bounds: float) -> Any:
    """A dataclass field with a help text and optional bounds (ge, gt, le, lt) checked by `build`."""
    return dataclasses.field(default=default, metadata={"help": help, **bounds})


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------------------------------------------------------------
# YAML -> dataclass


def build(cls: type, raw: Any, *, where: str = "params", prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from the mapping `raw`; `where` starts every error message."""
    if not isinstance(raw, Mapping):
        raise DistillerError(f"{where}: {prefix or 'the file'} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {yaml_key(f): f for f in dataclasses.fields(cls)}
    dotted = lambda k: f"{prefix}.{k}" if prefix else str(k)
    for k in raw:
        if k not in fields:
            hint = did_you_mean(dotted(k), [dotted(f) for f in fields])
            shown = dotted(k).encode("unicode_escape").decode()  # a key may hold newlines: keep the error one line
            raise DistillerError(f"{where}: unknown key '{shown}'{hint}")
    values = {}
    for k, f in fields.items():
        if k not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DistillerError(f"{where}: {dotted(k)} is missing")
            continue
        values[f.name] = _coerce(dotted(k), raw[k], hints[f.name], where)
        _check_bounds(dotted(k), values[f.name], f.metadata, where)
    try:
        return cls(**values)
    except DistillerError as e:  # a check across fields (`__post_init__`) names its keys, `where` the file
        raise DistillerError(f"{where}: {e}") from None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        inner = typing.get_args(tp)[0]
        if typing.get_origin(inner) is Literal:
            return "a list of " + ", ".join(repr(a) for a in typing.get_args(inner))
        return f"a list of {_type_name(inner)}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp) or origin is dict:
        return "a mapping"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(key: str, value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats, and so is exponent notation without a
    dot (`1e-5`), which YAML 1.1 reads as a string; nothing else is converted."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner, where)
    if isinstance(tp, type) and hasattr(tp, "from_config"):
        try:
            return tp.from_config(value, key)
        except DistillerError as e:  # the value type names the key; `where` names the file
            raise DistillerError(f"{where}: {e}") from None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, where=where, prefix=key)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(f"{key}[{i}]", v, inner, where) for i, v in enumerate(value))
    if origin is dict and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        inner = typing.get_args(tp)[1]
        return {k: _coerce(f"{key}.{k}", v, inner, where) for k, v in value.items()}
    if tp is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)
    if not _matches(value, tp, origin):
        raise DistillerError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
    if tp is float:
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:  # tensors are float32: 1e39 would overflow there
            raise DistillerError(f"{where}: {key} must be a finite number (float32's range), got {value!r}")
        return float(value)
    if tp is int and abs(value) > INT64_MAX:
        raise DistillerError(f"{where}: {key} must fit in 64 bits, got {value!r}")
    return value


def _matches(value: Any, tp: Any, origin: Any) -> bool:
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(tp)
    if origin in (tuple, list, dict):
        return False  # the right container was handled by the caller
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


_BOUNDS = (
    ("ge", ">=", lambda v, b: v >= b),
    ("gt", ">", lambda v, b: v > b),
    ("le", "<=", lambda v, b: v <= b),
    ("lt", "<", lambda v, b: v < b),
)


FLOAT32_MAX = 3.4028234663852886e38
INT64_MAX = 2**63 - 1


def _check_bounds(key: str, value: Any, meta: Mapping[str, Any], where: str) -> None:
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            _check_bounds(f"{key}[{i}]", v, meta, where)
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for name, word, test in _BOUNDS:
        if name in meta and not test(value, meta[name]):
            raise DistillerError(f"{where}: {key} must be {word} {meta[name]}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------------
# files and overrides


def load_yaml(path: Path | str) -> dict[str, Any]:
    """A params file holding a mapping (or nothing), read with `safeyaml`'s limits; every problem is one line."""
    path = Path(path)
    if not path.exists():
        raise DistillerError(f"params file not found: {path}")
    raw = safeyaml.load_file(path, "params file")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise DistillerError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return raw


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw[a][b] = value for the key 'a.b', creating sections as needed."""
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DistillerError(f"params: cannot set '{dotted}': '{part}' is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a YAML value (`distill.ipc=1`, `augment.strategy=none`)."""
    if "=" not in text:
        raise DistillerError(f"override '{text}' must look like key=value (e.g. distill.ipc=1)")
    key, value = text.split("=", 1)
    key = key.strip()
    return key, safeyaml.loads(value, f"override {key}") if value.strip() else ""


# ---------------------------------------------------------------------------------------------------------------------
# dataclass -> plain data and commented YAML


def to_dict(obj: Any) -> Any:
    """Plain nested dicts, lists and scalars (for YAML, JSON and hashing); optional fields still None are left out."""
    if hasattr(obj, "to_config"):
        return obj.to_config()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None and f.default is None:
                continue
            out[yaml_key(f)] = to_dict(value)
        return out
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def field_help(cls: type) -> dict[str, str]:
    return {yaml_key(f): f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _scalar(value: Any) -> str:
    return yaml.safe_dump(to_dict(value), default_flow_style=True, width=1000).removesuffix("\n...\n").strip()


def render_yaml(obj: Any, header: str, column: int = 25, width: int = 118) -> str:
    """`obj` as YAML: a section per nested dataclass (its docstring's first line as the comment) and every key followed
    by its help, aligned at `column` and wrapped at `width`; loading the text back gives `obj`."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def emit(node: Any, indent: str) -> None:
        helps = field_help(type(node))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value) and not hasattr(value, "to_config"):
                doc = (type(value).__doc__ or "").strip().splitlines()[0]
                lines.append("")
                lines.extend(_commented(f"{indent}{yaml_key(f)}:", doc, column, width))
                emit(value, indent + "  ")
            else:
                lines.extend(_commented(f"{indent}{yaml_key(f)}: {_scalar(value)}", helps[yaml_key(f)], column, width))

    emit(obj, "")
    return "\n".join(lines) + "\n"


def _commented(code: str, comment: str, column: int, width: int) -> list[str]:
    start = max(column, len(code) + 2)
    wrapped = textwrap.wrap(comment, width=max(width - start - 2, 30)) or [""]
    first = f"{code.ljust(start)}# {wrapped[0]}".rstrip() if comment else code
    return [first, *(f"{' ' * start}# {line}" for line in wrapped[1:])]
