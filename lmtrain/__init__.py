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
import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = ("Model", "evaluate", "fit", "generate", "load", "score")
__all__ = ["__version__", *_API]


class _Package(types.ModuleType):
    """The type of the `lmtrain` module object: lazy API names that submodules cannot shadow.

    `lmtrain.evaluate` and `lmtrain.score` name both an API function and a submodule
    (lmtrain/evaluate.py, lmtrain/score.py). Importing a submodule binds it as an attribute of
    its package, so without this `from lmtrain import evaluate` would give the function or the
    module depending on what happened to be imported before. The functions always win here;
    the submodules are reached with `from lmtrain.evaluate import ...` as usual.
    """

    def __getattr__(self, name: str) -> Any:
        if name not in _API:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        api = importlib.import_module("lmtrain.api")
        for api_name in _API:
            super().__setattr__(api_name, getattr(api, api_name))
        return getattr(api, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the import system binding lmtrain/evaluate.py or score.py: keep the API
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_API})


sys.modules[__name__].__class__ = _Package
