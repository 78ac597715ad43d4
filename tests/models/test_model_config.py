"""The model section owns its cell table, its custom-stack rule and its parameter count, and the
model that models/ builds agrees with each of them."""

from __future__ import annotations

import pytest

from lmtrain.config import config_from_dict
from lmtrain.errors import ConfigError
from lmtrain.models import build_model
from lmtrain.models.cells import CustomRecurrent, needs_custom_stack
from lmtrain.models.config import CELLS, AdaptiveSoftmaxConfig, Cell, ModelConfig
from lmtrain.models.lm import TorchRecurrent
from lmtrain.records import choices


def test_the_schema_takes_exactly_the_cells_of_the_cell_table() -> None:
    assert choices(Cell) == tuple(CELLS)
    for cell in CELLS:
        assert config_from_dict({}, [f"model.cell={cell}"]).model.cell == cell
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, ["model.cell=lsmt"])
    names = ", ".join(repr(c) for c in CELLS)
    assert e.value.problems == [
        f"model.cell: expected one of {names}, got 'lsmt'; did you mean 'lstm'?"
    ]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize(
    "output",
    [
        {},
        {"tie_weights": True, "embedding_dim": 6},
        {"adaptive_softmax": AdaptiveSoftmaxConfig(cutoffs=[5, 20], div_value=2.0)},
    ],
    ids=["softmax", "tied", "adaptive"],
)
def test_the_parameter_count_is_the_built_models(cell: str, output: dict) -> None:
    cfg = ModelConfig(**{"cell": cell, "embedding_dim": 5, "hidden_size": 6, **output})
    model = build_model(cfg, 50)
    assert cfg.parameter_count(50) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "setting",
    [
        {"cell": "rnn_manual"},
        {"layer_norm": True},
        {"recurrent_dropout": 0.1},
        {"locked_dropout": 0.1},
        {"cell": "rnn_tanh", "leak": 0.5},
        {"cell": "rnn_tanh", "leak": 0.5, "learn_leak": True},
        {"residual": True},
    ],
)
def test_each_custom_feature_picks_the_hand_built_stack_and_is_named_by_weight_drop(
    setting: dict,
) -> None:
    cfg = ModelConfig(**{"embedding_dim": 5, "hidden_size": 6, **setting})
    assert needs_custom_stack(cfg)
    assert isinstance(build_model(cfg, 9).rnn, CustomRecurrent)
    overrides = [f"model.{k}={str(v).lower()}" for k, v in setting.items()]
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, [*overrides, "model.weight_drop=0.5"])
    (feature,) = cfg.custom_features()
    assert e.value.problems == [
        f"model.weight_drop: applies to the nn.RNN/LSTM/GRU layers only, and model.{feature} "
        "selects the hand-built stack; drop one of them"
    ]


def test_without_a_custom_feature_the_torch_stack_is_built() -> None:
    cfg = ModelConfig(embedding_dim=5, hidden_size=6, init="identity", learn_initial_state=True)
    assert cfg.custom_features() == [] and not needs_custom_stack(cfg)
    assert isinstance(build_model(cfg, 9).rnn, TorchRecurrent)


def test_the_section_reports_its_own_problems_by_dotted_key() -> None:
    cfg = ModelConfig(dropout=1.0, hidden_size=0, pretrained_embeddings="v\0.txt")
    assert cfg.problems() == [
        "model.hidden_size: must be >= 1, got 0",
        "model.dropout: must be in [0, 1), got 1.0",
        "model.pretrained_embeddings: must not contain a NUL character",
    ]
    assert ModelConfig().problems() == []
