"""CPU thread settings, chosen once per run.

One intra-op thread per physical core: the work here is large matrix products (MKL/oneDNN) and
vectorised row kernels, which gain nothing from a second hardware thread on the same core and
lose to the contention. Inter-op parallelism is left alone: a training step is one chain of
dependent operations, so there is nothing for it to overlap.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (logical CPUs if unknown)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores: set[str] = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(len(cores), 1)


def configure_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads; returns the number in use.

    None means one per physical core, unless OMP_NUM_THREADS is set: then the environment has
    already chosen (torchrun sets it to 1 per process so that N processes do not fight over
    the same cores), and torch's setting, which follows it, is kept.
    """
    if num_threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = num_threads if num_threads is not None else physical_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def command_threads(num_threads: int | None) -> int:
    """The --threads of a command that reads a model (eval, score, sample, diagnose): torch's
    intra-op threads set to `num_threads`; None leaves torch's own choice, as these commands
    always have. Returns the number in use."""
    if num_threads is None:
        return torch.get_num_threads()
    return configure_threads(num_threads)


def describe_machine() -> str:
    """CPU model, cores, torch version and threads: the label benchmark figures carry."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs / {physical_cores()} physical cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}"
    )
