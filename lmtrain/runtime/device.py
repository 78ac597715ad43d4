"""Which device a command runs on: answered once, here, and passed down as a `torch.device`."""

from __future__ import annotations

import re

import torch

from lmtrain.errors import LmtrainError

_SPEC = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def wants_cuda(spec: str) -> bool:
    """Whether `spec` asks for a GPU: `cuda`, `cuda:N`, or `auto` on a machine that has one.

    Under torchrun (lmtrain/runtime/distributed.py) this picks the backend, and each process
    takes the GPU of its LOCAL_RANK.
    """
    return spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())


def resolve_device(spec: str, option: str = "train.device") -> torch.device:
    """Turn `auto`, `cpu`, `cuda` or `cuda:N` into a device that exists on this machine.

    `option` names where the spec came from (`train.device`, `--device`) so that the message
    points at the thing to change. Anything else, such as `foo`, `cuda:x` or `cuda:-1`, is
    refused with an LmtrainError rather than left for torch to raise deep inside a command.
    """
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise LmtrainError(f"{option} is {spec!r}; expected auto, cpu, cuda or cuda:N (N >= 0)")
    if spec == "auto":
        return torch.device("cuda" if wants_cuda(spec) else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LmtrainError(
            f"{option} is {spec!r} but no CUDA GPU is available here; use cpu (or auto)"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise LmtrainError(
            f"{option} is {spec!r} but only {count} GPU(s) exist (cuda:0 to cuda:{count - 1})"
        )
    return torch.device(spec)
