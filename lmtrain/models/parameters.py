"""Recurrent-layer parameters named, shaped and initialised as torch's own layers."""

from __future__ import annotations

import math

import torch
from torch import nn


def add_rnn_parameters(layer: nn.Module, rows: int, input_size: int, hidden_size: int) -> None:
    """weight_ih (rows, input), weight_hh (rows, H), bias_ih, bias_hh, named and initialised as
    in nn.RNN/LSTM/GRU: every weight and bias uniform in (-1/sqrt(H), 1/sqrt(H))."""
    layer.weight_ih = nn.Parameter(torch.empty(rows, input_size))
    layer.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
    layer.bias_ih = nn.Parameter(torch.empty(rows))
    layer.bias_hh = nn.Parameter(torch.empty(rows))
    bound = 1 / math.sqrt(hidden_size)
    for w in (layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh):
        nn.init.uniform_(w, -bound, bound)
