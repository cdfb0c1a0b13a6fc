"""Scale-out with torch.distributed: the experts, RaT-BPTT's direct references, or the evaluation networks, shared
out over a torchrun job.

`torchrun --nproc-per-node K -m distiller expert-buffer` (or `distill`, or `evaluate`) starts K copies of the
command, the ranks of one process group: gloo on the CPU, NCCL with one GPU per rank on CUDA, several machines through
torchrun's rendezvous (`--nnodes`, `--rdzv-endpoint`). The work is a list of units (an expert; one network of one
evaluated set), each a function of its index and the seed alone. Rank r takes units r, r + K, r + 2K, ...
(`World.share`); rank 0 gathers the results (`to_root`, `sum_to_all`) and writes every output, so the outputs do not
depend on K (tested with gloo on the CPU; NCCL has not run, and on CUDA equal bits also need the param `deterministic`,
docs/scaling.md). The distill stage's units are whole runs: rank 0 boosts, the others share the direct references
(`distiller.methods.boost`, `objects_to_root`).

`expert.nproc`, `distill.nproc` and `evaluate.nproc` make `distiller <stage>` start such a job on this machine itself
(`launch`), which is how `dvc repro` uses it: still one command per stage.

On the CPU the last bits of a float sum depend on how many threads share it, so bitwise equality with a single
process needs the same intra-op thread count in every process: `launch` gives each rank the thread count of the
process that starts it; under a plain torchrun set OMP_NUM_THREADS to the single process's count yourself (torchrun
sets 1 when it is unset). A lost rank is one line: what was finished is kept, and a rerun resumes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from distiller.core.errors import DistillerError, first_line
from distiller.core.launch import LOST, in_torchrun

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank `rank` of `size` (a single process is rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def root(self) -> bool:
        return self.rank == 0

    def share(self, units: Sequence[T]) -> list[T]:
        """This rank's units: every size-th one, starting at its rank."""
        return list(units[self.rank :: self.size])

    def device(self, device: torch.device) -> torch.device:
        """The rank's own GPU when the run is on CUDA (NCCL wants one GPU per rank); the CPU otherwise."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.size > 1 else device


SINGLE = World()  # a process on its own


@contextlib.contextmanager
def world(device: torch.device, timeout: datetime.timedelta | None = None) -> Iterator[World]:
    """The job this process belongs to, its process group set up for the block (gloo on the CPU, NCCL on CUDA) and
    torn down after; a single process outside torchrun. `timeout`: how long a collective waits for the other ranks
    (torch's default, 30 minutes for gloo, unless given); a rank that dies is noticed at once either way."""
    if not in_torchrun():
        yield SINGLE
        return
    w = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(w.local_rank)
    with guarded():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    try:
        yield w
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """A collective that fails because a rank died or a connection broke becomes one line."""
    try:
        yield
    except RuntimeError as e:  # gloo and NCCL errors (DistBackendError is one); their first sentence says it
        raise DistillerError(LOST.format(first_line(e).split(". ")[0])) from None


def _comm(t: torch.Tensor) -> torch.Tensor:
    """Where a tensor must be to travel: on this rank's GPU under NCCL, on the CPU under gloo."""
    return t.cuda() if dist.get_backend() == "nccl" else t.cpu()


def broadcast_flags(w: World, flags: torch.Tensor) -> torch.Tensor:
    """Rank 0's boolean vector, on every rank."""
    if w.size == 1:
        return flags
    buf = _comm(flags.to(torch.int64))
    with guarded():
        dist.broadcast(buf, src=0)
    return buf.cpu().bool()


def to_root(w: World, mine: torch.Tensor | None, senders: Sequence[int], numel: int) -> list[torch.Tensor]:
    """Each of the ranks `senders` sends one flat tensor of `numel` float32 (`mine` on a sender); rank 0 gets them
    in the order of `senders` (its own among them), the other ranks an empty list."""
    if w.size == 1:
        return [mine] if mine is not None else []
    got = []
    with guarded():
        if not w.root:
            if mine is not None:
                dist.send(_comm(mine), dst=0)
            return []
        for rank in senders:
            if rank == 0:
                assert mine is not None
                got.append(mine)
            else:
                buf = _comm(torch.empty(numel, dtype=torch.float32))
                dist.recv(buf, src=rank)
                got.append(buf.cpu())
    return got


def objects_to_root(w: World, mine: Any) -> list[Any]:
    """Every rank's picklable `mine` (CPU tensors, lists, numbers), on rank 0 in rank order; the others get []."""
    if w.size == 1:
        return [mine]
    got: list[Any] | None = [None] * w.size if w.root else None
    with guarded():
        dist.gather_object(mine, got, dst=0)
    return got or []


def sum_to_all(w: World, values: torch.Tensor) -> torch.Tensor:
    """The float64 vector summed over the ranks; each rank fills its own entries and leaves the others 0, so the sum
    is every rank's values exactly (x + 0 = x)."""
    if w.size == 1:
        return values
    buf = _comm(values.to(torch.float64))
    with guarded():
        dist.all_reduce(buf)
    return buf.cpu()
