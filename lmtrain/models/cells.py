"""Hand-built recurrent cells: the lecture's toolbox on top of RNN, LSTM and GRU.

`CustomRecurrent` has the interface of `TorchRecurrent` (lm.py),

    forward(x (T, B, E), state, lengths or None) -> (out (T, B, H), state),

and is chosen only when a feature that nn.RNN/LSTM/GRU cannot express is asked for
(`needs_custom_stack`): layer norm, recurrent dropout, locked dropout, leaky units, residual,
pre-norm or dense links, or a cell torch has no layer for (the hand-written BPTT cell, and qrnn,
mingru and minlstm of qrnn.py and minrnn.py). It stacks layers of the class the cell's row of
CELLS names. With no feature on it computes exactly what nn.* does, with the same parameter
names, shapes, gate order and default initialisation.

Speed: the input projection W_ih x_t (and its layer norm) does not depend on the recurrence, so
it is computed for all T steps in one matmul; each step then does one (B, H) x (H, G*H) matmul
and a few element-wise ops. Eager code, which `python scripts/bench_cells.py` compares with
TorchScript and torch.compile; the LSTM goes further with a hand-written backward
(fused_lstm.py).
"""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmtrain.models.config import CELLS, ModelConfig
from lmtrain.models.fused_lstm import FusedLSTMFunction
from lmtrain.models.parameters import add_rnn_parameters
from lmtrain.models.state import State


def needs_custom_stack(cfg: ModelConfig) -> bool:
    """True when the config asks for something only the hand-built stack can do."""
    return bool(cfg.custom_features())


def layer_class(cell: str) -> type[nn.Module]:
    """The class that runs one layer of `cell` in the hand-built stack (its `CellSpec.layer`)."""
    module, _, name = CELLS[cell].layer.partition(":")
    return getattr(importlib.import_module(module), name)


def state_widths(cfg: ModelConfig) -> tuple[int, ...]:
    """The width of each part of a layer's state (h, or h and c, ...), whichever stack runs it,
    its dropout masks (`mask_parts`) last."""
    return layer_class(cfg.cell).state_widths(cfg)  # type: ignore[attr-defined]


def mask_parts(cfg: ModelConfig) -> int:
    """How many of the last parts of a layer's state are dropout masks drawn once per sequence
    (`Class.mask_parts(cfg)`; 0 for a class without one)."""
    parts = getattr(layer_class(cfg.cell), "mask_parts", None)
    return 0 if parts is None else parts(cfg)


UNDRAWN = -1.0
"""The value of a state's mask part whose mask is not drawn yet: a training forward draws one
for such a row. A drawn mask holds 0 or 1 / (1 - p), never a negative number."""


def length_mask(
    lengths: torch.Tensor | None, steps: int, device: torch.device
) -> torch.Tensor | None:
    """(T, B, 1) bool, True at real tokens; None when every row is full length."""
    if lengths is None:
        return None
    return (torch.arange(steps, device=device)[:, None] < lengths.to(device)[None, :]).unsqueeze(-1)


def sequence_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask of `like`'s shape, scaled by 1/(1-p) so expectations are unchanged."""
    return like.new_empty(like.shape).bernoulli_(1 - p) / (1 - p)


def carried_mask(carried: torch.Tensor, like: torch.Tensor, p: float) -> torch.Tensor:
    """(B, H): each row's carried mask, or a new one (of `like`'s dtype) where it is UNDRAWN.

    A new mask is drawn for every row each time, used or not, so the random numbers a window
    consumes do not depend on which rows start a sequence: a stream, whose masks are undrawn at
    every window, draws exactly what it drew when each forward had a mask of its own.
    """
    fresh = sequence_mask(like, p)
    return torch.where(carried[:, :1] < 0, fresh, carried.to(fresh.dtype))


