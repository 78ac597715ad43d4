"""A toy logger that keeps what it is given, registered from this module alone. Its "package"
is a module this file puts in sys.modules, as an installed tracker's would be."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtrain.metrics import LOGGERS, SINKS
from lmtrain.metrics.backends import register


class MemoryLogger:
    name = "memory"
    package = "lmtrain_toy_memory_logger"
    built: list[MemoryLogger] = []

    def __init__(self, module: Any, run_dir: Path, config: dict[str, Any]) -> None:
        self.config = config
        self.points: list[tuple[int, dict[str, float]]] = []
        self.results: dict[str, Any] | None = None
        MemoryLogger.built.append(self)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.points.append((step, dict(values)))

    def finish(self, results: dict[str, Any]) -> None:
        self.results = results


def install() -> Callable[[], None]:
    MemoryLogger.built = []
    sys.modules[MemoryLogger.package] = types.ModuleType(MemoryLogger.package)
    register(MemoryLogger)

    def undo() -> None:
        del LOGGERS[MemoryLogger.name], SINKS[MemoryLogger.name]
        del sys.modules[MemoryLogger.package]

    return undo
