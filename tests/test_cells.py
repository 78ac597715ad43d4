"""The recurrent toolbox: custom cells against nn.* and slow references, dropout, leak, init,
residual links, learned initial state and the hand-written BPTT."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lmtrain.config import ModelConfig
from lmtrain.data import StreamBatches, Vocab, read_text
from lmtrain.models import build_model
from lmtrain.models.cells import CustomRecurrent, RecurrentLayer
from lmtrain.models.lm import TorchRecurrent
from lmtrain.models.manual_rnn import ManualRNNFunction
from tests.conftest import tiny_config

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def model_cfg(**kw: object) -> ModelConfig:
    base = {"embedding_dim": 5, "hidden_size": 6, "num_layers": 2}
    return ModelConfig(**{**base, **kw})  # type: ignore[arg-type]


def copy_from_torch(custom: CustomRecurrent, ref: TorchRecurrent) -> None:
    """nn.* stores layer k as weight_ih_lk ...; the custom stack as layers.k.weight_ih."""
    with torch.no_grad():
        for k, layer in enumerate(custom.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, name).copy_(getattr(ref.rnn, f"{name}_l{k}"))


def random_state(cell: str, batch: int, double: bool = False) -> tuple[torch.Tensor, ...]:
    parts = 2 if cell == "lstm" else 1
    dtype = torch.float64 if double else torch.float32
    return tuple(torch.randn(2, batch, 6, dtype=dtype) for _ in range(parts))


def run_both(cell: str, lengths: torch.Tensor | None = None):
    torch.manual_seed(0)
    # residual=True with embedding 5 != hidden 6 only links layer 1 -> 2; leave it off here and
    # force the custom path through the class itself.
    cfg = model_cfg(cell=cell)
    ref = TorchRecurrent(cfg)
    custom = CustomRecurrent(cfg)
    copy_from_torch(custom, ref)
    x = torch.randn(7, 3, 5)
    state = random_state(cell, 3)
    results = []
    for module in (ref, custom):
        xi = x.clone().requires_grad_()
        si = tuple(s.clone().requires_grad_() for s in state)
        out, final = module(xi, si, lengths)
        (out.square().sum() + sum(f.sin().sum() for f in final)).backward()
        grads = [xi.grad, *(s.grad for s in si)] + [p.grad for p in module.parameters()]
        results.append((out, final, grads))
    return results


@pytest.mark.parametrize("cell", CELLS)
def test_custom_cell_matches_torch_outputs_and_gradients(cell: str) -> None:
    (out_r, fin_r, g_r), (out_c, fin_c, g_c) = run_both(cell)
    torch.testing.assert_close(out_c, out_r, atol=1e-5, rtol=1e-5)
    for a, b in zip(fin_c, fin_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(g_c) == len(g_r)
    for a, b in zip(g_c, g_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_lengths_freeze_state_and_zero_outputs_like_packed_torch(cell: str) -> None:
    lengths = torch.tensor([7, 3, 5])
    (out_r, fin_r, g_r), (out_c, fin_c, g_c) = run_both(cell, lengths)
    assert out_c[3:, 1].abs().max() == 0 and out_c[5:, 2].abs().max() == 0
    torch.testing.assert_close(out_c, out_r, atol=1e-5, rtol=1e-5)
    for a, b in zip(list(fin_c) + g_c, list(fin_r) + g_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def slow_layer_norm(
    v: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor | None
) -> torch.Tensor:
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + 1e-5) * gain
    return out if shift is None else out + shift


def slow_ln_reference(layer: RecurrentLayer, cell: str, x: torch.Tensor, state):
    """Ba et al. 2016's equations written step by step, with no precomputation."""
    h = state[0].clone()
    c = state[1].clone() if cell == "lstm" else None
    outs = []
    for t in range(x.size(0)):
        xa = slow_layer_norm(x[t] @ layer.weight_ih.T, layer.ln_ih.weight, None) + layer.bias_ih
        ha = slow_layer_norm(h @ layer.weight_hh.T, layer.ln_hh.weight, None) + layer.bias_hh
        if cell == "lstm":
            i, f, g, o = (xa + ha).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            cn = slow_layer_norm(c, layer.ln_c.weight, layer.ln_c.bias)
            h = torch.sigmoid(o) * torch.tanh(cn)
        elif cell == "gru":
            xr, xz, xn = xa.chunk(3, 1)
            hr, hz, hn = ha.chunk(3, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        else:
            act = torch.tanh if cell == "rnn_tanh" else torch.relu
            h = act(xa + ha)
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_norm_cell_matches_slow_reference(cell: str) -> None:
    torch.manual_seed(1)
    layer = RecurrentLayer(model_cfg(cell=cell, layer_norm=True), 5)
    with torch.no_grad():  # non-trivial gains and shifts, so they are really used
        for p in layer.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(6, 4, 5)
    state = tuple(s[0] for s in random_state(cell, 4))
    out, _ = layer(x, state, None)
    expected = slow_ln_reference(layer, cell, x, state)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # and the normalisation actually changed something compared with the plain cell
    plain = RecurrentLayer(model_cfg(cell=cell), 5)
    plain.load_state_dict(layer.state_dict(), strict=False)
    assert (plain(x, state, None)[0] - out).abs().max() > 1e-2


def test_manual_bptt_passes_gradcheck_in_float64() -> None:
    torch.manual_seed(2)
    d = torch.float64
    x = torch.randn(5, 3, 4, dtype=d, requires_grad=True)
    h0 = torch.randn(3, 6, dtype=d, requires_grad=True)
    u = (torch.randn(6, 4, dtype=d) * 0.5).requires_grad_()
    w = (torch.randn(6, 6, dtype=d) * 0.5).requires_grad_()
    b = torch.randn(6, dtype=d, requires_grad=True)
    assert torch.autograd.gradcheck(ManualRNNFunction.apply, (x, h0, u, w, b, None))
    mask = (torch.arange(5)[:, None] < torch.tensor([5, 2, 4])[None, :]).unsqueeze(-1).to(d)
    assert torch.autograd.gradcheck(ManualRNNFunction.apply, (x, h0, u, w, b, mask))


def test_manual_bptt_matches_autograd_on_a_real_batch(tiny_files, tmp_path: Path) -> None:
    text = read_text(str(tiny_files["train"]), "train")
    vocab = Vocab.build(text, "word")
    batch = next(StreamBatches(vocab.encode(text).ids, 4, 8).batches())
    cfg = tiny_config(tmp_path, tiny_files, "model.cell=rnn_manual")
    torch.manual_seed(3)
    manual = build_model(cfg.model, len(vocab))
    auto = build_model(replace(cfg.model, cell="rnn_tanh"), len(vocab))  # nn.RNN, autograd
    auto.load_state_dict({torch_name(k): v for k, v in manual.state_dict().items()})
    grads = []
    for model in (manual, auto):
        hidden, _ = model(batch.inputs, model.init_state(4))
        model.output.nll(hidden.reshape(-1, 16), batch.targets.reshape(-1)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(grads[0]) == len(grads[1]) == 11
    for k, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][torch_name(k)], atol=1e-5, rtol=1e-4)


def torch_name(k: str) -> str:
    """rnn.layers.1.weight_hh (custom stack) -> rnn.rnn.weight_hh_l1 (nn.RNN)."""
    if k.startswith("rnn.layers."):
        _, _, idx, name = k.split(".")
        return f"rnn.rnn.{name}_l{idx}"
    return k
