"""The elementwise linear recurrence h_t = a_t * h_{t-1} + b_t over all T steps of a window.

QRNN's fo-pooling, minGRU and minLSTM are each this recurrence once their gates are known, and
their gates read the inputs only, so every matmul of a layer runs over all T steps at once
(qrnn.py, minrnn.py) and only this elementwise scan remains in time order. `linear_scan` runs it
as one autograd Function whose backward is the same recurrence run backwards:

    g_t      = dL/dh_t + a_{t+1} g_{t+1}        (g_T = dL/dh_T: the gradient reaching h_t)
    dL/db_t  = g_t
    dL/da_t  = g_t h_{t-1}                       (h_0 is the initial state)
    dL/dh_0  = a_1 g_1

so a layer keeps a (the gates) and h (its output) for the backward pass, O(T B H), and autograd
never sees the T steps.

Two ways to run it, each exact for any sign of b and h_0, and neither ever divides (dividing by
a cumulative product of gates, as the closed form h_t = A_t (h_0 + sum_s b_s / A_s) does,
underflows to 0 within a few hundred steps of small gates and overflows after):

- `sequential`: one fused multiply-add per step over (B, H): the fewest operations and passes
  over memory, and the choice on a CPU, where a step costs a few microseconds of dispatch
  (`python scripts/bench_cells.py` times it against the two forms below at 35 to 2,048 steps).
- `doubling` (Hillis and Steele 1986): log2(T) rounds over the whole window, b[k:] += a[k:] *
  b[:-k] and a[k:] *= a[:-k] with k doubling, so the number of kernel launches is logarithmic
  in T: the choice on a GPU, where a launch costs more than the work of one step.

The log-space form of Feng et al. 2024 (a cumulative sum of log a and a logcumsumexp) is not
used: it needs b > 0, which QRNN's signed candidates are not, and its exp and log over every
element are slower than either form above on a CPU.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Method = Literal["sequential", "doubling"]


def default_method(device: torch.device) -> Method:
    """One multiply-add per step on a CPU; log2(T) rounds where each launch is costly (GPU)."""
    return "sequential" if device.type == "cpu" else "doubling"


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, method: Method | None = None
) -> torch.Tensor:
    """a, b (T, B, H) and h0 (B, H) -> h (T, B, H) with h_t = a_t * h_{t-1} + b_t.

    Differentiable in a, b and h0; every tensor in one dtype (the layers run it in fp32 under
    autocast, see parallel.py).
    """
    out = LinearScan.apply(a, b, h0, method or default_method(a.device))
    return out  # type: ignore[no-any-return]


class LinearScan(torch.autograd.Function):
    """h = scan(a, b, h0), with the backward pass written out (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, method: Method
    ) -> torch.Tensor:
        h = _scan(a, b, h0, method)
        ctx.save_for_backward(a, h, h0)
        ctx.method = method
        return h

    @staticmethod
    def backward(ctx: Any, dh: torch.Tensor) -> tuple[Any, ...]:
        a, h, h0 = ctx.saved_tensors
        g = _reverse_scan(a, dh.contiguous(), ctx.method)  # g_t = dh_t + a_{t+1} g_{t+1}
        da = None
        if ctx.needs_input_grad[0]:
            da = torch.empty_like(g)
            torch.mul(g[1:], h[:-1], out=da[1:])
            torch.mul(g[0], h0, out=da[0])
        dh0 = a[0] * g[0] if ctx.needs_input_grad[2] else None
        return da, g, dh0, None


def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, method: Method) -> torch.Tensor:
    if a.size(0) == 0:
        return torch.empty_like(b)
    if method == "sequential":
        out = torch.empty_like(b)
        h = h0
        for a_t, b_t, out_t in zip(a.unbind(0), b.unbind(0), out.unbind(0), strict=True):
            h = torch.addcmul(b_t, a_t, h, out=out_t)
        return out
    return _doubling(a, b, h0)


def _reverse_scan(a: torch.Tensor, dh: torch.Tensor, method: Method) -> torch.Tensor:
    """g with g_{T-1} = dh_{T-1} and g_t = dh_t + a_{t+1} g_{t+1} (0-based steps)."""
    steps = a.size(0)
    if method == "sequential":
        g = torch.empty_like(dh)
        g[steps - 1] = dh[steps - 1]
        a_next, dh_t, g_t = a.unbind(0)[1:], dh.unbind(0)[:-1], g.unbind(0)
        for t in range(steps - 2, -1, -1):
            torch.addcmul(dh_t[t], a_next[t], g_t[t + 1], out=g_t[t])
        return g
    # The same forward scan on the reversed window: coefficient a_{t+1} for step t, none
    # (zero) for the last step, whose gradient is dh_{T-1} alone.
    shifted = torch.cat([a[1:], a.new_zeros(1, *a.shape[1:])])
    return _doubling(shifted.flip(0), dh.flip(0), torch.zeros_like(dh[0])).flip(0)


def _doubling(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Hillis-Steele: after the round with offset k, b_t holds the recurrence from step
    t - 2k + 1 to t (from h0 where that reaches before the window) and a_t the product of
    those steps' coefficients. Two buffers each, written alternately: a round reads the
    values the previous one wrote at other steps, so it cannot update them in place."""
    steps = a.size(0)
    b = b.clone()
    b[0].addcmul_(a[0], h0)  # h0 enters through the first step, which then needs no a
    b_next = torch.empty_like(b)
    a = a.clone()
    a_next = torch.empty_like(a)
    k = 1
    while k < steps:
        torch.addcmul(b[k:], a[k:], b[:-k], out=b_next[k:])
        b_next[:k] = b[:k]
        b, b_next = b_next, b
        if 2 * k < steps:  # the last round needs no products for a later one
            torch.mul(a[k:], a[:-k], out=a_next[k:])
            a_next[:k] = a[:k]
            a, a_next = a_next, a
        k *= 2
    return b
