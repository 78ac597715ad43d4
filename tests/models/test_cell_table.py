"""The cell table: every cell is a row of models/config.py's CELLS and a layer class, and a cell
added to the table from one module builds, counts its parameters, carries its state and trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_config
from lmtrain.checkpoint import load_model
from lmtrain.models import build_model
from lmtrain.models.cells import CustomRecurrent, layer_class
from lmtrain.models.config import CELLS, CellSpec, ModelConfig, register
from lmtrain.models.lm import TORCH_RNNS
from lmtrain.models.state import State
from lmtrain.training import fit


def test_the_cells_nn_runs_are_the_torch_table() -> None:
    assert {name for name, spec in CELLS.items() if spec.torch} == set(TORCH_RNNS)


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_row_names_a_layer_class_with_its_state_widths(cell: str) -> None:
    cfg = ModelConfig(cell=cell, embedding_dim=5, hidden_size=6)  # type: ignore[arg-type]
    cls = layer_class(cell)
    assert issubclass(cls, nn.Module)
    widths = cls.state_widths(cfg)  # type: ignore[attr-defined]
    model = build_model(cfg, 11)
    assert [tuple(s.shape) for s in model.init_state(3)] == [(2, 3, w) for w in widths]


class ToyLayer(nn.Module):
    """h_t = h_{t-1} / 2 + tanh(W x_t + b): a cell that lives in this test module only."""

    def __init__(self, cfg: ModelConfig, input_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_size, cfg.hidden_size)

    @staticmethod
    def state_widths(cfg: ModelConfig) -> tuple[int, ...]:
        return (cfg.hidden_size,)

    def forward(
        self, x: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        (h,) = state
        outs = []
        for t, u in enumerate(torch.tanh(self.proj(x))):
            new = h / 2 + u
            h = new if mask is None else torch.where(mask[t], new, h)
            outs.append(new if mask is None else new * mask[t])
        return torch.stack(outs), (h,)


@pytest.fixture
def toy(request: pytest.FixtureRequest) -> str:
    register("toy", CellSpec(f"{__name__}:ToyLayer", gates=1, recurrent=False))
    request.addfinalizer(lambda: CELLS.pop("toy"))
    return "toy"


def test_a_name_is_registered_once(toy: str) -> None:
    with pytest.raises(ValueError, match="a cell named 'toy' is already registered"):
        register(toy, CELLS["lstm"])


def test_a_registered_cell_is_a_config_value_fit_trains_and_a_checkpoint_reads(
    toy: str, tiny_files, tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path, tiny_files, f"model.cell={toy}", "train.max_steps=6")
    result = fit(cfg, quiet=True)
    assert result.progress.step == 6
    model, _, saved = load_model(tmp_path / "run")
    assert saved.model.cell == toy and isinstance(model.rnn.layers[0], ToyLayer)


def test_a_cell_added_to_the_table_builds_counts_and_trains(toy: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(cell=toy, embedding_dim=5, hidden_size=6, num_layers=2)  # type: ignore[arg-type]
    assert cfg.problems() == [] and cfg.custom_features() == ["cell=toy"]
    model = build_model(cfg, 20)
    assert isinstance(model.rnn, CustomRecurrent)
    assert [type(layer) for layer in model.rnn.layers] == [ToyLayer, ToyLayer]
    assert cfg.parameter_count(20) == sum(p.numel() for p in model.parameters())

    inputs, targets = torch.randint(1, 20, (7, 4)), torch.randint(1, 20, (7, 4))
    # the state carried from the first half of the window continues it exactly
    whole, _ = model(inputs, model.init_state(4))
    first, state = model(inputs[:3], model.init_state(4))
    second, _ = model(inputs[3:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)

    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        hidden, _ = model(inputs, model.init_state(4))
        loss = model.output.nll(hidden.reshape(-1, 6), targets.reshape(-1)) / targets.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 1.0


def test_options_a_cell_does_not_take_are_refused_naming_the_cells_that_do(toy: str) -> None:
    cfg = ModelConfig(cell=toy, layer_norm=True, init="orthogonal", leak=0.5)  # type: ignore[arg-type]
    assert cfg.problems() == [
        "model.leak: leaky units are for rnn_tanh and rnn_relu, not toy; set model.leak=0 and "
        "model.learn_leak=false, or change model.cell",
        "model.layer_norm: not available with toy; it applies to rnn_tanh, rnn_relu, lstm, gru",
        "model.init: not available with toy; it applies to rnn_tanh, rnn_relu, lstm, gru, "
        "rnn_manual",
    ]
