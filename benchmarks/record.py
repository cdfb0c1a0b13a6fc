"""The one results recorder of every benchmark: a dated section in benchmarks/log.md with the device, the command that
produced it and its table. docs/results.md and the README quote from the log; the log itself is never edited."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

LOG = Path(__file__).resolve().parent / "log.md"


def device_name(device: torch.device | str = "cpu") -> str:
    """The GPU's name, or the CPU's model and core count (timings differ by 2x and more between CPU models)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def command() -> str:
    """How this benchmark was started, to be typed again."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def record(
    title: str, body: str, device: torch.device | str = "cpu", note: str = "", threads: int | None = None
) -> None:
    """Append `body` (a Markdown table or list) under a heading naming the date, device, threads and torch; `threads`
    when the work ran in other processes than this one (default: this process's torch threads)."""
    device = torch.device(device)
    threads = f", {threads or torch.get_num_threads()} torch thread(s)" if device.type == "cpu" else ""
    extra = f", {note}" if note else ""
    heading = f"### {title} ({datetime.date.today()}, {device_name(device)}{threads}, torch {torch.__version__}{extra})"
    with open(LOG, "a") as f:
        f.write(f"\n{heading}\n\n`{command()}`\n\n{body.rstrip()}\n")
