"""A packaged dataset folder as files: what is in it, which of its files the card declares, and a copy of just those.

`validate` and `publish` trust nothing in the folder: it must be a real directory (not a symbolic link) holding only
directories and regular files (a symbolic link could point anywhere, and a FIFO would block every reader); every path
the card names is relative and stays inside the folder; and every file is one the card declares (a config's data
file, a sidecar, a picture the card shows, the card itself), so a stray `.env` or an editor's backup is refused
rather than published. What is checked and published is a copy of the declared files (`copy_declared`), so a
folder whose name holds glob characters (`[`, `*`) loads like any other.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import stat
from pathlib import Path

from distiller.core.errors import DistillerError
from distiller.core.files import UMASK
from distiller.core.paths import relative

CARD = "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # markdown links and images: [text](target)


def inventory(folder: Path) -> tuple[str, ...]:
    """The folder's regular files as sorted relative POSIX paths; anything else in it is refused by name."""
    if folder.is_symlink():
        raise DistillerError(f"{folder}: the dataset folder is a symbolic link; give the folder it points to")
    if not folder.is_dir():
        raise DistillerError(f"dataset folder not found: {folder}")
    files = []
    for parent, dirs, names in os.walk(folder):  # never follows symbolic links
        for name in sorted([*dirs, *names]):
            path = Path(parent) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise DistillerError(f"{path}: symbolic links are not published (copy the file into the folder)")
            if stat.S_ISREG(mode):
                files.append(path.relative_to(folder).as_posix())
            elif not stat.S_ISDIR(mode):
                raise DistillerError(f"{path}: not a regular file (a FIFO, socket or device); remove it")
    return tuple(sorted(files))


def inside(folder: Path, rel: object, what: str) -> str:
    """`rel`, a path the card names, checked to be relative and to stay inside the folder (`paths.relative`)."""
    return relative(rel, what, folder / CARD, nested=True)


def matching(folder: Path, files: tuple[str, ...], pattern: str) -> list[str]:
    """The folder's files a data_files pattern matches (the pattern only: the folder's own name is never a glob)."""
    try:
        found = {p.relative_to(folder).as_posix() for p in folder.glob(pattern)}
    except (ValueError, IndexError, NotImplementedError) as e:  # pathlib refuses some patterns ('.', '**x')
        raise DistillerError(f"{folder / CARD}: data_files pattern {pattern!r} is not a valid glob ({e})") from None
    return [f for f in files if f in found]


def shown_files(folder: Path, card_text: str, files: tuple[str, ...]) -> set[str]:
    """The local files the card's text links to (its pictures); each must be in the folder."""
    shown = set()
    for target in LINK.findall(card_text.split("\n---", 2)[-1]):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        rel = inside(folder, target, "the card's link")
        if rel not in files:
            raise DistillerError(f"{folder / CARD}: the card shows '{rel}', which is not in the folder")
        shown.add(rel)
    return shown


def refuse_undeclared(folder: Path, files: tuple[str, ...], declared: set[str]) -> None:
    strays = [f for f in files if f not in declared]
    if strays:
        more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
        raise DistillerError(
            f"{folder / strays[0]}: a file the card does not declare{more} (not a config's data file, a sidecar or "
            "a picture the card shows); remove it: only declared files are published"
        )


def copy_declared(folder: Path, files: tuple[str, ...], dest: Path) -> None:
    """Copy `files` from `folder` into the directory `dest`, world-readable (0644 under the usual umask 022)."""
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / rel, target)
        target.chmod(0o666 & ~UMASK)


def hub_patterns(files: tuple[str, ...]) -> list[str]:
    """`allow_patterns` for `upload_folder` that match exactly `files` (glob characters in names escaped)."""
    return [glob.escape(f) for f in files]
