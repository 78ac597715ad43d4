"""The fused output loss equals F.linear + F.cross_entropy: value and every gradient."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from conftest import fit_with_losses, tiny_config
from lmtrain.models import lm
from lmtrain.models.output import SoftmaxOutput, Workspace, fused_linear_cross_entropy


def _inputs(n: int, h: int, v: int, bias: bool, seed: int = 0, pad_every: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=g) * 0.5).requires_grad_() if bias else None
    targets = torch.randint(1, v, (n,), generator=g)
    if pad_every:
        targets[::pad_every] = 0
    return hidden, weight, b, targets


def _reference(hidden, weight, bias, targets):
    """The plain computation, in float64 so the comparison measures the fused path's error."""
    h, w = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    b = None if bias is None else bias.detach().double().requires_grad_()
    loss = F.cross_entropy(F.linear(h, w, b), targets, ignore_index=0, reduction="sum")
    loss.backward()
    return loss.item(), h.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block", [1 << 25, 7 * 50, 3 * 50])  # one block; 7 rows; 3 rows
@pytest.mark.parametrize("pad_every", [0, 3])
@pytest.mark.parametrize("slab", [1024, 16, 7])  # one slab; 4 slabs, the last of 2 words; 8
def test_loss_and_gradients_equal_plain_computation(
    bias: bool, block: int, pad_every: int, slab: int
):
    hidden, weight, b, targets = _inputs(20, 8, 50, bias, pad_every=pad_every)
    ref_loss, ref_h, ref_w, ref_b = _reference(hidden, weight, b, targets)
    loss = fused_linear_cross_entropy(hidden, weight, b, targets, Workspace(), block, slab)
    # A scale other than 1 checks that backward applies the incoming gradient.
    (loss * 0.37).backward()
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(hidden.grad.double(), 0.37 * ref_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weight.grad.double(), 0.37 * ref_w, rtol=1e-4, atol=1e-6)
    if bias:
        torch.testing.assert_close(b.grad.double(), 0.37 * ref_b, rtol=1e-4, atol=1e-6)
    if pad_every:
        assert hidden.grad[::pad_every].abs().max().item() == 0.0


def test_padding_only_targets_give_zero_loss_and_gradients():
    hidden, weight, b, targets = _inputs(6, 4, 10, bias=True)
    targets.zero_()
    loss = fused_linear_cross_entropy(hidden, weight, b, targets)
    loss.backward()
    assert loss.item() == 0.0
    assert hidden.grad.abs().max().item() == 0.0
    assert weight.grad.abs().max().item() == 0.0
    assert b.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("slab", [1024, 1])
def test_extreme_logits_stay_finite_and_exact(slab: int):
    # A target 200 nats below the best logit: its probability underflows in fp32, the loss
    # must not (it comes from the log-sum-exp and the target's own logit). With slabs of one
    # word, the slab holding the target has a softmax of exactly 1 and a factor that underflows.
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[0.0, 0.0], [100.0, 0.0], [-100.0, 0.0]], requires_grad=True)
    targets = torch.tensor([2])
    loss = fused_linear_cross_entropy(hidden, weight, None, targets, slab_columns=slab)
    assert loss.item() == pytest.approx(200.0, rel=1e-6)
    loss.backward()
    ref = F.cross_entropy(hidden.detach() @ weight.detach().t(), targets, reduction="sum")
    assert ref.item() == pytest.approx(200.0, rel=1e-6)
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


