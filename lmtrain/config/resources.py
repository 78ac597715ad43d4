"""The memory a config needs against what the device has: refuse a model that cannot fit before
anything is built, naming the key to lower.

The estimate itself (what one training step holds, the optimiser's state included) is the train
section's, in lmtrain/training/config.py; here it meets the device and the other sections' keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from lmtrain.config.schema import Config
from lmtrain.errors import ConfigError
from lmtrain.training.config import MemoryEstimate, estimate_memory

__all__ = [
    "MemoryEstimate",
    "check_resources",
    "estimate_memory",
    "memory_available",
    "resource_problems",
]


_SIZE_KEYS = (
    ("model", "embedding_dim"),
    ("model", "hidden_size"),
    ("model", "num_layers"),
    ("train", "batch_size"),
    ("train", "bptt"),
)


def _key_to_lower(cfg: Config, vocab_size: int, world_size: int) -> str:
    """The size key whose default would shrink the estimate most: the one to name."""
    best, best_total = "data.max_size", estimate_memory(cfg, vocab_size, world_size).total_bytes
    for section, name in _SIZE_KEYS:
        part = getattr(cfg, section)
        default = getattr(type(part)(), name)
        if getattr(part, name) <= default:
            continue
        smaller = dataclasses.replace(
            cfg, **{section: dataclasses.replace(part, **{name: default})}
        )
        total = estimate_memory(smaller, vocab_size, world_size).total_bytes
        if total < best_total:
            best, best_total = f"{section}.{name}", total
    return best


def _format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _physical_memory() -> int:
    """RAM this process may use: physical memory, or a lower cgroup (container) limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit_file).read_text().strip()))
    return total


def memory_available(device: object = "cpu") -> tuple[int, str]:
    """(bytes, description) of the memory that holds the model on `device`.

    `device` is a torch.device or its spec ("cpu", "cuda:1", "auto"); a GPU's total memory
    when one is named (or "auto" finds one), otherwise this machine's RAM.
    """
    spec = str(device)
    if spec == "auto" or spec.startswith("cuda"):
        import torch  # only here: loading a config must not pay for torch

        if torch.cuda.is_available():
            index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
            if index < torch.cuda.device_count():
                props = torch.cuda.get_device_properties(index)
                return props.total_memory, f"cuda:{index} ({props.name}) has " + _format_bytes(
                    props.total_memory
                )
    ram = _physical_memory()
    return ram, f"this machine has {_format_bytes(ram)} of RAM"


def resource_problems(
    cfg: Config, vocab_size: int | None = None, device: object = None, world_size: int | None = None
) -> list[str]:
    """Problems (one line each) when `cfg` cannot train within the memory of `device`.

    Before the data is read `vocab_size` is unknown (None): the smallest vocabulary the config
    allows is assumed, so only what is certain is refused. `device` defaults to train.device;
    `world_size` to WORLD_SIZE, which torchrun sets (each process holds its share of the batch).
    """
    m = cfg.model
    if world_size is None:
        world_size = 1
        with contextlib.suppress(ValueError):
            world_size = max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    if vocab_size is None:
        vocab_size = max([2, *(c + 1 for c in m.adaptive_softmax.cutoffs)])
        vocabulary = f"the smallest vocabulary the config allows ({vocab_size:,})"
    else:
        vocabulary = f"a vocabulary of {vocab_size:,}"
    est = estimate_memory(cfg, vocab_size, world_size)
    available, where = memory_available(cfg.train.device if device is None else device)
    if est.total_bytes <= available:
        return []
    key = _key_to_lower(cfg, vocab_size, world_size)
    todo = (
        "limit the vocabulary with data.max_size or data.min_freq"
        if key == "data.max_size"
        else f"lower {key}"
    )
    return [
        f"{key}: training this model needs at least {_format_bytes(est.total_bytes)} "
        f"({est.parameters:,} parameters: {_format_bytes(est.state_bytes)} for weights, "
        f"gradients and {cfg.train.optimizer} state; {_format_bytes(est.activation_bytes)} of "
        f"activations for a step of {cfg.train.batch_size} x {cfg.train.bptt} tokens with "
        f"{vocabulary}), but {where}; {todo}"
    ]


def check_resources(
    cfg: Config, vocab_size: int | None = None, device: object = None, world_size: int | None = None
) -> None:
    """ConfigError naming the key to lower when `cfg` clearly cannot fit in memory.

    Called before anything is built (vocab_size None) and again once the vocabulary is known.
    """
    if problems := resource_problems(cfg, vocab_size, device, world_size):
        raise ConfigError(problems, "config")
