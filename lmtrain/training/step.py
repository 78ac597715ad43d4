"""One optimiser step, composed of small pieces that setup chooses once per run.

    forward (under the precision policy) -> mean loss over the global batch's tokens
    -> + activation penalty (AR/TAR, or none) -> backward -> unscale -> clip
    -> NaN guard: apply the update, or skip it and keep the weights

The pieces: `Amp` (lmtrain/runtime/precision.py) for autocast and loss scaling,
`ActivationPenalty` / `NoPenalty`, `Clip`, and the learning rate's window scale (variable-length
BPTT). AR, TAR and the NT-ASGD averaging (lmtrain/training/averaging.py) are the AWD-LSTM
techniques (Merity, Keskar & Socher 2017); weight drop is in lmtrain/models/weight_drop.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from lmtrain.config import TrainConfig
from lmtrain.data import Batch
from lmtrain.models import LanguageModel, State, carried_state, select_rows
from lmtrain.runtime.precision import Amp
from lmtrain.training.optim import LRSchedule


class StepResult(NamedTuple):
    nll: torch.Tensor
    """Summed NLL of this process's window, detached, on the device."""
    grad_norm: torch.Tensor
    """Gradient norm before clipping, on the device."""
    skipped: bool
    """The NaN guard refused the update: the weights are unchanged."""
    state: State | None
    """The recurrent state to carry into this process's next window."""


def activation_penalty(
    dropped: torch.Tensor, raw: torch.Tensor, mask: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """alpha * AR + beta * TAR over the real (mask) positions of one window.

    dropped, raw: (T, B, H) last-layer outputs after and before dropout; mask: (T, B) bool.
    AR = mean of dropped**2 penalises large activations; TAR = mean of (h_t - h_{t-1})**2 on the
    undropped output penalises fast changes of the state (AWD-LSTM eq. 4 and 5, as in their
    code: AR on the dropped output, TAR on the undropped one). Padding never counts, and TAR
    only uses pairs of consecutive real positions.
    """
    h = dropped.size(-1)
    penalty = dropped.new_zeros(())
    if alpha > 0:
        m = mask.unsqueeze(-1).to(dropped.dtype)  # (T, B, 1)
        penalty = penalty + alpha * (dropped.pow(2) * m).sum() / (m.sum() * h).clamp_min(1)
    if beta > 0 and raw.size(0) > 1:
        pair = (mask[1:] & mask[:-1]).unsqueeze(-1).to(raw.dtype)  # (T-1, B, 1)
        step = (raw[1:] - raw[:-1]).pow(2)
        penalty = penalty + beta * (step * pair).sum() / (pair.sum() * h).clamp_min(1)
    return penalty


@dataclass(frozen=True)
class ActivationPenalty:
    """AR/TAR added to the loss (train.ar_alpha, train.tar_beta)."""

    alpha: float
    beta: float

    def __call__(
        self,
        loss: torch.Tensor,
        hidden: torch.Tensor,
        raw: torch.Tensor,
        targets: torch.Tensor,
        share: float,
    ) -> torch.Tensor:
        mask = targets != 0  # (T, B) real positions
        # Each rank's mean penalty, weighted by its token share: AR's global mean exactly;
        # TAR's (a mean over pairs of positions) up to each rank's pairs-per-token.
        return loss + share * activation_penalty(hidden, raw, mask, self.alpha, self.beta)


class NoPenalty:
    def __call__(
        self,
        loss: torch.Tensor,
        hidden: torch.Tensor,
        raw: torch.Tensor,
        targets: torch.Tensor,
        share: float,
    ) -> torch.Tensor:
        return loss


@dataclass(frozen=True)
class Clip:
    """Clipping keeps one exploding-gradient step (common in RNNs) from wrecking the weights."""

    max_norm: float
    max_value: float | None

    def __call__(self, params: list[nn.Parameter]) -> torch.Tensor:
        """Clip in place; the norm measured before clipping, which is what is worth logging."""
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        if self.max_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.max_value)
        return norm


