"""The recurrent toolbox: custom cells against nn.* and slow references, dropout, leak, init,
residual links, learned initial state and the hand-written BPTT."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from lmtrain.checkpoint import load_model
from lmtrain.config import ModelConfig, config_from_dict
from lmtrain.data import StreamBatches, read_text
from lmtrain.data.tokenizers import Settings, build
from lmtrain.errors import ConfigError
from lmtrain.models import build_model
from lmtrain.models.cells import UNDRAWN, CustomRecurrent, RecurrentLayer, needs_custom_stack
from lmtrain.models.fused_lstm import FusedLSTMFunction
from lmtrain.models.lm import TorchRecurrent
from lmtrain.models.manual_rnn import ManualRNNFunction
from lmtrain.training import fit
from tests.conftest import invoke, tiny_config

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


def random_state(cell: str, batch: int) -> tuple[torch.Tensor, ...]:
    parts = 2 if cell == "lstm" else 1
    return tuple(torch.randn(2, batch, 6) for _ in range(parts))


def run_both(cell: str, lengths: torch.Tensor | None = None):
    torch.manual_seed(0)
    # No feature on: the custom stack is built directly, as the config alone would pick nn.*.
    cfg = model_cfg(cell=cell)
    # rnn_manual computes nn.RNN's tanh recurrence, with its own backward
    ref = TorchRecurrent(replace(cfg, cell="rnn_tanh") if cell == "rnn_manual" else cfg)
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


@pytest.mark.parametrize("cell", [*CELLS, "rnn_manual"])
def test_custom_cell_matches_torch_outputs_and_gradients(cell: str) -> None:
    (out_r, fin_r, g_r), (out_c, fin_c, g_c) = run_both(cell)
    torch.testing.assert_close(out_c, out_r, atol=1e-5, rtol=1e-5)
    for a, b in zip(fin_c, fin_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(g_c) == len(g_r)
    for a, b in zip(g_c, g_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_manual"])
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
    x = torch.randn(6, 4, 5, requires_grad=True)
    state = tuple(s[0].requires_grad_() for s in random_state(cell, 4))
    grads = []
    for fn in (lambda: layer(x, state, None)[0], lambda: slow_ln_reference(layer, cell, x, state)):
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([t.grad.clone() for t in (x, *state, *layer.parameters())])
        for t in (x, *state, *layer.parameters()):
            t.grad = None
        if len(grads) == 1:
            first = out.detach()
    torch.testing.assert_close(first, out.detach(), atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    out = first
    # and the normalisation actually changed something compared with the plain cell
    plain = RecurrentLayer(model_cfg(cell=cell), 5)
    plain.load_state_dict(layer.state_dict(), strict=False)
    assert (plain(x, state, None)[0] - out).abs().max() > 1e-2


@pytest.mark.parametrize("layer_norm", [False, True])
def test_fused_lstm_backward_passes_gradcheck_with_dropout_and_lengths(layer_norm: bool) -> None:
    torch.manual_seed(9)
    d = torch.float64
    h = 3
    args = [
        torch.randn(4, 2, 4 * h, dtype=d),  # xw
        torch.randn(2, h, dtype=d),  # h0
        torch.randn(2, h, dtype=d),  # c0
        torch.randn(4 * h, h, dtype=d) * 0.5,  # weight_hh
    ]
    ln = [torch.randn(4 * h, dtype=d), torch.randn(h, dtype=d), torch.randn(h, dtype=d)]
    args += ln if layer_norm else [None, None, None]
    args = [a.requires_grad_() if a is not None else None for a in args]
    drop = torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]], dtype=d)
    mask = (torch.arange(4)[:, None] < torch.tensor([4, 2])[None, :]).unsqueeze(-1).to(d)
    assert torch.autograd.gradcheck(FusedLSTMFunction.apply, (*args, drop, mask))
    assert torch.autograd.gradcheck(FusedLSTMFunction.apply, (*args, None, None))


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
    vocab = build("word", text, Settings())
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


# ---------------------------------------------------------------------------------------------
# Dropout variants


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_recurrent_dropout_mask_is_constant_over_time_and_off_in_eval(cell: str) -> None:
    torch.manual_seed(4)
    layer = RecurrentLayer(model_cfg(cell=cell, hidden_size=64, recurrent_dropout=0.5), 5)
    x = torch.randn(6, 8, 5)
    zero = tuple(torch.zeros(8, 64) for _ in range(2 if cell == "lstm" else 1))
    undrawn = (torch.full((8, 64), UNDRAWN),)  # the mask part of a state that starts a sequence
    out, _ = layer(x, zero + undrawn, None)
    # From a zero state, a unit whose update is dropped stays exactly 0 at every step.
    dropped = out == 0
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))
    assert 0.3 < dropped[0].float().mean() < 0.7
    assert not torch.equal(dropped[0, 0], dropped[0, 1])  # one mask per sequence, not per batch
    layer.eval()
    plain = RecurrentLayer(model_cfg(cell=cell, hidden_size=64), 5)
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, zero + undrawn, None)[0], plain(x, zero, None)[0])
    if cell == "rnn_tanh":  # kept units are scaled by 1 / (1 - p)
        first = plain(x, zero, None)[0][0]
        torch.testing.assert_close(out[0], first * (~dropped[0]) * 2.0)


def test_locked_dropout_drops_the_same_units_at_every_step() -> None:
    torch.manual_seed(5)
    cfg = model_cfg(cell="lstm", embedding_dim=64, hidden_size=64, locked_dropout=0.5)
    stack = CustomRecurrent(cfg)
    state = tuple(torch.zeros(2, 8, 64) for _ in range(2))
    out, _ = stack(torch.randn(6, 8, 64), state)
    dropped = out == 0
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))
    assert 0.3 < dropped[0].float().mean() < 0.7
    stack.eval()
    plain = CustomRecurrent(model_cfg(cell="lstm", embedding_dim=64, hidden_size=64))
    plain.load_state_dict(stack.state_dict())
    x = torch.randn(6, 8, 64)
    torch.testing.assert_close(stack(x, state)[0], plain(x, state)[0])


def test_embedding_dropout_drops_whole_words_in_training_only() -> None:
    from lmtrain.models.cells import embedding_dropout

    torch.manual_seed(6)
    emb = nn.Embedding(50, 8, padding_idx=0)
    inputs = torch.arange(1, 50).repeat(3).view(-1, 3)  # every word three times
    out = embedding_dropout(emb, inputs, 0.5, training=True)
    zero_rows = (out == 0).all(-1)  # (T, B)
    by_word = {}
    for word, z in zip(inputs.flatten().tolist(), zero_rows.flatten().tolist(), strict=True):
        by_word.setdefault(word, set()).add(z)
    assert all(len(v) == 1 for v in by_word.values())  # all occurrences dropped, or none
    assert 10 < sum(v == {True} for v in by_word.values()) < 40
    kept = ~zero_rows
    torch.testing.assert_close(out[kept], emb(inputs)[kept] * 2.0)
    torch.testing.assert_close(embedding_dropout(emb, inputs, 0.5, training=False), emb(inputs))


# ---------------------------------------------------------------------------------------------
# Leak, residual, init, learned initial state


def test_leak_zero_is_the_plain_cell_and_leak_follows_the_formula() -> None:
    torch.manual_seed(7)
    x = torch.randn(5, 3, 5)
    h0 = (torch.randn(3, 6),)
    plain = RecurrentLayer(model_cfg(cell="rnn_tanh"), 5)
    learned = RecurrentLayer(model_cfg(cell="rnn_tanh", leak=0.5, learn_leak=True), 5)
    learned.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        learned.leak_logit.fill_(-1e4)  # sigmoid -> exactly 0: no leak
    torch.testing.assert_close(learned(x, h0, None)[0], plain(x, h0, None)[0])
    fixed = RecurrentLayer(model_cfg(cell="rnn_tanh", leak=0.9), 5)
    fixed.load_state_dict(plain.state_dict())
    h = h0[0]
    for t in range(5):
        a = x[t] @ plain.weight_ih.T + plain.bias_ih + h @ plain.weight_hh.T + plain.bias_hh
        h = 0.9 * h + 0.1 * torch.tanh(a)
    torch.testing.assert_close(fixed(x, h0, None)[1][0], h)


def test_learned_leak_receives_gradient() -> None:
    layer = RecurrentLayer(model_cfg(cell="rnn_relu", leak=0.3, learn_leak=True), 5)
    out, _ = layer(torch.randn(4, 2, 5), (torch.randn(2, 6),), None)
    out.sum().backward()
    assert layer.leak_logit.grad is not None and layer.leak_logit.grad.abs().sum() > 0
    torch.testing.assert_close(torch.sigmoid(layer.leak_logit), torch.full((6,), 0.3))


def test_residual_stack_adds_each_layers_input() -> None:
    torch.manual_seed(8)
    cfg = model_cfg(cell="gru", embedding_dim=6, residual=True)
    stack = CustomRecurrent(cfg)
    x = torch.randn(4, 3, 6)
    state = (torch.randn(2, 3, 6),)
    out, final = stack(x, state)
    y0, f0 = stack.layers[0](x, (state[0][0],), None)
    y1, f1 = stack.layers[1](y0 + x, (state[0][1],), None)
    torch.testing.assert_close(out, y1 + y0 + x)
    torch.testing.assert_close(final[0], torch.stack([f0[0], f1[0]]))
    # where sizes differ (embedding 5 -> hidden 6) the first layer has no skip link
    narrow = CustomRecurrent(model_cfg(cell="gru", residual=True))
    x5 = torch.randn(4, 3, 5)
    y0, _ = narrow.layers[0](x5, (state[0][0],), None)
    y1, _ = narrow.layers[1](y0, (state[0][1],), None)
    torch.testing.assert_close(narrow(x5, state)[0], y1 + y0)


@pytest.mark.parametrize("extra", [{}, {"layer_norm": True}])
def test_irnn_starts_from_identity(extra: dict) -> None:
    # The exact identity of Le et al. when asked for; the default gain is test_remedies.py's.
    model = build_model(model_cfg(cell="rnn_relu", init="identity", init_gain=1.0, **extra), 20)
    params = dict(model.rnn.named_parameters())
    hh = [v for k, v in params.items() if "weight_hh" in k]
    biases = [v for k, v in params.items() if "bias" in k and "ln_" not in k]
    assert len(hh) == 2 and len(biases) == 4
    for w in hh:
        assert torch.equal(w, torch.eye(6))
    for b in biases:
        assert torch.equal(b, torch.zeros(6))


def test_orthogonal_init_gives_orthogonal_gate_blocks() -> None:
    model = build_model(model_cfg(cell="lstm", init="orthogonal"), 20)
    w = model.rnn.rnn.weight_hh_l1.detach().view(4, 6, 6)
    for block in w:
        torch.testing.assert_close(block @ block.T, torch.eye(6), atol=1e-5, rtol=0)


def test_learned_initial_state_gets_gradient_and_round_trips(tiny_files, tmp_path: Path) -> None:
    model = build_model(model_cfg(cell="lstm", learn_initial_state=True), 20)
    state = model.init_state(3)
    assert [s.shape for s in state] == [torch.Size([2, 3, 6])] * 2
    hidden, _ = model(torch.randint(1, 20, (4, 3)), state)
    model.output.nll(hidden.reshape(-1, 6), torch.randint(1, 20, (12,))).backward()
    assert all(p.grad.abs().sum() > 0 for p in model.initial_state.states)

    # In stream mode only each epoch's first window starts from h0, so that step must move it.
    cfg = tiny_config(
        tmp_path, tiny_files, "model.learn_initial_state=true", "train.lr=0.05", "train.max_steps=3"
    )
    fit(cfg, quiet=True, echo=lambda _: None)
    loaded, _, _ = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    h0, c0 = loaded.init_state(2)
    assert h0.abs().max() > 1e-3 and c0.abs().max() > 1e-3  # trained away from zero, and saved
    assert torch.equal(h0[:, 0], h0[:, 1])  # one learned state for every sequence


def test_plain_configs_keep_the_torch_path() -> None:
    assert not needs_custom_stack(ModelConfig())
    assert not needs_custom_stack(model_cfg(init="identity", learn_initial_state=True))
    assert isinstance(build_model(ModelConfig(embedding_dropout=0.1), 10).rnn, TorchRecurrent)
    for kw in ({"layer_norm": True}, {"residual": True}, {"cell": "rnn_manual"}):
        assert isinstance(build_model(model_cfg(**kw), 10).rnn, CustomRecurrent)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.leak=0.5", "model.leak: leaky units are for rnn_tanh and rnn_relu, not lstm"),
        ("model.recurrent_dropout=1.0", "model.recurrent_dropout: must be in [0, 1), got 1.0"),
        (
            "model.leak=0 model.learn_leak=true",  # alone, learn_leak starts from its own leak
            "model.leak: learn_leak needs a starting leak in (0, 1), got 0.0",
        ),
        ("model.init=eye", "model.init: expected one of 'default', 'orthogonal', 'identity'"),
    ],
)
def test_bad_toolbox_settings_are_refused_by_name(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, override.split())
    assert message in str(e.value)


def test_rnn_manual_refuses_in_cell_features_clearly(tiny_files, tmp_path: Path, cli) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files).to_yaml())
    result = invoke(cli, "fit", path, "model.cell=rnn_manual", "model.layer_norm=true")
    assert result.exit_code == 2
    assert "model.layer_norm: not available with rnn_manual" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Every option trains from the CLI


OPTIONS = {
    "layer_norm": ["model.layer_norm=true"],
    "layer_norm_gru": ["model.layer_norm=true", "model.cell=gru"],
    "recurrent_dropout": ["model.recurrent_dropout=0.2"],
    "locked_dropout": ["model.locked_dropout=0.2"],
    "embedding_dropout": ["model.embedding_dropout=0.1"],
    "leak": ["model.cell=rnn_tanh", "model.leak=0.5"],
    "learn_leak": ["model.cell=rnn_tanh", "model.leak=0.5", "model.learn_leak=true"],
    "orthogonal": ["model.init=orthogonal"],
    "irnn": ["model.cell=rnn_relu", "model.init=identity"],  # its own gain trains at 0.03
    "residual": ["model.residual=true"],
    "learn_initial_state": ["model.learn_initial_state=true"],
    "rnn_manual": ["model.cell=rnn_manual"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_trains_from_the_cli(name: str, tiny_files, tmp_path: Path, cli) -> None:
    from lmtrain.evaluation.stream import evaluate_ids

    # One epoch (23 steps) at a brisk learning rate keeps twelve CLI runs cheap.
    cfg = tiny_config(tmp_path, tiny_files, "train.epochs=1", "train.lr=0.03", *OPTIONS[name])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    # The untrained model, seeded as fit seeds it: its validation loss is where training starts.
    text = read_text(str(tiny_files["train"]), "train")
    vocab = build("word", text, Settings())
    torch.manual_seed(cfg.train.seed)
    start = evaluate_ids(
        build_model(cfg.model, len(vocab)),
        vocab.encode(read_text(str(tiny_files["valid"]), "valid")).ids,
        "word",
    ).loss
    result = invoke(cli, "fit", path)
    assert result.exit_code == 0, result.stderr
    best = float(result.stdout.split("best val loss ")[1].split(";")[0])
    assert best < start - 0.3, (start, best)
    evaluated = invoke(cli, "eval", tmp_path / "run", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    sampled = invoke(cli, "sample", tmp_path / "run", "--max-tokens", "5", "--seed", "0")
    assert sampled.exit_code == 0 and len(sampled.stdout.split()) >= 5
