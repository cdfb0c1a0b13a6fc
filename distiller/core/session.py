"""What every CLI command runs inside: progress bars, the one-line error contract and the project lock.

- A Rich progress display on a terminal (quiet when stderr is not one, as in CI logs).
- `DistillerError` -> its message as one line on stderr, exit code 2. A filesystem error (disk full, read-only
  filesystem, no permission, ...) -> one line naming the path and what to do, exit 2: the stage's writes are atomic
  (`distiller.core.files`), so what was there before is still there and nothing half-written is left. Running out of
  memory (host or GPU) -> one line naming the params that set the size, exit 2. Ctrl-C -> exit 130.
- `project_lock`: one stage command at a time per project folder. A second one refuses at once, naming the first one's
  process id, instead of racing it for the same artifacts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distiller.core.errors import DistillerError, first_line
from distiller.core.launch import rank

err = Console(stderr=True)

WHAT_TO_DO = {
    errno.ENOSPC: "the disk is full: free some space and rerun (finished outputs and checkpoints were kept)",
    errno.EDQUOT: "the disk quota is exhausted: free some space and rerun",
    errno.EROFS: "the filesystem is read-only: run in a writable project folder (--root)",
    errno.EACCES: "permission denied: make it writable, or run in a folder you own (--root)",
    errno.EPERM: "operation not permitted: make it writable, or run in a folder you own (--root)",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and rerun",
}


OUT_OF_MEMORY = (
    "lower what sets the size (distill.ipc, data.resolution, mtt.syn_steps, mtt.batch_syn, ratbptt.window, "
    "expert.parallel, evaluate.parallel) or use a larger machine; finished outputs and checkpoints were kept"
)


class RichReporter:
    """`Reporter` backed by one Rich progress display."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def task(self, description: str, total: int) -> Callable[[int], None]:
        task_id = self.progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            self.progress.advance(task_id, n)

        return advance


def os_error_line(e: OSError) -> str:
    """One line for a failed file operation: the path, the system's reason and what to do."""
    path = e.filename if e.filename is not None else "a file"
    reason = e.strerror or type(e).__name__
    hint = WHAT_TO_DO.get(e.errno or 0, "check the path and rerun")
    return f"cannot write or read {path}: {reason}; {hint}"


@contextlib.contextmanager
def session() -> Iterator[RichReporter]:
    """Progress bars plus the error contract (see the module's docstring)."""
    me = rank()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, TimeRemainingColumn(), console=err, disable=not err.is_terminal or me > 0)
    prefix = f"error: rank {me}: " if me else "error: "  # a torchrun job's other ranks say which they are
    try:
        with progress:
            yield RichReporter(progress)
    except DistillerError as e:
        typer.echo(prefix + " ".join(str(e).splitlines()), err=True)  # always one line
        raise typer.Exit(2) from None
    except OSError as e:
        typer.echo(prefix + " ".join(os_error_line(e).splitlines()), err=True)
        raise typer.Exit(2) from None
    except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as a RuntimeError
        if not isinstance(e, MemoryError) and not any(m in str(e) for m in ("can't allocate memory", "out of memory")):
            raise
        typer.echo(f"{prefix}out of memory ({first_line(e)}); {OUT_OF_MEMORY}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; nothing was written for the unfinished stage", err=True)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def project_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if needed) while the block runs; refuse if another process
    holds it. The lock is the kernel's (flock): it is released when the process ends, however it ends."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DistillerError(
                f"{lock_path.parent}: another distiller stage is running in this project (process {holder}); "
                "wait for it to finish, or use another --root"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
