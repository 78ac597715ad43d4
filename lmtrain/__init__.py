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
from typing import Any

__version__ = "0.1.0"

_API = ("Model", "evaluate", "fit", "generate", "load", "score")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """The API names, imported from lmtrain/api.py on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    api = importlib.import_module("lmtrain.api")
    return getattr(api, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
