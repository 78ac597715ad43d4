"""qrnn, mingru and minlstm against float64 loops written from the papers' equations: outputs,
final states, the gradient of every parameter, of the input and of the initial state, with a
carried state, padding and 2,048-step windows; the step-by-step form against the parallel one;
their options and the config's refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmtrain.config import config_from_dict
from lmtrain.errors import ConfigError
from lmtrain.models import build_model
from lmtrain.models.cells import CustomRecurrent, layer_class
from lmtrain.models.config import AdaptiveSoftmaxConfig, ModelConfig

D = torch.float64
CELLS = ["qrnn", "mingru", "minlstm"]
VARIANTS = {  # each layer under test: its cell and the settings it is built with
    "qrnn": {"cell": "qrnn"},
    "qrnn_window1": {"cell": "qrnn", "qrnn_window": 1},
    "qrnn_zoneout": {"cell": "qrnn", "zoneout": 0.3},  # in evaluation: f = 1 - 0.7 (1 - f)
    "mingru": {"cell": "mingru"},
    "minlstm": {"cell": "minlstm"},
}


def cfg_of(**kw: object) -> ModelConfig:
    return ModelConfig(**{"embedding_dim": 5, "hidden_size": 6, "num_layers": 2, **kw})  # type: ignore[arg-type]


def g(v: torch.Tensor) -> torch.Tensor:
    """Feng et al.'s g: v + 1/2 for v >= 0, sigmoid(v) otherwise."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def reference(layer, cfg: ModelConfig, x, state, mask):
    """One step at a time, straight from the equations in qrnn.py and minrnn.py."""
    w, bias = layer.weight_ih, layer.bias_ih
    size = x.size(2)
    state = list(state)
    outs = []
    for t in range(x.size(0)):
        if cfg.cell == "qrnn":
            c = state[0]
            taps = x[t] if cfg.qrnn_window == 1 else torch.cat([x[t], state[1][:, :size]], 1)
            z, f, o = (taps @ w.T + bias).chunk(3, 1)
            z, f, o = torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)
            f = 1 - (1 - cfg.zoneout) * (1 - f)  # the expectation of zoneout (no-op at 0)
            c = f * c + (1 - f) * z
            new = [c] if cfg.qrnn_window == 1 else [c, F.pad(x[t], (0, state[1].size(1) - size))]
            out = o * c
        elif cfg.cell == "mingru":
            z, cand = (x[t] @ w.T + bias).chunk(2, 1)
            z = torch.sigmoid(z)
            out = (1 - z) * state[0] + z * g(cand)
            new = [out]
        else:
            f, i, cand = (x[t] @ w.T + bias).chunk(3, 1)
            f, i = torch.sigmoid(f), torch.sigmoid(i)
            out = f / (f + i) * state[0] + i / (f + i) * g(cand)
            new = [out]
        if mask is None:
            state = new
        else:  # a padded step: the state stays, the output is 0
            state = [torch.where(mask[t], n, s) for n, s in zip(new, state, strict=True)]
            out = out * mask[t]
        outs.append(out)
    return torch.stack(outs), tuple(state)


def make_layer(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = cfg_of(**VARIANTS[variant])
    layer = layer_class(cfg.cell)(cfg, 5).to(D).eval()
    with torch.no_grad():  # larger weights than the init, so the gates reach their extremes
        layer.weight_ih.mul_(3)
        layer.bias_ih.normal_()
    state = tuple(torch.randn(3, w, dtype=D) for w in layer.state_widths(cfg))
    return cfg, layer, state


def results(fn, layer, x, state):
    """Outputs, final state and the gradient of every input, state part and parameter."""
    x = x.detach().clone().requires_grad_()
    state = tuple(s.detach().clone().requires_grad_() for s in state)
    layer.zero_grad(set_to_none=True)
    out, final = fn(x, state)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=D).view_as(out).to(out.dtype)).sum()
    loss = loss + sum((f * _weights(f)).sum() for f in final)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state), *(p.grad for p in layer.parameters())]
    return [out.detach(), *(f.detach() for f in final), *grads]


