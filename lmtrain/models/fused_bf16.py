"""The fused output loss with bf16 products: the mixed-precision twin of output.py's fp32 path.

On hardware with bf16 matrix units (AMX or AVX512-BF16 CPUs, recent GPUs) the three big
products of the output layer run at about twice the fp32 rate in bf16. Everything else stays in
fp32, because that is where bf16's 8-bit mantissa would show:

- products in bf16: the logits x W^T, and the gradients G W (hidden) and G^T x (weight), with
  x and W rounded to bf16 once per call. The products accumulate in fp32 inside the kernel.
- in fp32: the logits after the product (the bias is added there), the softmax, every
  log-sum-exp, the loss and its sum, the target logits (N dot products from the fp32 operands),
  the sum of the hidden-state gradient over slabs and of the weight gradient over blocks, and
  the whole bias gradient (a reduction over rows, done from the fp32 probabilities).
- the weight and bias gradients are fp32 tensors for the fp32 master weights: the optimiser
  never sees bf16.

Unlike the fp32 path, the gradient matrix G = f * p - onehot(target) is formed (in fp32, then
rounded once) before the gradient products, rather than applying the one-hot part afterwards:
subtracting two rounded bf16 products that nearly cancel (a confident correct prediction) would
lose the gradient's few significant bits. Forming G costs one pass over each slab, which the
rounding to bf16 needs anyway.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

BF16 = torch.bfloat16


class Bf16LinearCrossEntropy(torch.autograd.Function):
    """Summed NLL of softmax(hidden @ weight.T + bias) at `targets`, 0-targets skipped.

    Same blocks, slabs and per-slab log-sum-exps as the fp32 path (see output.py); `logits` is
    an fp32 buffer of at least rows * V elements and `scratch` a bf16 one of rows * slab.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        logits: torch.Tensor,
        scratch: torch.Tensor,
        rows: int,
        slab: int,
    ) -> torch.Tensor:
        # The dtypes below are chosen by hand; autocast must not re-cast them.
        with torch.autocast(hidden.device.type, enabled=False):
            loss, grads = _forward(
                hidden, weight, bias, targets, logits, scratch, rows, slab,
                ctx.needs_input_grad[:3],  # type: ignore[attr-defined]
            )  # fmt: skip
        ctx.grads = grads  # type: ignore[attr-defined]
        ctx.hidden_dtype = hidden.dtype  # type: ignore[attr-defined]
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        grad_x, grad_w, grad_b = ctx.grads
        del ctx.grads  # let autograd take ownership instead of copying
        if grad_x is not None:
            grad_x = grad_x.mul_(grad_loss).to(ctx.hidden_dtype)
        grad_w = None if grad_w is None else grad_w.mul_(grad_loss)
        grad_b = None if grad_b is None else grad_b.mul_(grad_loss)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    logits: torch.Tensor,
    scratch: torch.Tensor,
    rows: int,
    slab: int,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """The loss (fp32 scalar) and the gradients of hidden, weight and bias (fp32, or None)."""
    n, vocab, dim = hidden.size(0), weight.size(0), weight.size(1)
    f32 = torch.float32
    x32 = hidden.to(f32)
    xb, wb = hidden.to(BF16), weight.to(BF16)  # (N, H), (V, H): rounded once per call
    grad_x = torch.zeros(n, dim, dtype=f32, device=hidden.device) if needs[0] else None
    grad_w = torch.empty_like(weight, dtype=f32) if needs[1] else None
    grad_b = torch.empty_like(bias, dtype=f32) if needs[2] and bias is not None else None
    wanted = grad_x is not None or grad_w is not None or grad_b is not None
    valid = targets != 0
    mask = valid.to(f32)
    target_logit = (x32 * weight[targets].to(f32)).sum(1)  # (N,), fp32 dot products
    if bias is not None:
        target_logit += bias[targets].to(f32)
    lse = torch.empty(n, dtype=f32, device=hidden.device)
    slabs = [(s, min(slab, vocab - s)) for s in range(0, vocab, slab)]
    part_x = xb.new_empty(min(rows, n) if wanted else 0, dim)  # one slab's G W, (R, H)
    part_w = xb.new_empty(min(slab, vocab) if wanted else 0, dim)  # one slab's G^T x, (k, H)
    for start in range(0, n, rows):
        x = xb[start : start + rows]  # (R, H) bf16
        r = x.size(0)
        flat = logits[: r * vocab]
        probs = []  # per slab: the (R, k) fp32 softmax over the slab
        slab_lse = lse.new_empty(len(slabs), r)
        for i, (s, k) in enumerate(slabs):
            zb = scratch[: r * k].view(r, k)
            torch.mm(x, wb[s : s + k].t(), out=zb)
            z = flat[s * r : (s + k) * r].view(r, k)
            if bias is None:
                z.copy_(zb)
            else:
                torch.add(zb, bias[s : s + k], out=z)
            # lse_s = m - log(p_max), as in the fp32 path.
            row_max = z.amax(dim=1)
            torch.softmax(z, dim=1, out=z)
            torch.sub(row_max, z.amax(dim=1).log_(), out=slab_lse[i])
            probs.append(z)
        block_lse = torch.logsumexp(slab_lse, dim=0)
        lse[start : start + r] = block_lse
        if not wanted:
            continue
        factor = slab_lse.sub_(block_lse).exp_().mul_(mask[start : start + r])  # (S, R)
        t = targets[start : start + r]
        hits = valid[start : start + r]
        first = start == 0
        for (s, k), p, f in zip(slabs, probs, factor, strict=True):
            if grad_b is not None:  # fp32, from the fp32 probabilities; one-hot part at the end
                grad_b[s : s + k].addmv_(p.t(), f, beta=0.0 if first else 1.0)
            # G_s = f * p_s - onehot, the one-hot entries computed in fp32 before rounding.
            g = scratch[: r * k].view(r, k)
            torch.mul(p, f.unsqueeze(1), out=g)
            at = (hits & (t >= s) & (t < s + k)).nonzero().squeeze(1)
            cols = t[at] - s
            g[at, cols] = (p[at, cols] * f[at] - 1.0).to(BF16)
            if grad_x is not None:
                torch.mm(g, wb[s : s + k], out=part_x[:r])
                grad_x[start : start + r].add_(part_x[:r])
            if grad_w is not None:
                torch.mm(g.t(), x, out=part_w[:k])
                if first:
                    grad_w[s : s + k].copy_(part_w[:k])
                else:
                    grad_w[s : s + k].add_(part_w[:k])
    loss = torch.where(valid, (lse - target_logit).double(), 0.0).sum().to(f32)
    if grad_b is not None:
        grad_b.index_add_(0, targets, mask, alpha=-1)
    return loss, (grad_x, grad_w, grad_b)
