"""YAML from files and command lines the user does not control, read with limits: size, depth, expanded size, tags.

PyYAML's `safe_load` constructs no Python objects, but it still lets a short text cost gigabytes (aliases that
repeat aliases: a few hundred bytes expand to billions of nodes) or crash the interpreter's stack (deep nesting),
and its errors span several lines. `loads` checks the event stream first (nesting depth, tags), then the node graph
(its size with every alias expanded, counted without expanding it; no key twice in one mapping), and only then
builds the data; every refusal is one `DistillerError` line that starts with `where`. `load_file` adds the file
checks: a regular file, at most `MAX_BYTES`, valid UTF-8.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from distiller.core.errors import DistillerError

MAX_BYTES = 1 << 20  # params files, cards and dvc.lock are a few KB
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 100_000  # scalars, lists and mappings, counted with every alias expanded
STANDARD_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "binary")
)


def _line(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or type(e).__name__
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)


def _check_events(text: str, where: str) -> None:
    """Depth and explicit tags, from the parser's events (the parser is iterative: no recursion on deep input)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in STANDARD_TAGS and tag != "!":
            line = event.start_mark.line + 1 if event.start_mark else "?"
            shown = tag.encode("unicode_escape").decode()[:80]
            raise DistillerError(f"{where}: the YAML tag '{shown}' is not allowed (line {line}); write plain values")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise DistillerError(f"{where}: YAML nested more than {MAX_DEPTH} levels deep (line {line})")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int], where: str) -> int:
    """Nodes in the data `node` becomes, aliases expanded; shared nodes are counted once per use but visited once.
    A mapping that repeats a key is refused on the way (YAML would keep the last value without a word)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_NODES + 1  # a node that contains itself (a recursive alias) is too large
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, where) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        counts = Counter(k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode))
        repeated = sorted(k for k, n in counts.items() if n > 1)
        if repeated:
            shown = repeated[0].encode("unicode_escape").decode()[:80]
            raise DistillerError(f"{where}: the key '{shown}' appears twice (line {node.start_mark.line + 1})")
        size += sum(_expanded_size(k, memo, where) + _expanded_size(v, memo, where) for k, v in node.value)
    memo[id(node)] = min(size, MAX_NODES + 1)
    return memo[id(node)]


def loads(text: str, where: str) -> Any:
    """The data in `text` (None for an empty document), or one line saying why not."""
    try:
        _check_events(text, where)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}, where) > MAX_NODES:
            raise DistillerError(f"{where}: YAML holds more than {MAX_NODES} values (aliases expanded)")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DistillerError(f"{where}: not valid YAML: {_line(e)}") from None
    except RecursionError:  # not expected after the depth check; kept so no input can print a traceback
        raise DistillerError(f"{where}: YAML nested too deeply") from None


def read_text(path: Path, what: str = "file", limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes (a FIFO or a device would block or never end)."""
    if not path.exists():
        raise DistillerError(f"{path}: {what} not found")
    if not path.is_file():
        raise DistillerError(f"{path}: {what} is not a regular file")
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise DistillerError(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
    if len(data) > limit:
        raise DistillerError(f"{path}: {what} larger than {limit // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DistillerError(f"{path}: {what} is not UTF-8 text (byte {e.start})") from None


def load_file(path: Path | str, what: str = "YAML file") -> Any:
    path = Path(path)
    return loads(read_text(path, what), str(path))
