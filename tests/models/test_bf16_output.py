"""The fused output loss with bf16 products equals the plain fp32 computation within bf16 precision.

bf16 keeps 8 significant bits (a relative rounding step of 2**-8 = 0.4%): the tolerances below
are a few such steps, far looser than the fp32 path's (tests/models/test_output.py) and far
tighter than any error that changes training (a wrong sign, a missed target, a lost factor).
"""

from __future__ import annotations

import pytest
import torch

from lmtrain.models.output import SoftmaxOutput, Workspace, fused_linear_cross_entropy
from tests.models.test_output import _reference  # the plain float64 computation

BF16 = torch.bfloat16
LOSS_RTOL = 4e-3  # one bf16 rounding step


def _inputs(n: int, h: int, v: int, bias: bool, seed: int = 0, pad_every: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=g) * 0.5).requires_grad_() if bias else None
    targets = torch.randint(1, v, (n,), generator=g)
    if pad_every:
        targets[::pad_every] = 0
    return hidden, weight, b, targets


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within bf16 precision, measured against the gradient's scale."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=2e-2, atol=1e-2 * scale)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block", [1 << 25, 7 * 50, 3 * 50])  # one block; 7 rows; 3 rows
@pytest.mark.parametrize("pad_every", [0, 3])
@pytest.mark.parametrize("slab", [1024, 16, 7])  # one slab; 4 slabs, the last of 2 words; 8
def test_bf16_loss_and_gradients_equal_plain_fp32(bias: bool, block: int, pad_every: int, slab):
    hidden, weight, b, targets = _inputs(20, 8, 50, bias, pad_every=pad_every)
    ref_loss, ref_h, ref_w, ref_b = _reference(hidden, weight, b, targets)
    loss = fused_linear_cross_entropy(
        hidden, weight, b, targets, Workspace(), block, slab, products=BF16
    )
    (loss * 0.37).backward()  # a scale other than 1: backward applies the incoming gradient
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss, rel=LOSS_RTOL)
    # fp32 gradients for fp32 master weights: the optimiser never sees bf16.
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    _close(hidden.grad, 0.37 * ref_h)
    _close(weight.grad, 0.37 * ref_w)
    if bias:
        assert b.grad.dtype == torch.float32
        _close(b.grad, 0.37 * ref_b)
    if pad_every:
        assert hidden.grad[::pad_every].abs().max().item() == 0.0


def test_bf16_products_really_run_in_bf16():
    # Close to fp32 but not bit-identical; an fp32 fallback would pass the equality test above.
    hidden, weight, b, targets = _inputs(20, 8, 50, bias=True)
    fp32 = fused_linear_cross_entropy(hidden, weight, b, targets).item()
    bf16 = fused_linear_cross_entropy(hidden, weight, b, targets, products=BF16).item()
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=LOSS_RTOL)


def test_bf16_confident_predictions_keep_their_small_gradients():
    # A target at probability ~0.999: d loss / d logit = p - 1 ~ -1e-3. Subtracting the one-hot
    # from a rounded bf16 product would leave mostly rounding error; the gradient is formed
    # in fp32 before rounding, so its relative error stays at bf16's.
    hidden = torch.tensor([[1.0, 0.5]], requires_grad=True)
    weight = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 1.0]], requires_grad=True)
    targets = torch.tensor([1])
    ref = _reference(hidden, weight, None, targets)
    fused_linear_cross_entropy(hidden, weight, None, targets, products=BF16).backward()
    torch.testing.assert_close(weight.grad.double(), ref[2], rtol=2e-2, atol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), ref[1], rtol=2e-2, atol=1e-4)


def test_bf16_padding_only_targets_give_zero_loss_and_gradients():
    hidden, weight, b, targets = _inputs(6, 4, 10, bias=True)
    targets.zero_()
    loss = fused_linear_cross_entropy(hidden, weight, b, targets, products=BF16)
    loss.backward()
    assert loss.item() == 0.0
    for g in (hidden.grad, weight.grad, b.grad):
        assert g.abs().max().item() == 0.0


