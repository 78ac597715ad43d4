"""The network: embedding -> stacked recurrent layers -> output layer."""

from lmtrain.models.lm import LanguageModel, build_model
from lmtrain.models.state import State, carried_state, detach_state, select_rows

__all__ = ["LanguageModel", "State", "build_model", "carried_state", "detach_state", "select_rows"]
