"""The LSTM (optionally layer-normalised) recurrence with a hand-written backward pass.

Why: in the eager step loop autograd records about a dozen nodes per step and replays them one
by one; on a CPU that bookkeeping, not the arithmetic, is what makes a Python-loop LSTM slower
than nn.LSTM. Here the forward loop runs without recording anything and keeps only what the
backward needs (gates, cell states, layer-norm statistics); the backward loop then computes the
per-step gradients with a few fused element-wise ops and one matmul, and the weight gradient as
one matmul over all steps. The input projection (and its layer norm) stays outside, in autograd.

Gate order i, f, g, o as nn.LSTM. With layer norm (Ba et al. 2016):

    pre_t = xw_t + LN(W_hh h_{t-1}; gamma_hh)      c_t = f c_{t-1} + i (g * drop)
    h_t   = o tanh(LN(c_t; gamma_c, beta_c))

Rows past their length (mask 0) keep h and c and output zero, as packed nn.LSTM does.
"""

from __future__ import annotations

from typing import Any

import torch

_EPS = 1e-5


def _ln(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v - mean) * rstd over the last dim, and rstd (B, 1)."""
    # One fused kernel that also returns the statistics the backward needs, instead of the
    # four ops of var_mean, rsqrt, subtract and multiply.
    v_hat, _, rstd = torch.native_layer_norm(v, [v.size(-1)], None, None, _EPS)
    return v_hat, rstd


def _ln_backward(dy_hat: torch.Tensor, v_hat: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """Gradient through (v - mean) * rstd, given the gradient of its output."""
    return rstd * (
        dy_hat - dy_hat.mean(-1, keepdim=True) - v_hat * (dy_hat * v_hat).mean(-1, keepdim=True)
    )


class FusedLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        xw: torch.Tensor,  # (T, B, 4H): input projection plus both biases
        h0: torch.Tensor,  # (B, H)
        c0: torch.Tensor,  # (B, H)
        weight_hh: torch.Tensor,  # (4H, H)
        gamma_hh: torch.Tensor | None,  # (4H,) layer-norm gain of W_hh h, or None: no layer norm
        gamma_c: torch.Tensor | None,  # (H,)
        beta_c: torch.Tensor | None,  # (H,)
        drop: torch.Tensor | None,  # (B, H) recurrent-dropout mask on g, or None
        mask: torch.Tensor | None,  # (T, B, 1) float, or None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        steps = xw.size(0)
        hsize = h0.size(1)
        ln = gamma_hh is not None
        hs = xw.new_empty(steps + 1, *h0.shape)
        cs = xw.new_empty(steps + 1, *c0.shape)
        acts = xw.new_empty(xw.shape)  # sigmoid(i, f, o) and tanh(g)
        tcs = xw.new_empty(steps, *h0.shape)  # tanh of the (normalised) cell
        out = xw.new_empty(steps, *h0.shape) if mask is not None else None
        if ln:
            hw_hats = xw.new_empty(xw.shape)
            hw_rstd = xw.new_empty(steps, h0.size(0), 1)
            c_hats = xw.new_empty(steps, *h0.shape)
            c_rstd = xw.new_empty(steps, h0.size(0), 1)
        hs[0], cs[0] = h0, c0
        wt = weight_hh.t()
        for t in range(steps):
            h, c = hs[t], cs[t]
            if ln:
                hw_hat, rstd = _ln(h @ wt)
                hw_hats[t], hw_rstd[t] = hw_hat, rstd
                pre = torch.addcmul(xw[t], hw_hat, gamma_hh)
            else:
                pre = torch.addmm(xw[t], h, wt)
            a = acts[t]
            torch.sigmoid(pre, out=a)
            torch.tanh(pre[:, 2 * hsize : 3 * hsize], out=a[:, 2 * hsize : 3 * hsize])
            i, f, g, o = a.chunk(4, 1)
            gd = g if drop is None else g * drop
            # Without a mask the new states are written straight into their buffers: each
            # saved copy is one more kernel launch per step, which is what costs here.
            c_new = torch.addcmul(f * c, i, gd, out=cs[t + 1] if mask is None else None)
            tc = tcs[t]
            if ln:
                c_hat, rstd = _ln(c_new)
                c_hats[t], c_rstd[t] = c_hat, rstd
                torch.tanh(torch.addcmul(beta_c, c_hat, gamma_c), out=tc)
            else:
                torch.tanh(c_new, out=tc)
            if mask is None:
                torch.mul(o, tc, out=hs[t + 1])
            else:
                h_new = o * tc
                m = mask[t]
                out[t] = h_new * m
                hs[t + 1] = torch.lerp(h, h_new, m)
                cs[t + 1] = torch.lerp(c, c_new, m)
        saved = [hs, cs, acts, tcs, weight_hh, drop, mask]
        if ln:
            saved += [hw_hats, hw_rstd, c_hats, c_rstd, gamma_hh, gamma_c]
        ctx.ln = ln
        ctx.save_for_backward(*saved)
        if mask is None:
            out = hs[1:].clone()  # one copy for all steps; hs itself is saved for backward
        return out, hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor, grad_h: torch.Tensor, grad_c: torch.Tensor
    ) -> tuple[Any, ...]:
        hs, cs, acts, tcs, weight_hh, drop, mask, *ln_saved = ctx.saved_tensors
        ln = ctx.ln
        if ln:
            hw_hats, hw_rstd, c_hats, c_rstd, gamma_hh, gamma_c = ln_saved
            d_gamma_c = torch.zeros_like(gamma_c)
            d_beta_c = torch.zeros_like(gamma_c)
        steps = acts.size(0)
        d_pre = torch.empty_like(acts)  # dL/d pre_t, which is also dL/d xw_t
        d_hw_hat = torch.empty_like(acts) if ln else None
        dh, dc = grad_h.clone(), grad_c.clone()
        # The gate derivatives, for all steps at once: dL/d pre_t of gates i, f, g is dL/dc_t
        # times a factor known from the forward pass, and of gate o dL/dh_t times one. In the
        # loop each step then needs two multiplications instead of a dozen small kernels.
        hsize = acts.size(2) // 4
        a_i, a_f, a_g, a_o = acts.chunk(4, 2)
        factors = torch.empty_like(acts)
        f_i, f_f, f_g, f_o = factors.chunk(4, 2)
        g_drop = a_g if drop is None else a_g * drop
        i_drop = a_i if drop is None else a_i * drop
        torch.mul(g_drop, a_i * (1 - a_i), out=f_i)
        torch.mul(cs[:-1], a_f * (1 - a_f), out=f_f)
        torch.mul(i_drop, 1 - a_g * a_g, out=f_g)
        torch.mul(tcs, a_o * (1 - a_o), out=f_o)
        batch = acts.size(1)
        for t in range(steps - 1, -1, -1):
            f, o = a_f[t], a_o[t]
            if mask is None:
                dh_new, dc_new = dh + grad_out[t], dc
            else:
                m = mask[t]
                dh_new, dc_new = (dh + grad_out[t]) * m, dc * m
            tc = tcs[t]
            d_tc = dh_new * o
            d_pre_tc = d_tc * (1 - tc * tc)  # through tanh
            if ln:
                d_gamma_c += (d_pre_tc * c_hats[t]).sum(0)
                d_beta_c += d_pre_tc.sum(0)
                dc_new = dc_new + _ln_backward(d_pre_tc * gamma_c, c_hats[t], c_rstd[t])
            else:
                dc_new = dc_new + d_pre_tc
            dp = d_pre[t]
            torch.mul(
                dc_new.unsqueeze(1),
                factors[t, :, : 3 * hsize].view(batch, 3, hsize),
                out=dp[:, : 3 * hsize].view(batch, 3, hsize),
            )
            torch.mul(dh_new, f_o[t], out=dp[:, 3 * hsize :])
            if ln:
                d_hw_hat[t] = dp * gamma_hh
                d_hw = _ln_backward(d_hw_hat[t], hw_hats[t], hw_rstd[t])
            else:
                d_hw = dp
            dh_prev = d_hw @ weight_hh
            dc_prev = dc_new * f
            if mask is not None:
                dh_prev = dh_prev + dh * (1 - m)
                dc_prev = dc_prev + dc * (1 - m)
            dh, dc = dh_prev, dc_prev
            if ln:
                d_hw_hat[t] = d_hw  # reuse the buffer: now dL/d(W_hh h_{t-1})
        flat = (steps * acts.size(1), -1)
        d_rec = d_hw_hat if ln else d_pre  # dL/d(W_hh h_{t-1}) for every t
        d_weight = d_rec.reshape(flat).t() @ hs[:-1].reshape(flat)
        d_gamma_hh = (d_pre * hw_hats).sum((0, 1)) if ln else None
        if not ln:
            return d_pre, dh, dc, d_weight, None, None, None, None, None
        return d_pre, dh, dc, d_weight, d_gamma_hh, d_gamma_c, d_beta_c, None, None
