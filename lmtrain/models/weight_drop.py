"""Weight drop: DropConnect on the hidden-to-hidden matrices of nn.LSTM / nn.GRU / nn.RNN.

Merity et al. 2017 ("Regularizing and Optimizing LSTM Language Models", AWD-LSTM) drop
individual recurrent weights, one mask per forward pass shared by every time step, so the
optimised cuDNN / oneDNN kernels still run. The reference implementation deleted the registered
`weight_hh_l*` Parameters and re-assigned plain tensors, which breaks `flatten_parameters`,
`state_dict` and `.to(device)` across PyTorch versions (salesforce/awd-lstm-lm issues #86, #114).

Here nothing about the module changes: the Parameters stay registered and are only *read*. Each
training forward computes the dropped matrices from them and runs the module with those values
through `torch.func.functional_call`, which substitutes tensors for the duration of one call.
The gradient flows through the mask back into the real Parameters; evaluation uses the full
weights (the inverted-dropout scaling keeps their expected value the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def recurrent_weight_names(rnn: nn.RNNBase) -> list[str]:
    """The hidden-to-hidden matrices (`weight_hh_l0`, `weight_hh_l1`, ...) of a torch RNN."""
    return [name for name, _ in rnn.named_parameters() if name.startswith("weight_hh_l")]


def run_with_weight_drop(
    rnn: nn.RNNBase, x: torch.Tensor | nn.utils.rnn.PackedSequence, hx: object, p: float
) -> tuple[object, object]:
    """`rnn(x, hx)` with DropConnect of probability `p` on the hidden-to-hidden weights.

    Callers apply it only in training mode; with p == 0 (or in eval) call `rnn` directly.
    """
    params = dict(rnn.named_parameters())
    dropped = {
        name: F.dropout(params[name], p=p, training=True) for name in recurrent_weight_names(rnn)
    }
    # The substituted weights are not one contiguous buffer, so cuDNN warns once and copies them
    # per call; that copy is the price of keeping the Parameters intact.
    return functional_call(rnn, dropped, (x, hx))
