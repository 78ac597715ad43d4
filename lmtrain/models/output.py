"""The output layer: hidden states -> next-token distribution, and the loss.

The softmax lives here, not in the model's forward, so that the loss can be computed in whatever
way is cheapest for the layer (a full softmax today; chunked or adaptive variants plug in with
the same two methods) and the full logits matrix is only built where it is needed.

With a large vocabulary the decoder is most of the work (91% of the FLOPs of a 2x200 LSTM over
the 33,278 words of WikiText-2), so `nll` does not go through F.linear + F.cross_entropy. It uses
`fused_linear_cross_entropy`: the loss and the gradients of the hidden states, weight and bias
are computed together in the forward pass, a block of rows at a time, in one workspace that is
reused from step to step. `python scripts/bench_output.py` measures each choice on the reference
shape (N=700 rows, H=200, V=33,278). On a 2-vCPU AMD EPYC with torch 2.13, shared with other
work (so only the ratios, interleaved within one run, mean much):

- the (V, H) weight layout of nn.Linear is the right one: the weight-gradient product G^T x
  into (V, H) took 0.72x the time of x^T G into an (H, V) weight; the forward product is the
  same speed in both layouts.
- writing the logits into a reused buffer (`torch.addmm(..., out=)`) instead of a fresh 93 MB
  tensor from F.linear took 0.83x the time: fresh pages cost page faults.
- the in-place row softmax is one fused pass; exp_() over the same buffer took 1.3x (up to 4x)
  its time and torch.logsumexp 4.9x, so the loss is recovered from the softmax itself (below).
- the bias gradient as a matrix-vector product G^T 1 took 0.6x the time of G.sum(0).
- all together, decoder + loss forward and backward: 0.70x the time of F.linear +
  F.cross_entropy with one block of 700 rows, but 0.95x with blocks of 175 rows.

The technique (never materialise more logits than one block, turn them into gradients in place)
follows "Cut Your Losses in Large-Vocabulary Language Models" (Wijmans et al., 2024) and the
fused linear cross-entropy of Liger-Kernel (2024); this is our own CPU-oriented version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Largest logits block, in elements (128 MB of fp32). A block this size still fits the rows of a
# reference batch (35 x 20 rows x 33,278 words = 23M) in one piece, which measured fastest: the
# big products run at full speed only with many rows, and blocks of 175 rows (to stay in cache)
# took 1.35x the time of one block of 700 (`python scripts/bench_output.py`). Bigger batches go
# in several blocks, so memory stays bounded.
MAX_BLOCK_ELEMENTS = 1 << 25


class Workspace:
    """A logits buffer kept between calls, so that each step reuses the same pages.

    It lives as long as the model and grows to the largest block used (at most
    MAX_BLOCK_ELEMENTS, 128 MB); it is not part of the state_dict.
    """

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def get(self, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """A (rows, cols) view of the buffer, reallocated only when it grows or moves."""
        b = self.buffer
        if b is None or b.numel() < rows * cols or b.device != like.device or b.dtype != like.dtype:
            b = self.buffer = torch.empty(rows * cols, device=like.device, dtype=like.dtype)
        return b[: rows * cols].view(rows, cols)


def _block_rows(n: int, vocab: int, max_elements: int) -> int:
    return max(1, min(n, max_elements // max(vocab, 1)))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed NLL of softmax(hidden @ weight.T + bias) at `targets`, 0-targets skipped.

    Forward does all the work and keeps only the gradients (N x H, V x H, V), never the logits;
    backward scales them by the incoming gradient of the scalar loss.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        workspace: Workspace,
        max_elements: int,
    ) -> torch.Tensor:
        n, vocab = hidden.size(0), weight.size(0)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        need_grad = need_x or need_w or need_b
        grad_x = torch.empty_like(hidden) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.empty_like(bias) if need_b and bias is not None else None
        loss = hidden.new_zeros((), dtype=torch.float64)
        rows = _block_rows(n, vocab, max_elements)
        for start in range(0, n, rows):
            x = hidden[start : start + rows]  # (R, H)
            t = targets[start : start + rows]  # (R,)
            r = x.size(0)
            logits = workspace.get(r, vocab, hidden)  # (R, V)
            if bias is None:
                torch.mm(x, weight.t(), out=logits)
            else:
                torch.addmm(bias, x, weight.t(), out=logits)
            # The loss from the softmax without a separate log-sum-exp pass:
            # nll = lse - z_t and lse = m - log(p_max), where m is the row maximum and p_max the
            # largest probability. p_max >= 1/V never underflows, unlike p_t.
            row_max = logits.amax(dim=1)  # (R,)
            target_logit = logits.gather(1, t.unsqueeze(1)).squeeze(1)  # (R,)
            torch.softmax(logits, dim=1, out=logits)  # in place: logits are now p
            p_max = logits.amax(dim=1)
            valid = t != 0
            row_nll = (row_max - p_max.log() - target_logit).double()
            loss += torch.where(valid, row_nll, 0.0).sum()
            if not need_grad:
                continue
            # d nll / d logits = p - onehot(target). Padding rows must contribute nothing; rather
            # than a pass over the (R, V) block, the mask goes on the small factors: rows of x
            # for the weight, rows of the hidden gradient, and the vector summing the bias.
            logits.scatter_add_(1, t.unsqueeze(1), hidden.new_full((r, 1), -1.0))
            mask = valid.to(hidden.dtype)  # (R,)
            if grad_x is not None:
                gx = grad_x[start : start + r]
                torch.mm(logits, weight, out=gx)
                gx.mul_(mask.unsqueeze(1))
            # The first block writes the weight and bias gradients, later ones add to them.
            beta = 0.0 if start == 0 else 1.0
            if grad_w is not None:
                grad_w.addmm_(logits.t(), x * mask.unsqueeze(1), beta=beta)
            if grad_b is not None:
                grad_b.addmv_(logits.t(), mask, beta=beta)
        ctx.grads = (grad_x, grad_w, grad_b)  # type: ignore[attr-defined]
        return loss.to(hidden.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        grads = ctx.grads
        del ctx.grads  # let autograd take ownership instead of copying
        scaled = tuple(None if g is None else g.mul_(grad_loss) for g in grads)
        return (*scaled, None, None, None)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    workspace: Workspace | None = None,
    max_block_elements: int = MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=0, reduction="sum").

    hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) int64. The same value and
    gradients, computed `max_block_elements // V` rows at a time in `workspace`.
    """
    if not torch.is_grad_enabled():
        # Inside torch.no_grad() autograd still reports the inputs' requires_grad to the
        # Function; detached inputs tell it that no gradient is wanted, so evaluation runs the
        # forward product and softmax only, not the two gradient products.
        hidden, weight = hidden.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    return _FusedLinearCrossEntropy.apply(
        hidden, weight, bias, targets, workspace or Workspace(), max_block_elements
    )


class SoftmaxOutput(nn.Module):
    """A linear decoder over the whole vocabulary followed by a softmax."""

    def __init__(self, in_features: int, vocab_size: int, fused: bool = True) -> None:
        super().__init__()
        self.decoder = nn.Linear(in_features, vocab_size)
        self.fused = fused
        """Compute `nll` with fused_linear_cross_entropy (False: F.linear + F.cross_entropy)."""
        self.workspace = Workspace()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(hidden)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, V) natural-log probabilities."""
        return F.log_softmax(self.logits(hidden).float(), dim=-1)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of `targets` (N,), skipping padding (id 0)."""
        w, b = self.decoder.weight, self.decoder.bias
        # The fused path is written for fp32; reduced-precision hidden states (autocast) take
        # the plain path, which upcasts the logits.
        if self.fused and hidden.dtype == w.dtype == torch.float32:
            return fused_linear_cross_entropy(hidden, w, b, targets, self.workspace)
        logits = self.logits(hidden)
        return F.cross_entropy(logits.float(), targets, ignore_index=0, reduction="sum")

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token NLL (N,), 0 where the target is padding."""
        logits = self.logits(hidden)
        return F.cross_entropy(logits.float(), targets, ignore_index=0, reduction="none")
