"""The linear scan h_t = a_t h_{t-1} + b_t against a plain float64 loop: values, the gradients of
a, b and h_0, both ways of running it, and 2,048-step windows whose gate products under- and
overflow a cumulative-product formula."""

from __future__ import annotations

import pytest
import torch

from lmtrain.models.scan import LinearScan, default_method, linear_scan

METHODS = ["sequential", "doubling"]


def reference(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The recurrence as written, one step at a time."""
    h, out = h0, []
    for t in range(a.size(0)):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out)


def inputs(steps: int, low: float, high: float, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(steps)
    a = low + (high - low) * torch.rand(steps, 3, 5, generator=gen, dtype=dtype)
    b = torch.randn(steps, 3, 5, generator=gen, dtype=dtype)  # signed, as QRNN's candidates
    h0 = torch.randn(3, 5, generator=gen, dtype=dtype)
    return a, b, h0


def values_and_grads(fn, a, b, h0):
    a, b, h0 = (t.detach().clone().requires_grad_() for t in (a, b, h0))
    h = fn(a, b, h0)
    weights = torch.linspace(-1, 2, h.numel(), dtype=h.dtype).view_as(h)
    (h * weights).sum().backward()
    return h.detach(), a.grad, b.grad, h0.grad


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 64])
def test_scan_equals_the_loop_with_every_gradient(method: str, steps: int) -> None:
    a, b, h0 = inputs(steps, 0.0, 1.5)
    got = values_and_grads(lambda *x: linear_scan(*x, method=method), a, b, h0)
    want = values_and_grads(reference, a, b, h0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_scan_passes_gradcheck(method: str) -> None:
    a, b, h0 = (t.requires_grad_() for t in inputs(6, 0.1, 0.9))
    assert torch.autograd.gradcheck(lambda *x: LinearScan.apply(*x, method), (a, b, h0))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("low", "high"), [(0.999, 1.0), (0.0, 0.002)], ids=["near1", "near0"])
def test_a_2048_step_window_stays_exact(method: str, low: float, high: float) -> None:
    a, b, h0 = inputs(2048, low, high)
    prod = a.cumprod(0)
    # gates near 1 keep h_0 alive for the whole window; near 0 their running product underflows
    # (to exactly 0 in float32 within a few dozen steps), so dividing by it is no way to scan
    assert (prod[-1] > 0.1).all() if low > 0.5 else (prod[-1] == 0).all()
    got = values_and_grads(lambda *x: linear_scan(*x, method=method), a, b, h0)
    want = values_and_grads(reference, a, b, h0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
    # and in float32, as training runs it: no under- or overflow, float32's rounding only
    # (relative to each tensor's size: an entry near zero may be the difference of large sums)
    got32 = values_and_grads(
        lambda *x: linear_scan(*x, method=method), *(t.float() for t in (a, b, h0))
    )
    for g, w in zip(got32, want, strict=True):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        assert (g.double() - w).norm() <= 1e-5 * w.norm()


def test_the_default_method_is_the_sequential_scan_on_a_cpu() -> None:
    assert default_method(torch.device("cpu")) == "sequential"
    assert default_method(torch.device("cuda")) == "doubling"
