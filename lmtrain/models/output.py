"""The output layer: hidden states -> next-token distribution, and the loss.

The softmax lives here, not in the model's forward, so that the loss can be computed in whatever
way is cheapest for the layer (a full softmax today; chunked or adaptive variants plug in with
the same two methods) and the full logits matrix is only built where it is needed.

With a large vocabulary the decoder is most of the work (for a 2x200 LSTM over the 33,278 words
of WikiText-2, nine tenths of the FLOPs), so `nll` does not go through F.linear +
F.cross_entropy. It uses `fused_linear_cross_entropy`: the loss and the gradients of the hidden
states, weight and bias are computed together in the forward pass, a block of rows at a time, in
one workspace that is reused from step to step. The choices, each measured by
`python scripts/bench_output.py` on the reference shape (N=700 rows, H=200, V=33,278):

- the (V, H) weight layout of nn.Linear, whose weight-gradient product G^T x is the quicker of
  the two layouts (the forward product is the same in both).
- the logits written into a reused buffer (`torch.addmm(..., out=)`) rather than a fresh tensor
  from F.linear: fresh pages cost page faults.
- the in-place row softmax, one fused pass; the loss is recovered from the softmax itself
  (below) rather than by a second pass such as exp_() or torch.logsumexp.
- the bias gradient as a matrix-vector product G^T 1 rather than G.sum(0).
- the forward product cut into slabs of words (SLAB_COLUMNS), so that each slab's logits are
  still in cache when its softmax reads them.

The technique (never materialise more logits than one block, turn them into gradients in place)
follows "Cut Your Losses in Large-Vocabulary Language Models" (Wijmans et al., 2024) and the
fused linear cross-entropy of Liger-Kernel (2024); this is our own CPU-oriented version.

Under bf16 autocast (`train.precision: bf16` or `auto`) `nll` runs the same blocks and slabs
with bf16 products and fp32 sums (lmtrain/models/fused_bf16.py). Evaluation runs outside
autocast, so its figures come from this fp32 path whatever the training precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lmtrain.models.fused_bf16 import Bf16LinearCrossEntropy

# Largest logits block, in elements (128 MB of fp32). A block this size still fits the rows of a
# reference batch (35 x 20 rows x 33,278 words = 23M) in one piece: the big products run at full
# speed only with many rows. Bigger batches go in several blocks, so memory stays bounded.
MAX_BLOCK_ELEMENTS = 1 << 25

# Words per slab: a slab's logits (2.8 MB at 700 rows) stay in cache for its softmax; the size
# is the one `python scripts/bench_output.py` finds quickest on the reference shape.
SLAB_COLUMNS = 1024


class Workspace:
    """Logits buffers kept between calls, so that each step reuses the same pages.

    One buffer per dtype (the bf16 path uses an fp32 one and a bf16 one; evaluation shares
    the fp32 one with training). It lives as long as the model and grows to the largest block
    used (at most MAX_BLOCK_ELEMENTS, 128 MB in fp32); it is not part of the state_dict.
    """

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    @property
    def buffer(self) -> torch.Tensor | None:
        """The fp32 buffer, the one the fp32 path uses."""
        return self.buffers.get(torch.float32)

    def get(self, numel: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The first `numel` elements of the buffer of `dtype` (default: like's) on like's device.

        Reallocated only when it grows or moves.
        """
        dtype = like.dtype if dtype is None else dtype
        b = self.buffers.get(dtype)
        if b is None or b.numel() < numel or b.device != like.device:
            b = self.buffers[dtype] = torch.empty(numel, device=like.device, dtype=dtype)
        return b[:numel]


