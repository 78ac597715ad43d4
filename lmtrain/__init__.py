"""lmtrain: train, evaluate and sample recurrent language models from a YAML file.

The Python API (lmtrain/api.py) is imported on first use, so that `import lmtrain` and
`lmtrain --help` stay fast and do not import torch:

    from lmtrain import fit, load, generate, score, evaluate

    result = fit("quickstart", {"train.max_steps": 200, "run.dir": "runs/nb"})
    model = load(result.run_dir)
    print(model.generate("The ", max_tokens=100, seed=0))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"

_API = ("Model", "evaluate", "fit", "generate", "load", "score")
__all__ = ["__version__", *_API]


def lazy_getattr(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` (PEP 562): each name of `homes` is imported on first use from
    the module of `package` it maps to, so that importing the package imports none of them."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return __getattr__


__getattr__ = lazy_getattr(__name__, dict.fromkeys(_API, "api"))


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
