"""The network: embedding -> stacked recurrent layers -> output layer.

The names below are imported on first use (PEP 562), so that reading the config's model section
(lmtrain/models/config.py) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmtrain import lazy_getattr

if TYPE_CHECKING:
    from lmtrain.models.lm import LanguageModel, build_model
    from lmtrain.models.state import State, carried_state, detach_state, select_rows

_HOMES = {
    "LanguageModel": "lm",
    "build_model": "lm",
    "State": "state",
    "carried_state": "state",
    "detach_state": "state",
    "select_rows": "state",
}
"""Each name and the module of this package it is imported from."""
__all__ = ["LanguageModel", "State", "build_model", "carried_state", "detach_state", "select_rows"]

__getattr__ = lazy_getattr(__name__, _HOMES)
