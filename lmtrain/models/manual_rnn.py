"""A vanilla tanh RNN whose backpropagation through time is written out by hand.

The forward pass and the backward pass follow the lecture's equations line by line; autograd
only calls `backward` below and never sees the per-step operations. With row vectors (B, H):

    forward   a_t = U x_t + W h_{t-1} + b          h_t = tanh(a_t)
    backward  dL/dh_t  = dL/dout_t + (W^T dL/da_{t+1})          (from the output and from step t+1)
              dL/da_t  = dL/dh_t * (1 - h_t^2)
              dL/dW    = sum_t dL/da_t h_{t-1}^T     dL/dU = sum_t dL/da_t x_t^T
              dL/db    = sum_t dL/da_t               dL/dx_t = U^T dL/da_t    dL/dh_0 = W^T dL/da_1

Rows shorter than T (packed batches) carry h_{t-1} unchanged past their length and output zero
there: h_t = m_t tanh(a_t) + (1 - m_t) h_{t-1}, out_t = m_t tanh(a_t), so the gradient of a
skipped step flows straight through to h_{t-1}.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmtrain.models.config import ModelConfig
from lmtrain.models.parameters import add_rnn_parameters
from lmtrain.models.state import State


class ManualRNNFunction(torch.autograd.Function):
    """(x (T,B,E), h0 (B,H), U (H,E), W (H,H), b (H), mask (T,B,1) float or None) -> (out, h_T)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        h0: torch.Tensor,
        weight_ih: torch.Tensor,
        weight_hh: torch.Tensor,
        bias: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        steps, batch, _ = x.shape
        # U x_t + b for every step in one matmul; only W h_{t-1} has to wait for the previous step.
        a_in = torch.addmm(bias, x.reshape(steps * batch, -1), weight_ih.t()).view(steps, batch, -1)
        hs = x.new_empty(steps + 1, *h0.shape)  # h_0 .. h_T
        ys = x.new_empty(steps, *h0.shape)  # tanh(a_t), needed for the derivative
        hs[0] = h0
        for t in range(steps):
            y = torch.tanh(torch.addmm(a_in[t], hs[t], weight_hh.t()))
            ys[t] = y
            hs[t + 1] = y if mask is None else torch.lerp(hs[t], y, mask[t])
        out = ys if mask is None else ys * mask
        ctx.save_for_backward(x, hs, ys, weight_ih, weight_hh, mask)
        return out, hs[steps].clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, grad_last: torch.Tensor) -> tuple[Any, ...]:
        x, hs, ys, weight_ih, weight_hh, mask = ctx.saved_tensors
        steps, batch, _ = x.shape
        da = torch.empty_like(ys)  # dL/da_t for every t
        dh = grad_last.clone()  # dL/dh_T from whatever used the final state
        for t in range(steps - 1, -1, -1):
            dy = dh + grad_out[t]  # dL/dtanh(a_t): through h_t and through out_t
            if mask is not None:
                dy = dy * mask[t]
            da[t] = dy * (1 - ys[t] * ys[t])
            dh_prev = da[t] @ weight_hh  # W^T dL/da_t, as row vectors
            if mask is not None:
                dh_prev = dh_prev + dh * (1 - mask[t])  # a skipped step passes h through
            dh = dh_prev
        da2 = da.view(steps * batch, -1)
        grad_w = da2.t() @ hs[:-1].reshape(steps * batch, -1)  # sum_t dL/da_t h_{t-1}^T
        grad_u = da2.t() @ x.reshape(steps * batch, -1)  # sum_t dL/da_t x_t^T
        grad_b = da2.sum(0)
        grad_x = (da2 @ weight_ih).view_as(x)  # U^T dL/da_t
        return grad_x, dh, grad_u, grad_w, grad_b, None


def manual_rnn(
    x: torch.Tensor,
    h0: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return ManualRNNFunction.apply(x, h0, weight_ih, weight_hh, bias, mask)


class ManualRNNLayer(nn.Module):
    """One tanh RNN layer using ManualRNNFunction; parameters named as in nn.RNN."""

    def __init__(self, cfg: ModelConfig, input_size: int) -> None:
        super().__init__()
        add_rnn_parameters(self, cfg.hidden_size, input_size, cfg.hidden_size)

    @staticmethod
    def state_widths(cfg: ModelConfig) -> tuple[int, ...]:
        return (cfg.hidden_size,)

    def forward(
        self, x: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        m = None if mask is None else mask.to(x.dtype)
        # nn.RNN keeps two biases; only their sum enters a_t, and autograd splits its gradient.
        out, h = manual_rnn(
            x, state[0], self.weight_ih, self.weight_hh, self.bias_ih + self.bias_hh, m
        )
        return out, (h,)