@pytest.mark.parametrize("slab", [1024, 1])
def test_bf16_extreme_logits_stay_finite(slab: int):
    # The target 200 nats below the best logit (see the fp32 test of the same name).
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[0.0, 0.0], [100.0, 0.0], [-100.0, 0.0]], requires_grad=True)
    targets = torch.tensor([2])
    loss = fused_linear_cross_entropy(
        hidden, weight, None, targets, slab_columns=slab, products=BF16
    )
    assert loss.item() == pytest.approx(200.0, rel=LOSS_RTOL)
    loss.backward()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


def test_bf16_hidden_states_get_bf16_gradients():
    # Under autocast a recurrent layer hands bf16 states to the loss: their gradient goes back
    # in bf16, the weight's stays fp32.
    hidden, weight, b, targets = _inputs(12, 6, 30, bias=True, pad_every=4)
    ref = _reference(hidden, weight, b, targets)
    low = hidden.detach().to(BF16).requires_grad_()
    loss = fused_linear_cross_entropy(low, weight, b, targets, products=BF16)
    loss.backward()
    assert low.grad.dtype == BF16 and weight.grad.dtype == b.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(ref[0], rel=LOSS_RTOL)
    _close(low.grad.float(), ref[1])
    _close(weight.grad, ref[2])


def test_tied_weights_under_bf16_autocast_match_plain_fp32():
    # Tied: the decoder weight is the embedding's; its fp32 gradient sums both uses.
    torch.manual_seed(0)
    vocab, dim = 30, 6
    out = SoftmaxOutput(dim, vocab)
    emb = torch.nn.Embedding(vocab, dim, padding_idx=0)
    out.decoder.weight = emb.weight
    ids = torch.randint(1, vocab, (12,))
    targets = torch.randint(0, vocab, (12,))
    targets[::5] = 0

    def run(fused: bool, autocast: bool):
        out.fused = fused
        emb.zero_grad(set_to_none=True)
        out.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=BF16, enabled=autocast):
            hidden = torch.tanh(emb(ids))  # (N, H)
            loss = out.nll(hidden, targets)
        loss.backward()
        return loss, emb.weight.grad.clone(), out.decoder.bias.grad.clone()

    plain, bf16 = run(fused=False, autocast=False), run(fused=True, autocast=True)
    assert bf16[0].dtype == bf16[1].dtype == bf16[2].dtype == torch.float32
    assert bf16[0].item() == pytest.approx(plain[0].item(), rel=LOSS_RTOL)
    _close(bf16[1], plain[1].double())
    _close(bf16[2], plain[2].double())


def test_nll_under_bf16_autocast_takes_the_bf16_fused_path():
    torch.manual_seed(1)
    out = SoftmaxOutput(8, 40)
    hidden = torch.randn(15, 8)
    targets = torch.randint(0, 40, (15,))
    w, b = out.decoder.weight, out.decoder.bias
    with torch.autocast("cpu", dtype=BF16):
        got = out.nll(hidden, targets)
    direct = fused_linear_cross_entropy(hidden, w, b, targets, products=BF16)
    assert got.item() == direct.item()
    assert got.item() != out.nll(hidden, targets).item()  # outside autocast: the fp32 path


def test_no_grad_bf16_runs_only_the_forward_products():
    hidden, weight, b, targets = _inputs(6, 4, 12, bias=True)
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.no_grad(), torch.profiler.profile(activities=cpu) as prof:
        loss = fused_linear_cross_entropy(hidden, weight, b, targets, slab_columns=5, products=BF16)
    calls = {e.key: e.count for e in prof.key_averages() if e.key == "aten::mm"}
    assert calls == {"aten::mm": 3}  # one per slab; no gradient products
    assert not loss.requires_grad
