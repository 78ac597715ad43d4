"""What the cells whose gates read the inputs only (qrnn.py, minrnn.py) share.

Such a layer is one matmul over all T steps of the window, W [x_1 .. x_T] + b -> (T, B, G*H),
elementwise gates, and the linear recurrence h_t = a_t h_{t-1} + b_t run by scan.py. Here:

- the input projection, named weight_ih / bias_ih as the other cells' input weights, built and
  initialised as nn.Linear (uniform in +-1/sqrt(fan_in)), with model.weight_drop as DropConnect
  on it, as AWD-LSTM's QRNN language models drop the QRNN's input weights (it has no
  hidden-to-hidden ones);
- the precision rule: under bf16/fp16 autocast the matmul runs in that precision and everything
  after it (gates, scan, state) in fp32, where a product of hundreds of gates keeps its digits;
- padding: at a step past a row's length the update is the identity (a_t = 1, b_t = 0), so the
  state a row ends with is the one after its last real token, and the output there is 0, as
  packed nn.* layers give.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmtrain.models.scan import linear_scan


def add_input_projection(layer: nn.Module, rows: int, input_size: int) -> None:
    """weight_ih (rows, input_size) and bias_ih (rows), initialised as nn.Linear's."""
    layer.weight_ih = nn.Parameter(torch.empty(rows, input_size))
    layer.bias_ih = nn.Parameter(torch.empty(rows))
    bound = 1 / math.sqrt(input_size)
    for p in (layer.weight_ih, layer.bias_ih):
        nn.init.uniform_(p, -bound, bound)


def project(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_drop: float, training: bool
) -> torch.Tensor:
    """x (T, B, In) -> W x + b (T, B, rows) for every step at once.

    In training with weight_drop > 0 the weights are DropConnect-ed, one mask for the whole
    window (inverted scaling, so evaluation uses them as they are). Under autocast the result
    comes back in fp32 for the elementwise work that follows.
    """
    if training and weight_drop > 0:
        weight = F.dropout(weight, weight_drop, training=True)
    gates = F.linear(x, weight, bias)
    if gates.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(
        gates.device.type
    ):
        gates = gates.float()
    return gates


def masked_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t, (T, B, H), with the identity update where `mask` (T, B, 1) is
    False: a padded step leaves the state as it was."""
    if mask is not None:
        # with the mask as numbers: a select by a boolean mask costs several times as much
        m = mask.to(a.dtype)
        a = a * m + (1 - m)
        b = b * m
    return linear_scan(a, b, h0.to(a.dtype))


def zero_padding(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The output with 0 at padded steps."""
    return out if mask is None else out * mask.to(out.dtype)


def last_real(x: torch.Tensor, mask: torch.Tensor | None, before: torch.Tensor) -> torch.Tensor:
    """x (T, B, In) at each row's last real step; `before` (B, In) for a row with none."""
    if mask is None:
        return x[-1]
    length = mask.sum(0)  # (B, 1)
    index = (length - 1).clamp(min=0).view(1, -1, 1).expand(1, x.size(1), x.size(2))
    return torch.where(length > 0, x.gather(0, index)[0], before)
