"""Embedding -> stacked nn.RNN / nn.LSTM / nn.GRU (or the hand-built stack of cells.py) -> dropout
-> output layer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmtrain.models.adaptive import AdaptiveSoftmaxOutput
from lmtrain.models.cells import (
    UNDRAWN,
    CustomRecurrent,
    LearnedInitialState,
    embedding_dropout,
    init_recurrent,
    mask_parts,
    needs_custom_stack,
    state_widths,
)
from lmtrain.models.config import ModelConfig
from lmtrain.models.output import SoftmaxOutput
from lmtrain.models.state import State
from lmtrain.models.weight_drop import run_with_weight_drop

TORCH_RNNS: dict[str, Callable[..., nn.RNNBase]] = {
    "rnn_tanh": functools.partial(nn.RNN, nonlinearity="tanh"),
    "rnn_relu": functools.partial(nn.RNN, nonlinearity="relu"),
    "lstm": nn.LSTM,
    "gru": nn.GRU,
}
"""The torch layer of each cell whose `CellSpec.torch` is true (models/config.py)."""


class TorchRecurrent(nn.Module):
    """nn.RNN / nn.LSTM / nn.GRU behind the interface every recurrent stack here shares:

        forward(x (T, B, E), state, lengths or None) -> (out (T, B, H), state)

    where state is a tuple of (num_layers, B, H) tensors. With `lengths` the rows are packed, so
    no compute is spent on padding and each row's final state is taken at its last real token.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.rnn = _torch_rnn(cfg)
        self.paired = len(state_widths(cfg)) == 2  # nn.LSTM takes and returns (h, c)
        self.weight_drop = cfg.weight_drop

    def forward(
        self, x: torch.Tensor, state: State, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        hx = state if self.paired else state[0]
        rnn: Callable[..., Any] = self.rnn
        if self.training and self.weight_drop > 0:
            rnn = functools.partial(run_with_weight_drop, self.rnn, p=self.weight_drop)
        if lengths is None:
            out, new = rnn(x, hx)
        else:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            out, new = rnn(packed, hx)
            out, _ = pad_packed_sequence(out, total_length=x.size(0))
        return out, (tuple(new) if self.paired else (new,))


def _torch_rnn(cfg: ModelConfig) -> nn.Module:
    return TORCH_RNNS[cfg.cell](
        input_size=cfg.embedding_dim,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        # nn.* applies this dropout between layers only, never after the last one.
        dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
    )


class LanguageModel(nn.Module):
    """Token ids (T, B) -> hidden states (T, B, H); `output` turns those into losses."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        # padding_idx=0: the <pad> row stays zero and never receives gradient.
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim, padding_idx=0)
        if cfg.freeze_embeddings:
            self.embedding.weight.requires_grad_(False)
        # The hand-built stack only when a feature nn.* lacks is asked for (models/cells.py).
        self.rnn = CustomRecurrent(cfg) if needs_custom_stack(cfg) else TorchRecurrent(cfg)
        init_recurrent(self.rnn, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = build_output(cfg, vocab_size)
        if cfg.tie_weights:
            # Press & Wolf 2017, Inan et al. 2017: one matrix for input and output embeddings.
            self.output.decoder.weight = self.embedding.weight
        widths = state_widths(cfg)
        masks = mask_parts(cfg)
        # The state's parts: h (and c, ...), then the dropout masks drawn once per sequence.
        self._state_widths = widths[: len(widths) - masks]
        self._mask_widths = widths[len(widths) - masks :]
        self.initial_state = (
            LearnedInitialState(cfg, self._state_widths) if cfg.learn_initial_state else None
        )

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero (or learned, model.learn_initial_state) state at the start of every sequence,
        and its dropout masks not drawn yet (the first training forward draws them)."""
        device = device or self.embedding.weight.device
        n = self.cfg.num_layers
        if self.initial_state is not None:
            state = self.initial_state(batch_size)
        else:
            state = tuple(torch.zeros(n, batch_size, w, device=device) for w in self._state_widths)
        return state + self._undrawn(batch_size, state[0].device)

    def _undrawn(self, batch_size: int, device: torch.device) -> State:
        n = self.cfg.num_layers
        return tuple(
            torch.full((n, batch_size, w), UNDRAWN, device=device) for w in self._mask_widths
        )

    def new_masks(self, state: State) -> State:
        """`state` with its dropout masks undrawn, so that the next training forward draws new
        ones: stream mode's rule, one mask per window (a stream is one endless sequence)."""
        if not self._mask_widths:
            return state
        kept = len(self._state_widths)
        return state[:kept] + self._undrawn(state[0].size(1), state[0].device)

    def with_masks(self, state: State) -> State:
        """A carried state of an older lmtrain, saved without its dropout masks, with them
        undrawn (each sequence in flight draws one at its next window); any other as it is."""
        if not self._mask_widths or len(state) != len(self._state_widths) or state[0].dim() != 3:
            return state
        return tuple(state) + self._undrawn(state[0].size(1), state[0].device)

    def forward(
        self, inputs: torch.Tensor, state: State, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """inputs (T, B) -> hidden (T, B, H) after dropout, and the final state.

        `lengths` (B,) marks rows shorter than T (padding after them); see TorchRecurrent.
        """
        hidden, new_state, _ = self.features(inputs, state, lengths)
        return hidden, new_state

    def features(
        self, inputs: torch.Tensor, state: State, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """As `forward`, plus the last layer's output (T, B, H) before dropout.

        Training's temporal activation regularisation (TAR) penalises that undropped output, so
        it is returned to the caller rather than kept on the model, where it would hold the
        step's graph alive until the next forward.
        """
        emb = embedding_dropout(self.embedding, inputs, self.cfg.embedding_dropout, self.training)
        x = self.dropout(emb)  # (T, B, E)
        out, new_state = self.rnn(x, state, lengths)  # (T, B, H)
        return self.dropout(out), new_state, out


def build_output(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """The output layer the config asks for; all share `nll`, `token_nll` and `log_probs`.

    The adaptive softmax's cutoffs follow the vocabulary (AdaptiveSoftmaxConfig.cutoffs_for):
    a recipe's cutoffs that a smaller vocabulary cannot hold are dropped, rather than failing.
    """
    a = cfg.adaptive_softmax
    cutoffs = a.cutoffs_for(vocab_size)
    if cutoffs:
        return AdaptiveSoftmaxOutput(cfg.hidden_size, vocab_size, cutoffs, a.div_value)
    return SoftmaxOutput(cfg.hidden_size, vocab_size)


def build_model(cfg: ModelConfig, vocab_size: int) -> LanguageModel:
    return LanguageModel(cfg, vocab_size)
