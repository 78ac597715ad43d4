"""QRNN, the quasi-recurrent neural network of Bradbury, Merity, Xiong and Socher 2017.

A masked convolution over time computes every gate from the inputs alone, then fo-pooling runs
the only recurrence, elementwise. With window k (model.qrnn_window: 1, or 2 as in the paper's
language models) and x_0 the last input of the previous window (zero at a sequence's start):

    z_t = tanh(W_z [x_t; x_{t-1}] + b_z)          (k = 2; with k = 1, W_z x_t + b_z)
    f_t = sigmoid(W_f [x_t; x_{t-1}] + b_f)
    o_t = sigmoid(W_o [x_t; x_{t-1}] + b_o)
    c_t = f_t * c_{t-1} + (1 - f_t) * z_t         fo-pooling: a linear scan, a_t = f_t,
    h_t = o_t * c_t                                b_t = (1 - f_t) z_t

weight_ih stacks the blocks z, f, o (rows) over the taps x_t, then x_{t-1} (columns), with one
bias bias_ih. Zoneout (model.zoneout, the paper's regulariser) acts on the forget gate,
f_t = 1 - dropout(1 - f_t): in training each unit's 1 - f_t is zeroed with probability p at each
step (the unit keeps its state), without rescaling, since a rescaled 1 - f_t could exceed 1; in
evaluation 1 - f_t is multiplied by 1 - p, its expectation (Krueger et al. 2016, and the QRNN
of AWD-LSTM's code).

The state of a layer is (c,) for k = 1 and (c, x) for k = 2, where x is the layer's last input,
which the first step of the next window reads as x_{t-1}. Its width is the widest layer input of
the stack (model.embedding_dim for layer 0, hidden_size above it, more with model.dense), so
that one (num_layers, B, width) tensor holds every layer's; a layer uses its first In columns,
and the rest stay zero. The input is kept rather than W x_{t-1}: the next window applies its own,
updated, weights to it, as running the whole text at once would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmtrain.models.config import ModelConfig
from lmtrain.models.parallel import (
    add_input_projection,
    last_real,
    masked_scan,
    project,
    zero_padding,
)
from lmtrain.models.state import State


class QRNNLayer(nn.Module):
    """One QRNN layer with fo-pooling (equations in the module docstring)."""

    def __init__(self, cfg: ModelConfig, input_size: int) -> None:
        super().__init__()
        self.window = cfg.qrnn_window
        self.input_size = input_size
        self.zoneout = cfg.zoneout
        self.weight_drop = cfg.weight_drop
        add_input_projection(self, 3 * cfg.hidden_size, self.window * input_size)
        self.state_width = max(cfg.layer_input_sizes())

    @staticmethod
    def state_widths(cfg: ModelConfig) -> tuple[int, ...]:
        """(c,) or, with window 2, (c, last input), the input padded to the widest layer's."""
        if cfg.qrnn_window == 1:
            return (cfg.hidden_size,)
        return (cfg.hidden_size, max(cfg.layer_input_sizes()))

    def forward(
        self, x: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """x (T, B, In), state ((B, H) or (B, H) and (B, width)), mask (T, B, 1) or None."""
        taps = x
        if self.window == 2:
            before = state[1][:, : self.input_size].to(x.dtype)
            previous = torch.cat([before.unsqueeze(0), x[:-1]])  # x_{t-1} for every step
            taps = torch.cat([x, previous], dim=-1)  # (T, B, 2 In)
        gates = project(taps, self.weight_ih, self.bias_ih, self.weight_drop, self.training)
        z, f, o = gates.chunk(3, dim=-1)  # (T, B, H) each
        f = torch.sigmoid(f)
        keep_new = 1 - f  # the share of z_t in c_t
        if self.zoneout > 0:
            if self.training:
                keep_new = keep_new * torch.empty_like(keep_new).bernoulli_(1 - self.zoneout)
            else:
                keep_new = keep_new * (1 - self.zoneout)
            f = 1 - keep_new
        c = masked_scan(f, keep_new * torch.tanh(z), state[0], mask)
        out = zero_padding(torch.sigmoid(o) * c, mask)
        if self.window == 1:
            return out, (c[-1],)
        last = last_real(x, mask, before)
        return out, (c[-1], F.pad(last, (0, self.state_width - self.input_size)))