def _weights(t: torch.Tensor) -> torch.Tensor:
    """Fixed random weights of t's shape, the same numbers in every dtype."""
    gen = torch.Generator().manual_seed(123)
    return torch.randn(t.shape, generator=gen, dtype=D).to(t.dtype)


def assert_all_close(got, want, rtol: float = 1e-10, atol: float = 1e-10) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a is not None and b is not None, i
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"[{i}] {m}")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("lengths", [None, [9, 4, 1]], ids=["full", "padded"])
def test_the_parallel_layer_equals_the_step_by_step_equations(variant: str, lengths) -> None:
    cfg, layer, state = make_layer(variant)
    x = torch.randn(9, 3, 5, dtype=D)
    mask = None
    if lengths is not None:
        mask = (torch.arange(9)[:, None] < torch.tensor(lengths)[None, :]).unsqueeze(-1)
    got = results(lambda x, s: layer(x, s, mask), layer, x, state)
    want = results(lambda x, s: reference(layer, cfg, x, s, mask), layer, x, state)
    assert_all_close(got, want)
    if lengths is not None:  # padding is really there: zero outputs and a kept state
        assert got[0][4:, 1].abs().max() == 0 and got[0][1:, 2].abs().max() == 0


# The bias of each block (in gate order) that pins its forget gate: near 1 keeps h_0 alive for
# all 2,048 steps, near 0 makes the running product of the gates underflow within a few steps.
PINNED = {
    "qrnn": lambda near_one: [0.0, 7.0 if near_one else -7.0, 0.0],  # z, f, o
    "mingru": lambda near_one: [-7.0 if near_one else 7.0, 0.0],  # z (a = 1 - z), h~
    "minlstm": lambda near_one: [7.0, -7.0, 0.0] if near_one else [-7.0, 7.0, 0.0],  # f, i, h~
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("near_one", [True, False], ids=["forget_near_1", "forget_near_0"])
def test_a_2048_step_window_equals_the_equations(cell: str, near_one: bool) -> None:
    cfg, layer, state = make_layer(cell)
    with torch.no_grad():
        layer.weight_ih.mul_(0.01)  # the bias decides the gates
        blocks = layer.bias_ih.view(-1, cfg.hidden_size)
        for block, value in zip(blocks, PINNED[cell](near_one), strict=True):
            block.fill_(value)
    x = torch.randn(2048, 3, 5, dtype=D)
    want = results(lambda x, s: reference(layer, cfg, x, s, None), layer, x, state)
    got = results(lambda x, s: layer(x, s, None), layer, x, state)
    assert_all_close(got, want, rtol=1e-9, atol=1e-9)
    # in float32, as training runs: every tensor within float32's rounding of the float64 one
    layer32 = layer.float()
    got32 = results(
        lambda x, s: layer32(x.float(), tuple(p.float() for p in s), None), layer32, x, state
    )
    for a, b in zip(got32, want, strict=True):
        assert torch.isfinite(a).all()
        assert (a.double() - b).norm() <= 1e-4 * b.norm() + 1e-6


@pytest.mark.parametrize("variant", ["qrnn", "qrnn_window1", "mingru", "minlstm"])
def test_the_step_by_step_model_equals_the_parallel_one(variant: str) -> None:
    """Generation reads one token at a time from the carried state: the same numbers as a
    whole window read at once, and a window split in two continues exactly."""
    torch.manual_seed(1)
    cfg = cfg_of(**VARIANTS[variant], num_layers=3, learn_initial_state=True)
    model = build_model(cfg, 30).to(D).eval()
    with torch.no_grad():
        for p in model.initial_state.parameters():  # a non-zero learned start, x_0 included
            p.normal_()
    ids = torch.randint(1, 30, (12, 2))
    whole, whole_state = model(ids, model.init_state(2))
    state, steps = model.init_state(2), []
    for t in range(12):
        out, state = model(ids[t : t + 1], state)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps), whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(state, whole_state, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    first, carried = model(ids[:5], model.init_state(2))
    second, _ = model(ids[5:], carried)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["qrnn", "mingru", "minlstm"])
