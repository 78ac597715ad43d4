"""Plain-RNN remedies that train from the quickstart settings: the IRNN's init gain."""

from __future__ import annotations

import pytest
import torch

from lmtrain.config import ModelConfig, config_from_dict
from lmtrain.errors import ConfigError
from lmtrain.models import build_model


def _irnn(gain: float, **kw: object) -> ModelConfig:
    base = {"cell": "rnn_relu", "init": "identity", "init_gain": gain, "num_layers": 1}
    return ModelConfig(embedding_dim=8, hidden_size=8, **{**base, **kw})  # type: ignore[arg-type]


def test_init_gain_scales_the_identity_and_the_orthogonal_init() -> None:
    model = build_model(_irnn(0.5), 20)
    assert torch.equal(model.rnn.rnn.weight_hh_l0, 0.5 * torch.eye(8))
    assert torch.equal(model.rnn.rnn.bias_hh_l0, torch.zeros(8))
    ortho = build_model(_irnn(0.7, cell="gru", init="orthogonal"), 20)
    for block in ortho.rnn.rnn.weight_hh_l0.detach().view(3, 8, 8):
        torch.testing.assert_close(torch.linalg.svdvals(block), torch.full((8,), 0.7))
    custom = build_model(_irnn(0.5, layer_norm=True), 20)  # the hand-built stack too
    assert torch.equal(custom.rnn.layers[0].weight_hh, 0.5 * torch.eye(8))


def test_a_scaled_irnn_keeps_a_carried_stream_state_bounded() -> None:
    # The failure issue 16 measured: on a stream the state is carried from window to window
    # without end, and an exact identity with ReLU adds up its inputs for ever.
    def state_norms(gain: float) -> list[float]:
        torch.manual_seed(0)
        model = build_model(_irnn(gain), 20).eval()
        ids = torch.randint(1, 20, (16, 4))  # the same window again and again: (T, B)
        state, norms = model.init_state(4), []
        with torch.no_grad():
            for _ in range(30):
                _, state = model(ids, state)
                norms.append(float(state[0].norm()))
        return norms

    exact, scaled = state_norms(1.0), state_norms(0.5)
    assert exact[-1] > 10 * exact[0]  # grows with every window
    assert scaled[-1] < 1.01 * max(scaled[:2])  # settles after the first window


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["model.init=identity", "model.init_gain=0"],
            "model.init_gain: must be in (0, 1], got 0.0",
        ),
        (["model.init=identity", "model.init_gain=1.5"], "model.init_gain: must be in (0, 1]"),
        (["model.init_gain=0.5"], "model.init_gain: scales init identity or orthogonal"),
    ],
)
def test_init_gain_is_checked(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, overrides)
    assert needle in str(e.value)