def window_lr_scale(cfg: TrainConfig) -> Callable[[int], float]:
    """The learning rate's factor for a window of L steps: L / bptt with variable-length BPTT
    (AWD-LSTM), so that short windows take proportionally smaller steps; else 1."""
    if cfg.variable_bptt:
        return lambda length: length / cfg.bptt
    return lambda length: 1.0


def mean_loss(nll: torch.Tensor, batch: Batch, world: int) -> tuple[torch.Tensor, float]:
    """(this rank's loss, its token share of the global batch times world).

    Mean NLL per predicted token. DDP averages gradients over ranks, so rank r's loss is
    nll_r * world / global tokens, and the average is the gradient of the global mean. Stream
    shards hold equal counts, where that is nll_r / num_tokens_r.
    """
    if batch.global_tokens is None:
        return nll / batch.num_tokens, 1.0
    return nll * (world / batch.global_tokens), batch.num_tokens * world / batch.global_tokens


@dataclass
class Step:
    """One optimiser step, with the pieces setup chose for this run."""

    model: LanguageModel
    forward_loss: nn.Module
    """model + loss in one forward (DDP-wrapped under torchrun); see runtime/distributed.py."""
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    amp: Amp
    penalty: ActivationPenalty | NoPenalty
    clip: Clip
    lr_scale: Callable[[int], float]
    world: int
    device: torch.device

    def __call__(self, batch: Batch, carried: State | None, step: int) -> StepResult:
        """Optimiser step number `step` (0-based) on one window, from the `carried` state."""
        inputs = batch.inputs.to(self.device, non_blocking=True)  # (T, B)
        targets = batch.targets.to(self.device, non_blocking=True)  # (T, B)
        if batch.carry is None or carried is None:
            state = self.model.init_state(inputs.size(1), self.device)
        else:
            state = select_rows(carried, batch.carry)
            if not batch.continues:
                # A stream's window: recurrent dropout draws its mask anew (one per window),
                # where a sequence of sentences mode keeps its mask until the sequence ends.
                state = self.model.new_masks(state)
        with self.amp.autocast():
            nll, new_state, hidden, raw = self.forward_loss(inputs, targets, state, batch.lengths)
        loss, share = mean_loss(nll, batch, self.world)
        loss = self.penalty(loss, hidden, raw, targets, share)
        lr = self.schedule.lr(step) * self.lr_scale(inputs.size(0))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.amp.backward(loss)
        self.amp.unscale(self.optimizer)  # fp16: clip and measure the true gradients
        grad_norm = self.clip([p for p in self.model.parameters() if p.grad is not None])
        # A NaN/inf loss or gradient would poison every weight (and Adam's moments) for good, so
        # such a step is skipped. Reading the flag is free on CPU; on a GPU it is one
        # device-to-host sync per step (a few microseconds plus draining the queue), the price
        # of never applying a bad update. With fp16, overflowing gradients are the GradScaler's
        # business (it skips the step and lowers the scale), so only the loss is checked here.
        finite = torch.isfinite(nll)
        if self.amp.scaler is None:
            finite = finite & torch.isfinite(grad_norm)
        if not bool(finite):
            self.optimizer.zero_grad(set_to_none=True)
            self.amp.skip()
            # The new state may be non-finite too: the next window starts from the old one.
            return StepResult(nll.detach(), grad_norm.detach(), True, carried)
        self.amp.step(self.optimizer)
        # Truncated BPTT: carry the state's value into the next window, not its graph.
        # (A placeholder's state is nobody's: the rank's next chunk starts fresh.)
        kept = None if batch.placeholder else carried_state(new_state)
        return StepResult(nll.detach(), grad_norm.detach(), False, kept)


def build_step(
    cfg: TrainConfig,
    model: LanguageModel,
    forward_loss: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    amp: Amp,
    world: int,
    device: torch.device,
) -> Step:
    penalty: ActivationPenalty | NoPenalty = NoPenalty()
    if cfg.ar_alpha > 0 or cfg.tar_beta > 0:
        penalty = ActivationPenalty(cfg.ar_alpha, cfg.tar_beta)
    clip = Clip(cfg.clip_grad_norm or math.inf, cfg.clip_grad_value)
    return Step(
        model, forward_loss, optimizer, schedule, amp, penalty, clip, window_lr_scale(cfg),
        world, device,
    )  # fmt: skip
