"""`model.precision`: the arithmetic a ConvNet's forward and backward run in, applied in this one place.

fp32 is plain float32. bf16 keeps every parameter a float32 master (the expert's and the student's parameter
dicts, the optimisers' state, the synthetic images, learned lr and labels all stay float32) and runs the network
itself in bfloat16: on the CPU the input and each layer's weights are cast once per forward and every layer computes
in bf16 (one dtype through the whole network, no cast per op); on CUDA the forward runs under `torch.autocast` in
bf16 (tensor cores). The logits come back as float32, so losses, the MTT distance and every gradient that leaves the
network are float32. `auto` picks bf16 where the device computes it natively (a CPU with AMX or AVX-512 BF16, a GPU
of compute capability 8.0 or newer) and fp32 elsewhere.

The layers here are the torch layers whose forward casts its weights to its input's dtype; in fp32 the cast is the
identity, so an fp32 network computes exactly what torch's own layers compute.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)


class GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def run(x: torch.Tensor, dtype: torch.dtype, body: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`body(x)` in `dtype`, float32 logits out (see the module's docstring)."""
    if dtype == torch.float32:
        return body(x)
    if x.is_cuda:
        with torch.autocast("cuda", dtype=dtype):
            return body(x).float()
    return body(x.to(dtype)).float()


def resolve(precision: str, device: torch.device | str) -> str:
    """`fp32` or `bf16`: `auto` resolved for `device`."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp32"
    return "bf16" if device.type == "cpu" and native_bf16_cpu() else "fp32"


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 units (the `amx_bf16` or `avx512_bf16` flag of /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