def test_tied_weights_accumulate_both_gradients():
    # Tied: the decoder weight is also the embedding; its gradient is the sum of both uses.
    torch.manual_seed(0)
    vocab, dim = 30, 6
    out = SoftmaxOutput(dim, vocab)
    emb = torch.nn.Embedding(vocab, dim, padding_idx=0)
    out.decoder.weight = emb.weight
    ids = torch.randint(1, vocab, (12,))
    targets = torch.randint(0, vocab, (12,))

    def run(fused: bool):
        out.fused = fused
        emb.zero_grad(set_to_none=True)
        out.zero_grad(set_to_none=True)
        hidden = torch.tanh(emb(ids))  # (N, H)
        loss = out.nll(hidden, targets)
        loss.backward()
        return loss.item(), emb.weight.grad.clone(), out.decoder.bias.grad.clone()

    plain, fused = run(False), run(True)
    assert fused[0] == pytest.approx(plain[0], rel=1e-5)
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused[2], plain[2], rtol=1e-4, atol=1e-6)


def test_workspace_is_reused_across_steps_and_regrown():
    ws = Workspace()
    hidden, weight, b, targets = _inputs(10, 4, 16, bias=True)
    fused_linear_cross_entropy(hidden, weight, b, targets, ws).backward()
    first = ws.buffer.data_ptr()
    fused_linear_cross_entropy(hidden, weight, b, targets, ws).backward()
    assert ws.buffer.data_ptr() == first and ws.buffer.numel() == 160
    assert ws.get(80, hidden).shape == (80,)
    assert ws.get(640, hidden).shape == (640,) and ws.buffer.numel() == 640


def test_no_grad_evaluation_matches_and_builds_no_graph():
    hidden, weight, b, targets = _inputs(15, 8, 40, bias=True, pad_every=4)
    out = SoftmaxOutput(8, 40)
    with torch.no_grad():
        out.decoder.weight.copy_(weight)
        out.decoder.bias.copy_(b)
        fused = out.nll(hidden, targets)
    ref = _reference(hidden, weight, b, targets)[0]
    assert not fused.requires_grad
    assert fused.item() == pytest.approx(ref, rel=1e-5)


def _product_calls(fn) -> dict[str, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = ("aten::addmm", "aten::addmm_", "aten::mm", "aten::addmv_")
    return {e.key: e.count for e in prof.key_averages() if e.key in names}


def test_no_grad_evaluation_skips_the_gradient_work():
    # With gradients: per slab, the forward product, the two gradient products and the bias
    # one. Under no_grad only the forward products run.
    hidden, weight, b, targets = _inputs(6, 4, 12, bias=True)
    ws = Workspace()
    with torch.no_grad():
        calls = _product_calls(
            lambda: fused_linear_cross_entropy(hidden, weight, b, targets, ws, slab_columns=5)
        )
    assert calls == {"aten::addmm": 3}
    calls = _product_calls(
        lambda: fused_linear_cross_entropy(hidden, weight, b, targets, ws, slab_columns=5)
    )
    assert calls == {"aten::addmm": 3, "aten::mm": 3, "aten::addmm_": 3, "aten::addmv_": 3}


def test_nll_matches_token_nll_sum():
    torch.manual_seed(3)
    out = SoftmaxOutput(5, 25)
    hidden = torch.randn(9, 5)
    targets = torch.tensor([0, 3, 4, 0, 24, 1, 7, 7, 2])
    assert out.nll(hidden, targets).item() == pytest.approx(
        out.token_nll(hidden, targets).sum().item(), rel=1e-5
    )


def test_training_with_fused_loss_follows_the_plain_loss(tmp_path, tiny_files, monkeypatch):
    # The same run twice: per-step training losses and the final validation loss must agree.
    def run(name: str):
        cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=12", f"run.dir={tmp_path / name}")
        result = fit_with_losses(cfg, quiet=True, echo=lambda _: None)
        return result.losses, result.progress.last_val_loss

    fused_losses, fused_val = run("fused")
    monkeypatch.setattr(lm, "SoftmaxOutput", functools.partial(SoftmaxOutput, fused=False))
    plain_losses, plain_val = run("plain")
    assert sorted(fused_losses) == sorted(plain_losses) == list(range(1, 13))
    for step, loss in plain_losses.items():
        assert fused_losses[step] == pytest.approx(loss, rel=1e-4), step
    assert fused_val == pytest.approx(plain_val, rel=1e-4)
