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

# The fused layer-norm input gradient (one kernel, where the formula written out took eight);
# the gain and bias gradients are summed over all steps at once after the loop instead.
_ln_backward = torch.ops.aten.native_layer_norm_backward.default


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
        # With layer norm, the backward needs each layer norm's input and its statistics. The
        # statistics stay in Python lists (one tensor per step, no copy kernel), and the fused
        # torch.native_layer_norm applies the gain (and the cell's bias) in the same pass.
        hws = xw.new_empty(xw.shape) if ln else None  # W_hh h_{t-1}, before its layer norm
        stats: list[tuple[torch.Tensor, ...]] = []  # (mean_hh, rstd_hh, mean_c, rstd_c) per step
        hs[0], cs[0] = h0, c0
        wt = weight_hh.t()
        pre = torch.empty_like(xw[0])
        pre_g = pre[:, 2 * hsize : 3 * hsize]
        # Every per-step view made once, up front (one unbind each instead of T selects).
        xs, h_l, c_l, a_l, tc_l = (v.unbind(0) for v in (xw, hs, cs, acts, tcs))
        i_l, f_l, g_l, o_l = (v.unbind(0) for v in acts.chunk(4, 2))
        hw_l = hws.unbind(0) if ln else None
        m_l = mask.unbind(0) if mask is not None else None
        for t in range(steps):
            h, c = h_l[t], c_l[t]
            if ln:
                hw = torch.mm(h, wt, out=hw_l[t])
                y, mean_hh, rstd_hh = torch.native_layer_norm(hw, [4 * hsize], gamma_hh, None, _EPS)
                torch.add(xs[t], y, out=pre)
            else:
                torch.addmm(xs[t], h, wt, out=pre)
            torch.sigmoid(pre, out=a_l[t])
            g = torch.tanh(pre_g, out=g_l[t])
            gd = g if drop is None else g * drop
            # Without a mask the new states are written straight into their buffers: each
            # saved copy is one more kernel launch per step, which is what costs here.
            c_new = torch.addcmul(f_l[t] * c, i_l[t], gd, out=c_l[t + 1] if mask is None else None)
            tc = tc_l[t]
            if ln:
                y, mean_c, rstd_c = torch.native_layer_norm(c_new, [hsize], gamma_c, beta_c, _EPS)
                torch.tanh(y, out=tc)
                stats.append((mean_hh, rstd_hh, mean_c, rstd_c))
            else:
                torch.tanh(c_new, out=tc)
            if mask is None:
                torch.mul(o_l[t], tc, out=h_l[t + 1])
            else:
                h_new = o_l[t] * tc
                m = m_l[t]
                out[t] = h_new * m
                hs[t + 1] = torch.lerp(h, h_new, m)
                cs[t + 1] = torch.lerp(c, c_new, m)
                if ln:
                    # The cell's layer norm saw c_new; keep it for the backward.
                    stats[-1] = (*stats[-1], c_new)
        saved = [hs, cs, acts, tcs, weight_hh, drop, mask]
        if ln:
            saved += [hws, gamma_hh, gamma_c, beta_c]
        ctx.ln = ln
        ctx.stats = stats
        ctx.save_for_backward(*saved)
        if mask is None:
            out = hs[1:].clone()  # one copy for all steps; hs itself is saved for backward
        return out, hs[steps].clone(), cs[steps].clone()

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor, grad_h: torch.Tensor, grad_c: torch.Tensor
    ) -> tuple[Any, ...]:
        hs, cs, acts, tcs, weight_hh, drop, mask, *ln_saved = ctx.saved_tensors
        ln, stats = ctx.ln, ctx.stats
        steps = acts.size(0)
        hsize = acts.size(2) // 4
        batch = acts.size(1)
        d_pre = torch.empty_like(acts)  # dL/d pre_t, which is also dL/d xw_t
        dh, dc = grad_h, grad_c
        # The gate derivatives, for all steps at once: dL/d pre_t of gates i, f, g is dL/dc_t
        # times a factor known from the forward pass, and of gate o dL/dh_t times one; dL/d of
        # the cell's tanh input is dL/dh_t times o (1 - tanh^2). In the loop each step then
        # needs a few multiplications instead of a dozen small kernels.
        a_i, a_f, a_g, a_o = acts.chunk(4, 2)
        factors = torch.empty_like(acts)
        f_i, f_f, f_g, f_o = factors.chunk(4, 2)
        g_drop = a_g if drop is None else a_g * drop
        i_drop = a_i if drop is None else a_i * drop
        torch.mul(g_drop, a_i * (1 - a_i), out=f_i)
        torch.mul(cs[:-1], a_f * (1 - a_f), out=f_f)
        torch.mul(i_drop, 1 - a_g * a_g, out=f_g)
        torch.mul(tcs, a_o * (1 - a_o), out=f_o)
        f_tc = a_o * (1 - tcs * tcs)  # (T, B, H)
        if ln:
            hws, gamma_hh, gamma_c, beta_c = ln_saved
            # The fused backward kernels also give each step's gain and bias gradients (summed
            # over the batch in the same pass); they are added up after the loop.
            want_hh = [True, gamma_hh.requires_grad, False]
            want_c = [True, gamma_c.requires_grad, beta_c.requires_grad]
            d_gains: list[tuple[torch.Tensor | None, ...]] = []
        # Without a mask two additions per step fold into the products that precede them:
        # dL/dh_{t-1} = grad_out[t-1] + d_hw W (one addmm), and dL/dc_{t-1} = its own term +
        # dL/dc_t f_t (one addcmul); dc_next, f_next hold dL/dc_t and f_t until then.
        if mask is None:
            dh_new = grad_h + grad_out[steps - 1]
            dc_next, f_next = grad_c, None
        # Per-step views made once (one unbind each instead of T selects per use).
        go_l, ftc_l, fo_l, af_l, c_l = (v.unbind(0) for v in (grad_out, f_tc, f_o, a_f, cs))
        fac3_l = factors[:, :, : 3 * hsize].view(steps, batch, 3, hsize).unbind(0)
        dp3_l = d_pre[:, :, : 3 * hsize].view(steps, batch, 3, hsize).unbind(0)
        dpo_l, dp_l = d_pre[:, :, 3 * hsize :].unbind(0), d_pre.unbind(0)
        m_l = mask.unbind(0) if mask is not None else None
        if ln:
            hw_l = hws.unbind(0)
        d_recs = []  # dL/d(W_hh h_{t-1}), newest step first
        for t in range(steps - 1, -1, -1):
            if mask is not None:
                m = m_l[t]
                dh_new = (dh + go_l[t]) * m
                dc_next, f_next = dc * m, None
            if ln:
                mean_hh, rstd_hh, mean_c, rstd_c, *c_in = stats[t]
                d_y = dh_new * ftc_l[t]
                c_t = c_in[0] if c_in else c_l[t + 1]
                dc_new, d_gamma_c, d_beta_c = _ln_backward(
                    d_y, c_t, [hsize], mean_c, rstd_c, gamma_c, beta_c, want_c
                )
                if f_next is None:
                    dc_new.add_(dc_next)
                else:
                    dc_new.addcmul_(dc_next, f_next)
            else:
                later = dc_next if f_next is None else dc_next * f_next
                dc_new = torch.addcmul(later, dh_new, ftc_l[t])
            torch.mul(dc_new.unsqueeze(1), fac3_l[t], out=dp3_l[t])
            torch.mul(dh_new, fo_l[t], out=dpo_l[t])
            dp = dp_l[t]
            if ln:
                d_hw, d_gamma_hh, _ = _ln_backward(
                    dp, hw_l[t], [4 * hsize], mean_hh, rstd_hh, gamma_hh, None, want_hh
                )
                d_recs.append(d_hw)
                d_gains.append((d_gamma_hh, d_gamma_c, d_beta_c))
            else:
                d_hw = dp
            if mask is None:
                later_h = go_l[t - 1] if t > 0 else None
                dh_new = (
                    d_hw @ weight_hh if later_h is None else torch.addmm(later_h, d_hw, weight_hh)
                )
                dc_next, f_next = dc_new, af_l[t]
            else:
                dh = torch.addcmul(d_hw @ weight_hh, dh, 1 - m)
                dc = torch.addcmul(dc_new * af_l[t], dc, 1 - m)
        if mask is None:
            dh, dc = dh_new, dc_next * f_next
        flat = (steps * batch, -1)
        d_rec = torch.stack(d_recs[::-1]) if ln else d_pre
        d_weight = d_rec.reshape(flat).t() @ hs[:-1].reshape(flat)
        if not ln:
            return d_pre, dh, dc, d_weight, None, None, None, None, None
        d_gamma_hh, d_gamma_c, d_beta_c = (
            torch.stack(parts).sum(0) if parts[0] is not None else None
            for parts in zip(*d_gains, strict=True)
        )
        return d_pre, dh, dc, d_weight, d_gamma_hh, d_gamma_c, d_beta_c, None, None