def test_a_padded_row_ends_in_the_state_of_its_last_token(variant: str) -> None:
    torch.manual_seed(2)
    model = build_model(cfg_of(**VARIANTS[variant]), 30).to(D).eval()
    ids = torch.randint(1, 30, (8, 3))
    lengths = torch.tensor([8, 5, 2])
    out, final = model(ids, model.init_state(3), lengths)
    for row, n in enumerate(lengths.tolist()):
        alone, alone_final = model(ids[:n, row : row + 1], model.init_state(1))
        torch.testing.assert_close(out[:n, row], alone[:, 0], rtol=1e-12, atol=1e-12)
        assert (out[n:, row] == 0).all()
        for a, b in zip(final, alone_final, strict=True):
            torch.testing.assert_close(a[:, row], b[:, 0], rtol=1e-12, atol=1e-12)


def test_qrnn_zoneout_keeps_the_state_of_a_share_of_units_in_training() -> None:
    torch.manual_seed(3)
    cfg = cfg_of(cell="qrnn", hidden_size=64, zoneout=0.4)
    layer = layer_class("qrnn")(cfg, 5)
    with torch.no_grad():
        layer.bias_ih.view(3, 64)[2].fill_(50.0)  # o = 1: the output is c itself
    x, state = torch.randn(30, 8, 5), (torch.randn(8, 64), torch.randn(8, 5))
    out, _ = layer(x, state, None)
    kept = out[1:] == out[:-1]  # c_t = c_{t-1} exactly: the unit was zoned out at step t
    assert 0.3 < kept.double().mean() < 0.5
    assert not torch.equal(kept[0], kept[1])  # a new draw at every step
    layer.eval()  # evaluation: the expectation, the same on every call
    torch.testing.assert_close(layer(x, state, None)[0], layer(x, state, None)[0])


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_drops_input_weights_in_training_only(cell: str) -> None:
    torch.manual_seed(4)
    cfg = cfg_of(cell=cell, weight_drop=0.5)
    dropped, plain = build_model(cfg, 30), build_model(cfg_of(cell=cell), 30)
    plain.load_state_dict(dropped.state_dict())
    ids = torch.randint(1, 30, (6, 3))
    a, _ = dropped(ids, dropped.init_state(3))
    b, _ = dropped(ids, dropped.init_state(3))
    assert not torch.allclose(a, b)  # a new mask each forward
    dropped.eval()
    plain.eval()
    torch.testing.assert_close(
        dropped(ids, dropped.init_state(3))[0], plain(ids, plain.init_state(3))[0]
    )
    # the masks are on the input weights, so the gradient reaches every one of them
    dropped.train()
    dropped(ids, dropped.init_state(3))[0].sum().backward()
    assert all(layer.weight_ih.grad.abs().sum() > 0 for layer in dropped.rnn.layers)


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_autocast_runs_the_scan_in_fp32(cell: str) -> None:
    torch.manual_seed(5)
    model = build_model(cfg_of(cell=cell), 30)
    ids = torch.randint(1, 30, (6, 3))
    ref, ref_state = model(ids, model.init_state(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = model(ids, model.init_state(3))
    assert out.dtype == torch.float32 and all(s.dtype == torch.float32 for s in state)
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)  # bf16's 8-bit mantissa
    assert not torch.equal(out, ref)  # and the matmuls did run in bf16
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------
# The stack: residual, pre-norm and dense links, parameter counts


def test_dense_stack_feeds_each_layer_the_embedding_and_every_output_below() -> None:
    torch.manual_seed(6)
    stack = CustomRecurrent(cfg_of(cell="mingru", num_layers=3, dense=True)).to(D)
    assert [layer.weight_ih.shape[1] for layer in stack.layers] == [5, 11, 17]
    x = torch.randn(4, 2, 5, dtype=D)
    state = (torch.randn(3, 2, 6, dtype=D),)
    out, _ = stack(x, state)
    y0, _ = stack.layers[0](x, (state[0][0],), None)
    y1, _ = stack.layers[1](torch.cat([x, y0], -1), (state[0][1],), None)
    y2, _ = stack.layers[2](torch.cat([x, y0, y1], -1), (state[0][2],), None)
    torch.testing.assert_close(out, y2)


def test_pre_norm_residual_stack_adds_each_input_to_the_layer_of_its_norm() -> None:
    torch.manual_seed(7)
    stack = CustomRecurrent(cfg_of(cell="qrnn", embedding_dim=6, pre_norm=True, residual=True))
    stack = stack.to(D)
    x = torch.randn(4, 2, 6, dtype=D)
    state = (torch.randn(2, 2, 6, dtype=D), torch.randn(2, 2, 6, dtype=D))
    out, _ = stack(x, state)
    y0, _ = stack.layers[0](F.layer_norm(x, (6,)), (state[0][0], state[1][0]), None)
    h0 = y0 + x
    y1, _ = stack.layers[1](F.layer_norm(h0, (6,)), (state[0][1], state[1][1]), None)
    torch.testing.assert_close(out, y1 + h0)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"dense": True, "num_layers": 3},
        {"tie_weights": True, "embedding_dim": 6},
        {"adaptive_softmax": AdaptiveSoftmaxConfig(cutoffs=[5, 20], div_value=2.0)},
    ],
    ids=["plain", "dense", "tied", "adaptive"],
)
def test_the_parameter_count_is_the_built_models(variant: str, extra: dict) -> None:
    cfg = cfg_of(**VARIANTS[variant], **extra)
    model = build_model(cfg, 50)
    assert cfg.parameter_count(50) == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.cell=qrnn", "model.qrnn_window=3"],
            "model.qrnn_window: must be 1 (x_t) or 2 (x_t and x_{t-1}), the width of the QRNN's "
            "convolution over the inputs; got 3",
        ),
        (
            ["model.cell=mingru", "model.qrnn_window=1"],
            "model.qrnn_window: not available with mingru; it applies to qrnn",
        ),
        (["model.zoneout=0.2"], "model.zoneout: not available with lstm; it applies to qrnn"),
        (["model.cell=qrnn", "model.zoneout=1.0"], "model.zoneout: must be in [0, 1), got 1.0"),
        (
            ["model.cell=qrnn", "model.layer_norm=true"],
            "model.layer_norm: not available with qrnn, whose gates read the inputs only; "
            "model.pre_norm normalises each layer's input instead",
        ),
        (
            ["model.cell=minlstm", "model.recurrent_dropout=0.1"],
            "model.recurrent_dropout: not available with minlstm; it applies to rnn_tanh, "
            "rnn_relu, lstm, gru",
        ),
        (
            ["model.cell=mingru", "model.init=orthogonal"],
            "model.init: not available with mingru; it applies to rnn_tanh, rnn_relu, lstm, "
            "gru, rnn_manual",
        ),
        (
            ["model.cell=qrnn", "model.leak=0.5"],
            "model.leak: leaky units are for rnn_tanh and rnn_relu, not qrnn; set model.leak=0 "
            "and model.learn_leak=false, or change model.cell",
        ),
        (
            ["model.cell=qrnn", "model.dense=true", "model.residual=true"],
            "model.dense: a dense stack concatenates each layer's input to its output and "
            "model.residual adds them; set one of them to false",
        ),
        (["model.cell=gru", "model.dense=true", "model.weight_drop=0.5"], "model.dense selects"),
        (["model.cell=qrnn", "model.qrnn_window=two"], "model.qrnn_window: expected an integer"),
    ],
)
def test_the_config_refuses_nonsense_by_name(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, overrides)
    assert any(message in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("cell", CELLS)
def test_the_options_they_take_are_accepted_together(cell: str) -> None:
    qrnn = ["model.zoneout=0.1", "model.qrnn_window=1"] if cell == "qrnn" else []
    cfg = config_from_dict(
        {},
        [
            f"model.cell={cell}",
            "model.weight_drop=0.3",  # their input weights, with the hand-built stack's options
            "model.residual=true",
            "model.pre_norm=true",
            "model.locked_dropout=0.2",
            "model.embedding_dropout=0.1",
            "model.learn_initial_state=true",
            "model.tie_weights=true",
            "model.embedding_dim=256",
            *qrnn,
        ],
    )
    assert cfg.model.cell == cell and isinstance(build_model(cfg.model, 40).rnn, CustomRecurrent)