class RecurrentLayer(nn.Module):
    """One layer of rnn_tanh, rnn_relu, lstm or gru with optional layer norm, recurrent dropout
    and leak. Parameters are named and laid out as in nn.RNN/LSTM/GRU (gates i, f, g, o for the
    LSTM; r, z, n for the GRU), so weights copy across one to one.

    With recurrent dropout the layer's state ends with its mask (B, H): Semeniuta et al. 2016
    drop the same units of the candidate update at every step of a sequence, so the mask lives
    as long as the sequence's state. It is drawn at the sequence's first training forward (the
    state's UNDRAWN value) and carried with h (and c) into every further window, and so into
    checkpoints; evaluation leaves it as it is.
    """

    def __init__(self, cfg: ModelConfig, input_size: int) -> None:
        super().__init__()
        self.cell = cfg.cell
        h = cfg.hidden_size
        g = CELLS[cfg.cell].gates * h
        self.hidden_size = h
        add_rnn_parameters(self, g, input_size, h)
        self.layer_norm = cfg.layer_norm
        if cfg.layer_norm:
            # Ba et al. 2016, LN-LSTM (their eq. 20-22): the input and recurrent projections are
            # normalised separately, so LN(W_ih x) is computed for all steps at once; the biases
            # above play the part of LN's shift. The LSTM also normalises c_t before its tanh.
            self.ln_ih = nn.LayerNorm(g, bias=False)
            self.ln_hh = nn.LayerNorm(g, bias=False)
            if cfg.cell == "lstm":
                self.ln_c = nn.LayerNorm(h)
        self.recurrent_dropout = cfg.recurrent_dropout
        self.leak = leak = cfg.resolved_leak()
        if cfg.learn_leak:
            # sigmoid keeps the learned per-unit leak in (0, 1); it starts at `leak`.
            self.leak_logit = nn.Parameter(torch.full((h,), math.log(leak / (1 - leak))))
        else:
            self.leak_logit = None

    @staticmethod
    def state_widths(cfg: ModelConfig) -> tuple[int, ...]:
        """(h, c) for the LSTM, (h,) for the others; then the recurrent dropout's mask."""
        parts = 2 if cfg.cell == "lstm" else 1
        return (cfg.hidden_size,) * (parts + RecurrentLayer.mask_parts(cfg))

    @staticmethod
    def mask_parts(cfg: ModelConfig) -> int:
        """1 with recurrent dropout (its mask, carried with the state), else 0."""
        return int(cfg.recurrent_dropout > 0)

    def forward(
        self, x: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """x (T, B, In), state of (B, H) tensors, mask (T, B, 1) or None -> out (T, B, H), state."""
        if self.recurrent_dropout == 0:
            return self._run(x, state, None, mask)
        *parts, kept = state
        drop = None
        if self.training:
            # One mask per sequence: the carried one, or drawn now where the sequence starts.
            kept = drop = carried_mask(
                kept, x.new_empty(x.size(1), self.hidden_size), self.recurrent_dropout
            )
        out, final = self._run(x, tuple(parts), drop, mask)
        return out, (*final, kept)

    def _run(
        self,
        x: torch.Tensor,
        state: State,
        drop: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State]:
        """The recurrence over h (and c), the candidate update multiplied by `drop` (B, H)."""
        steps = x.size(0)
        xw = F.linear(x, self.weight_ih)  # (T, B, G*H), all steps in one matmul
        if self.layer_norm:
            xw = self.ln_ih(xw)
        # Both biases join the precomputed part, leaving one fewer op in the step loop; not for
        # the GRU, whose b_hn sits inside r * (W_hn h + b_hn).
        xw = xw + (self.bias_ih if self.cell == "gru" else self.bias_ih + self.bias_hh)
        # Semeniuta et al. 2016: `drop` multiplies only the candidate update, so the memory
        # itself is never erased by dropout.
        leak = None
        if self.leak_logit is not None:
            leak = torch.sigmoid(self.leak_logit)
        elif self.leak > 0:
            leak = self.leak
        if self.cell == "lstm":
            return self._lstm(xw, state, drop, mask)
        step = self._gru if self.cell == "gru" else self._rnn
        outs = []
        for t in range(steps):
            new = step(xw[t], state, drop, leak)
            if mask is not None:
                # A row past its length keeps its state and outputs zeros, as packed nn.* does.
                m = mask[t]
                outs.append(new[0] * m)
                state = tuple(torch.where(m, n, s) for n, s in zip(new, state, strict=True))
            else:
                outs.append(new[0])
                state = new
        return torch.stack(outs), state

    def _pre(self, xw: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """All pre-activations of one step: the precomputed input part plus W_hh h."""
        if self.layer_norm:
            return xw + self.ln_hh(F.linear(h, self.weight_hh))
        return torch.addmm(xw, h, self.weight_hh.t())

    def _rnn(
        self, xw: torch.Tensor, state: State, drop: torch.Tensor | None, leak: object
    ) -> State:
        (h,) = state
        a = self._pre(xw, h)
        update = torch.tanh(a) if self.cell == "rnn_tanh" else torch.relu(a)
        if drop is not None:
            update = update * drop
        if leak is not None:
            # Leaky unit: h_t = gamma h_{t-1} + (1 - gamma) update; gamma = 0 is the plain cell.
            update = torch.lerp(update, h, leak)  # type: ignore[arg-type]
        return (update,)

    def _lstm(
        self, xw: torch.Tensor, state: State, drop: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        # The LSTM, the cell most used, runs its whole recurrence in one hand-differentiated
        # Function (fused_lstm.py), which avoids the per-step autograd bookkeeping of the same
        # maths as a step loop (`python scripts/bench_cells.py` compares the two).
        ln = self.layer_norm
        out, h, c = FusedLSTMFunction.apply(
            xw,
            state[0],
            state[1],
            self.weight_hh,
            self.ln_hh.weight if ln else None,
            self.ln_c.weight if ln else None,
            self.ln_c.bias if ln else None,
            drop,
            None if mask is None else mask.to(xw.dtype),
        )
        return out, (h, c)

    def _gru(
        self, xw: torch.Tensor, state: State, drop: torch.Tensor | None, leak: object
    ) -> State:
        (h,) = state
        if self.layer_norm:
            hw = self.ln_hh(F.linear(h, self.weight_hh)) + self.bias_hh
        else:
            hw = torch.addmm(self.bias_hh, h, self.weight_hh.t())  # (B, 3H): r, z, n
        x_r, x_z, x_n = xw.chunk(3, dim=1)
        h_r, h_z, h_n = hw.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(torch.addcmul(x_n, r, h_n))
        if drop is not None:
            n = n * drop
        return (torch.lerp(n, h, z),)  # (1 - z) n + z h, as nn.GRU


class CustomRecurrent(nn.Module):
    """A stack of layers of the cell's class (`CellSpec.layer`: RecurrentLayer, ManualRNNLayer,
    QRNNLayer, ...) with locked dropout, residual links, pre-norm and dense links."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layer = layer_class(cfg.cell)
        sizes = cfg.layer_input_sizes()
        self.layers = nn.ModuleList(layer(cfg, size) for size in sizes)
        self.dropout = nn.Dropout(cfg.dropout)
        # Only with model.pre_norm, so that every other model keeps its parameter names.
        self.norms = nn.ModuleList(nn.LayerNorm(n) for n in sizes) if cfg.pre_norm else None

    def forward(
        self, x: torch.Tensor, state: State, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        mask = length_mask(lengths, x.size(0), x.device)
        locked = self.training and self.cfg.locked_dropout > 0
        finals: list[State] = []
        below = x[:, :, :0]  # with model.dense: the features every layer below was given
        for k, layer in enumerate(self.layers):
            if k > 0:
                x = self.dropout(x)  # between layers only, as nn.* does with `dropout`
            if locked:
                # Gal & Ghahramani 2016, Merity et al. 2018: the same units dropped at every
                # step of the window (one mask per forward: a new one each window, where
                # recurrent dropout's mask lives as long as the sequence).
                x = x * sequence_mask(x[:1], self.cfg.locked_dropout)
            if self.cfg.dense:
                # Bradbury et al. 2017 (after Huang et al. 2016's DenseNet): each layer reads
                # the embedding and the output of every layer below, each dropped once above.
                x = below = torch.cat([below, x], dim=-1)
            # Pre-norm (as in the residual blocks of deep stacks): the layer reads LN(x), while
            # the residual path below carries x itself.
            inp = x if self.norms is None else self.norms[k](x)
            out, final = layer(inp, tuple(s[k] for s in state), mask)
            if self.cfg.residual and out.shape == x.shape:
                # He et al. 2016 / Wu et al. 2016: the identity path lets gradients reach lower
                # layers undiminished.
                out = out + x
                if mask is not None:
                    out = out * mask
            finals.append(final)
            x = out
        if locked:
            x = x * sequence_mask(x[:1], self.cfg.locked_dropout)
        return x, tuple(torch.stack(parts) for parts in zip(*finals, strict=True))


def init_recurrent(module: nn.Module, cfg: ModelConfig) -> None:
    """Apply `model.init` to every recurrent matrix of `module` (nn.* or custom).

    `identity` sets each gate block of W_hh to I and the recurrent biases to zero: with rnn_relu
    this is the IRNN of Le, Jaitly & Hinton 2015. `orthogonal` draws each gate block as a random
    orthogonal matrix (Saxe et al. 2014), whose singular values are all 1. Both are multiplied
    by the gain (`ModelConfig.resolved_init_gain`: model.init_gain, else the init's own): Le et
    al. use "the identity matrix or its scaled version", and later work starts below the exact
    identity (the np-RNN of Talathi & Vartak 2015 has eigenvalues of at most 1). Below 1 an
    IRNN forgets: on a stream, whose state is carried from window to window without end, an
    exact identity with ReLU adds up its inputs for ever and the state (and loss) grows without
    bound, where gamma * I keeps it within 1 / (1 - gamma) of one step's input.
    """
    if cfg.init == "default":
        return
    gates = CELLS[cfg.cell].gates
    h, gain = cfg.hidden_size, cfg.resolved_init_gain()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("weight_hh"):
                continue
            for block in p.view(gates, h, h):
                if cfg.init == "identity":
                    block.copy_(torch.eye(h) * gain)
                else:
                    nn.init.orthogonal_(block, gain=gain)
        if cfg.init == "identity":
            for name, p in module.named_parameters():
                if name.rsplit(".", 1)[-1].startswith(("bias_hh", "bias_ih")):
                    p.zero_()


class LearnedInitialState(nn.Module):
    """h0 (and c0 for the LSTM: each part of the state but the dropout masks) as parameters,
    shared by every sequence."""

    def __init__(self, cfg: ModelConfig, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.states = nn.ParameterList(
            nn.Parameter(torch.zeros(cfg.num_layers, 1, w)) for w in widths
        )

    def forward(self, batch_size: int) -> State:
        return tuple(p.expand(-1, batch_size, -1) for p in self.states)


def embedding_dropout(
    embedding: nn.Embedding, inputs: torch.Tensor, p: float, training: bool
) -> torch.Tensor:
    """Embed `inputs`, dropping whole word types (rows of the matrix) with probability p.

    Gal & Ghahramani 2016 (sec. 4), as used by Merity et al. 2018: every occurrence of a dropped
    word in the batch is zero, so the model cannot lean on any single word's vector.
    """
    if not training or p == 0:
        return embedding(inputs)
    w = embedding.weight
    keep = sequence_mask(w.new_empty(w.size(0), 1), p)
    return F.embedding(inputs, w * keep, padding_idx=embedding.padding_idx)