def _block_rows(n: int, vocab: int, max_elements: int) -> int:
    return max(1, min(n, max_elements // max(vocab, 1)))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed NLL of softmax(hidden @ weight.T + bias) at `targets`, 0-targets skipped.

    Forward does all the work and keeps only the gradients (N x H, V x H, V), never the logits;
    backward scales them by the incoming gradient of the scalar loss.

    Within a block of rows the vocabulary is cut into slabs of `slab` columns. Each slab's logits
    z_s are computed, and turned into a softmax over the slab, while they are still in cache; the
    slab's log-sum-exp lse_s is kept. The row's log-sum-exp over all slabs, lse, combines them,
    and the true probabilities are p = p_s * f_s with the per-row factor f_s = exp(lse_s - lse).
    The factor is never applied to the (R, slab) block: it goes on the small operands instead,
    and the one-hot part of d nll / d z = p - onehot(target) is applied to the gradients directly:

        grad_x = sum_s f_s * (p_s @ W_s)      - W[t]
        grad_W_s = p_s^T (f_s * x)            - scatter of x into the target rows
        grad_b_s = p_s^T f_s                  - count of each target
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
        slab: int,
    ) -> torch.Tensor:
        n, vocab = hidden.size(0), weight.size(0)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        grad_x = torch.empty_like(hidden) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.empty_like(bias) if need_b and bias is not None else None
        valid = targets != 0
        mask = valid.to(hidden.dtype)
        # The target logits straight from their rows of W: N dot products, not a gather from
        # the logits. The same rows give the one-hot part of the hidden-state gradient.
        target_rows = weight[targets]  # (N, H)
        target_logit = (hidden * target_rows).sum(1)
        if bias is not None:
            target_logit += bias[targets]
        lse = torch.empty(n, dtype=hidden.dtype, device=hidden.device)
        slabs = [(s, min(slab, vocab - s)) for s in range(0, vocab, slab)]
        rows = _block_rows(n, vocab, max_elements)
        for start in range(0, n, rows):
            x = hidden[start : start + rows]  # (R, H)
            r = x.size(0)
            flat = workspace.get(r * vocab, hidden)
            probs = []  # per slab: the (R, k) softmax over the slab, in the workspace
            slab_lse = hidden.new_empty(len(slabs), r)
            for i, (s, k) in enumerate(slabs):
                z = flat[s * r : (s + k) * r].view(r, k)
                if bias is None:
                    torch.mm(x, weight[s : s + k].t(), out=z)
                else:
                    torch.addmm(bias[s : s + k], x, weight[s : s + k].t(), out=z)
                # lse_s without a separate log-sum-exp pass: with m the row maximum and p_max
                # the largest probability, lse_s = m - log(p_max); p_max >= 1/k never underflows.
                row_max = z.amax(dim=1)
                torch.softmax(z, dim=1, out=z)
                torch.sub(row_max, z.amax(dim=1).log_(), out=slab_lse[i])
                probs.append(z)
            block_lse = torch.logsumexp(slab_lse, dim=0)
            lse[start : start + r] = block_lse
            if grad_x is None and grad_w is None and grad_b is None:
                continue
            factor = slab_lse.sub_(block_lse).exp_().mul_(mask[start : start + r])  # (S, R)
            if grad_x is not None:
                gx = grad_x[start : start + r].zero_()
                part = torch.empty_like(x)
            # The first block writes the weight and bias gradients, later ones add to them.
            beta = 0.0 if start == 0 else 1.0
            for (s, k), p, f in zip(slabs, probs, factor, strict=True):
                f = f.unsqueeze(1)
                if grad_x is not None:
                    torch.mm(p, weight[s : s + k], out=part)
                    gx.addcmul_(part, f)
                if grad_w is not None:
                    grad_w[s : s + k].addmm_(p.t(), x * f, beta=beta)
                if grad_b is not None:
                    grad_b[s : s + k].addmv_(p.t(), f.squeeze(1), beta=beta)
        loss = torch.where(valid, (lse - target_logit).double(), 0.0).sum()
        # The one-hot part of the gradient, for all rows at once.
        if grad_x is not None:
            grad_x.sub_(target_rows * mask.unsqueeze(1))
        if grad_w is not None:
            grad_w.index_add_(0, targets, hidden * mask.unsqueeze(1), alpha=-1)
        if grad_b is not None:
            grad_b.index_add_(0, targets, mask, alpha=-1)
        ctx.grads = (grad_x, grad_w, grad_b)  # type: ignore[attr-defined]
        return loss.to(hidden.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        grads = ctx.grads
        del ctx.grads  # let autograd take ownership instead of copying
        scaled = tuple(None if g is None else g.mul_(grad_loss) for g in grads)
        return (*scaled, None, None, None, None)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    workspace: Workspace | None = None,
    max_block_elements: int = MAX_BLOCK_ELEMENTS,
    slab_columns: int | None = None,
    products: torch.dtype = torch.float32,
) -> torch.Tensor:
    """F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=0, reduction="sum").

    hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) int64. The same value and
    gradients, computed `max_block_elements // V` rows and `slab_columns` words at a time in
    `workspace`. Slabs are a CPU cache measure: by default SLAB_COLUMNS on the CPU and the
    whole vocabulary elsewhere, where each slab would cost a handful of kernel launches.

    `products=torch.bfloat16` runs the three big products in bf16 and the rest in fp32
    (lmtrain/models/fused_bf16.py): equal to the plain computation within bf16's precision,
    with fp32 loss and weight and bias gradients.
    """
    if slab_columns is None:
        slab_columns = SLAB_COLUMNS if hidden.device.type == "cpu" else weight.size(0)
    workspace = workspace or Workspace()
    if not torch.is_grad_enabled():
        # Inside torch.no_grad() autograd still reports the inputs' requires_grad to the
        # Function; detached inputs tell it that no gradient is wanted, so evaluation runs the
        # forward product and softmax only, not the two gradient products.
        hidden, weight = hidden.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    if products == torch.bfloat16:
        vocab = weight.size(0)
        rows = _block_rows(hidden.size(0), vocab, max_block_elements)
        slab = min(slab_columns, vocab)
        logits = workspace.get(rows * vocab, hidden, torch.float32)
        scratch = workspace.get(rows * slab, hidden, torch.bfloat16)
        return Bf16LinearCrossEntropy.apply(
            hidden, weight, bias, targets, logits, scratch, rows, slab
        )
    assert products == torch.float32, f"no fused path with {products} products"
    return _FusedLinearCrossEntropy.apply(
        hidden, weight, bias, targets, workspace, max_block_elements, slab_columns
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
        if self.fused and w.dtype == torch.float32:
            # Under bf16 autocast the fused loss takes bf16 products with fp32 sums; fp16's
            # narrow range would need loss scaling inside it, so fp16 states take the plain
            # path, which upcasts the logits.
            if _autocast_dtype(hidden.device) == torch.bfloat16:
                return fused_linear_cross_entropy(
                    hidden, w, b, targets, self.workspace, products=torch.bfloat16
                )
            if hidden.dtype == torch.float32:
                return fused_linear_cross_entropy(hidden, w, b, targets, self.workspace)
        logits = self.logits(hidden)
        return F.cross_entropy(logits.float(), targets, ignore_index=0, reduction="sum")

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token NLL (N,), 0 where the target is padding."""
        logits = self.logits(hidden)
        return F.cross_entropy(logits.float(), targets, ignore_index=0, reduction="none")


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast casts products to on `device` right now; None when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)
