"""minGRU and minLSTM, the minimal GRU and LSTM of Feng, Tung, Ahmed, Bengio and
Hajimirsadeghi 2024 ("Were RNNs All We Needed?").

Their gates read x_t only, never h_{t-1}, so each layer is one matmul over all T steps and the
linear recurrence h_t = a_t h_{t-1} + b_t (scan.py). As in the paper's log-space models, the
candidate state passes through g, which keeps it positive and grows linearly:

    g(v) = v + 1/2 for v >= 0, sigmoid(v) for v < 0

minGRU (weight_ih stacks the blocks z, h~; one bias bias_ih):

    z_t  = sigmoid(W_z x_t + b_z)
    h~_t = g(W_h x_t + b_h)
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t           a_t = 1 - z_t, b_t = z_t h~_t

minLSTM (blocks f, i, h~):

    f_t  = sigmoid(W_f x_t + b_f)      i_t = sigmoid(W_i x_t + b_i)
    f'_t = f_t / (f_t + i_t)           i'_t = i_t / (f_t + i_t)      (they sum to 1)
    h~_t = g(W_h x_t + b_h)
    h_t  = f'_t * h_{t-1} + i'_t * h~_t               a_t = f'_t, b_t = i'_t h~_t

f'_t is computed as sigmoid(log f_t - log i_t), the same value, which neither underflows nor
divides 0 by 0 when both gates are tiny. The scan here is exact for any sign, so h_{t-1} is the
state as given: 0 at a sequence's start, or the last state of the previous window, carried
unchanged (the paper's sequential form; its log-space form needs h_0 > 0). The state of a layer
is (h,), and the layer's output is h_t itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmtrain.models.config import ModelConfig
from lmtrain.models.parallel import add_input_projection, masked_scan, project, zero_padding
from lmtrain.models.state import State


def g(v: torch.Tensor) -> torch.Tensor:
    """v + 1/2 for v >= 0, sigmoid(v) below: positive, continuous, linear for large v."""
    return _G.apply(v)  # type: ignore[no-any-return]


class _G(torch.autograd.Function):
    """g as max(v + 1/2, sigmoid(v)), the same function (v + 1/2 >= sigmoid(v) exactly where
    v >= 0), with its derivative (1, or sigmoid'(v) below 0) written out: a boolean select over
    every element costs more than the rest of the cell's elementwise work on some CPUs."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        s = torch.sigmoid(v)
        ctx.save_for_backward(v, s)
        return torch.maximum(v + 0.5, s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        v, s = ctx.saved_tensors
        slope = s * (1 - s)
        return grad * slope.lerp_(torch.ones_like(s), (v >= 0).to(s.dtype))


class _MinLayer(nn.Module):
    """The parts minGRU and minLSTM share: the input projection and the (h,) state."""

    blocks = 0

    def __init__(self, cfg: ModelConfig, input_size: int) -> None:
        super().__init__()
        self.weight_drop = cfg.weight_drop
        add_input_projection(self, self.blocks * cfg.hidden_size, input_size)

    @staticmethod
    def state_widths(cfg: ModelConfig) -> tuple[int, ...]:
        return (cfg.hidden_size,)

    def forward(
        self, x: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """x (T, B, In), state ((B, H),), mask (T, B, 1) or None -> out (T, B, H), (h_T,)."""
        gates = project(x, self.weight_ih, self.bias_ih, self.weight_drop, self.training)
        a, b = self.coefficients(gates)
        h = masked_scan(a, b, state[0], mask)
        return zero_padding(h, mask), (h[-1],)

    def coefficients(self, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MinGRULayer(_MinLayer):
    """One minGRU layer (equations in the module docstring)."""

    blocks = 2

    def coefficients(self, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, candidate = gates.chunk(2, dim=-1)
        z = torch.sigmoid(z)
        return 1 - z, z * g(candidate)


class MinLSTMLayer(_MinLayer):
    """One minLSTM layer (equations in the module docstring)."""

    blocks = 3

    def coefficients(self, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, i, candidate = gates.chunk(3, dim=-1)
        ratio = F.logsigmoid(f) - F.logsigmoid(i)  # log f_t - log i_t
        return torch.sigmoid(ratio), torch.sigmoid(-ratio) * g(candidate)
