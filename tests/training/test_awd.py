"""AWD-LSTM options: each changes the computation as documented, trains, and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import fit_with_losses, invoke, tiny_config
from lmtrain.checkpoint import load_checkpoint, load_model
from lmtrain.config import ModelConfig
from lmtrain.data.corpus import read_text
from lmtrain.data.variable_bptt import VariableStreamBatches
from lmtrain.evaluation.stream import stream_nll
from lmtrain.models import build_model
from lmtrain.training import fit
from lmtrain.training.data import prepare_data
from lmtrain.training.step import activation_penalty

QUIET = {"quiet": True, "echo": lambda s: None}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_weight_drop_masks_recurrent_weights_in_training_only(cell: str) -> None:
    cfg = ModelConfig(cell=cell, embedding_dim=8, hidden_size=8, num_layers=2, weight_drop=0.5)
    torch.manual_seed(0)
    model = build_model(cfg, 20)
    plain = build_model(ModelConfig(cell=cell, embedding_dim=8, hidden_size=8, num_layers=2), 20)
    # Same keys, all still registered Parameters: checkpoints and .to() work as without it.
    assert model.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(model.state_dict())
    assert isinstance(model.rnn.rnn.weight_hh_l0, torch.nn.Parameter)
    x = torch.randint(1, 20, (6, 3))
    state = model.init_state(3)
    model.eval(), plain.eval()
    assert torch.equal(model(x, state)[0], plain(x, state)[0])
    model.train(), plain.train()
    out = model(x, state)[0]
    assert not torch.allclose(out, plain(x, state)[0])
    out.sum().backward()
    assert model.rnn.rnn.weight_hh_l1.grad is not None
    assert model.rnn.rnn.weight_hh_l1.grad.abs().sum() > 0
    model.rnn.rnn.flatten_parameters()  # the AWD-LSTM breakage: must not raise
    assert torch.equal(model.eval()(x, state)[0], plain.eval()(x, state)[0])


def test_activation_penalty_by_hand_and_padding_excluded() -> None:
    dropped = torch.tensor([[[1.0, 3.0]], [[2.0, 0.0]], [[9.0, 9.0]]])  # (T=3, B=1, H=2)
    raw = torch.tensor([[[1.0, 1.0]], [[2.0, 3.0]], [[7.0, 7.0]]])
    mask = torch.tensor([[True], [True], [False]])  # the last position is padding
    # AR: (1 + 9 + 4 + 0) / (2 positions * 2 units) = 3.5; TAR: ((1)^2 + (2)^2) / (1 pair * 2) = 2.5
    assert activation_penalty(dropped, raw, mask, 1.0, 0.0).item() == pytest.approx(3.5)
    assert activation_penalty(dropped, raw, mask, 0.0, 1.0).item() == pytest.approx(2.5)
    assert activation_penalty(dropped, raw, mask, 2.0, 3.0).item() == pytest.approx(14.5)
    assert activation_penalty(dropped, raw, mask, 0.0, 0.0).item() == 0.0


def test_ar_tar_change_training(tmp_path: Path, tiny_files) -> None:
    def losses(name: str, *extra: str) -> list[float]:
        cfg = tiny_config(
            tmp_path, tiny_files, f"run.dir={tmp_path / name}", "train.max_steps=6", *extra
        )
        return list(fit_with_losses(cfg, **QUIET).losses.values())

    base, ar, tar = losses("a"), losses("b", "train.ar_alpha=5"), losses("c", "train.tar_beta=5")
    # The first step's NLL is before any update; the penalties change the updates after it.
    assert base[0] == ar[0] == tar[0]
    assert base[1:] != ar[1:] and base[1:] != tar[1:] and ar[1:] != tar[1:]


def test_variable_bptt_windows_are_fixed_per_seed_and_epoch() -> None:
    ids = torch.arange(1, 200_001)
    b = VariableStreamBatches(ids, 4, 35, seed=7)
    w0 = b.windows(0)
    assert VariableStreamBatches(ids, 4, 35, seed=7).windows(0) == w0
    assert b.windows(1) != w0 and VariableStreamBatches(ids, 4, 35, seed=8).windows(0) != w0
    starts = [s for s, _ in w0]
    lengths = [t for _, t in w0]
    # Contiguous, complete, within bounds; mostly near 35, some near 17.5 (p = 0.05).
    assert starts == [sum(lengths[:i]) for i in range(len(lengths))]
    assert sum(lengths) == b.data.size(0) - 1
    assert min(lengths[:-1]) >= 5 and max(lengths) <= 75
    short = sum(t < 27 for t in lengths[:-1]) / (len(lengths) - 1)
    assert 0.06 < short < 0.15  # 0.05 halved + 0.055 of N(35, 5) below 27
    batches = list(b.batches(1, 3))
    assert [x.inputs.size(0) for x in batches] == [t for _, t in b.windows(1)[3:]]
    assert torch.equal(batches[0].targets[:-1], batches[0].inputs[1:])


def test_variable_bptt_scales_lr_and_resumes_exactly(tmp_path: Path, tiny_files, cli) -> None:
    extra = (
        "train.variable_bptt=true", "train.bptt=10", "model.weight_drop=0.3",
        "train.optimizer=sgd", "train.epochs=1",
    )  # fmt: skip
    whole = tiny_config(tmp_path, tiny_files, f"run.dir={tmp_path / 'whole'}", *extra)
    fit(whole, **QUIET)
    # Stop part-way, then continue from the CLI: the result must be the same to the bit.
    half = tiny_config(
        tmp_path, tiny_files, f"run.dir={tmp_path / 'half'}", "train.max_steps=4", *extra
    )
    fit(half, **QUIET)
    overrides = [f"{k}={v}" for k, v in (s.split("=") for s in extra)]
    cfg_file = tmp_path / "half.yaml"
    cfg_file.write_text(half.to_yaml().replace("max_steps: 4", "max_steps: null"))
    r = invoke(cli, "fit", cfg_file, *overrides, "--resume", "auto", "--quiet")
    assert r.exit_code == 0, r.output
    a = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "half/checkpoints/last.pt")
    # Every counter matches except train_seconds, a wall-clock measurement.
    assert a["progress"].pop("train_seconds") > 0 and b["progress"].pop("train_seconds") > 0
    assert a["progress"] == b["progress"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # One step: its lr is the base lr scaled by that window's length / bptt.
    train_ids = prepare_data(whole).train
    seed = next(
        s for s in range(100) if VariableStreamBatches(train_ids, 4, 10, s).windows(0)[0][1] != 10
    )
    one = tiny_config(
        tmp_path,
        tiny_files,
        f"run.dir={tmp_path / 'one'}",
        "train.max_steps=1",
        f"train.seed={seed}",
        *extra,
    )
    fit(one, **QUIET)
    windows = VariableStreamBatches(train_ids, 4, 10, seed).windows(0)
    lr = load_checkpoint(tmp_path / "one/checkpoints/last.pt")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(one.train.lr * windows[0][1] / 10)


def test_ntasgd_switches_averages_and_resumes_exactly(tmp_path: Path, tiny_files) -> None:
    extra = (
        "train.optimizer=ntasgd", "train.lr=5", "train.eval_every=2", "train.nonmono=1", "train.epochs=1",
    )  # fmt: skip
    messages: list[str] = []
    whole = tiny_config(tmp_path, tiny_files, f"run.dir={tmp_path / 'whole'}", *extra)
    fit(whole, quiet=True, echo=messages.append)
    switch = [m for m in messages if "NT-ASGD" in m]
    assert len(switch) == 1, messages
    switched_at = int(switch[0].split()[1])
    last = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    nt = last["ntasgd"]
    assert nt["averaging"] and nt["count"] == last["progress"]["step"] - switched_at + 1
    # The checkpoint's model is the average, different from the raw weights it also keeps.
    assert not torch.equal(
        last["model"]["output.decoder.weight"], nt["raw"]["output.decoder.weight"]
    )
    # `best` and the logged validation loss are those of the averaged weights.
    model, vocab, cfg = load_model(tmp_path / "whole/checkpoints/best.pt")
    ids = vocab.encode(read_text(cfg.data.valid, "valid")).ids
    nll, tokens = stream_nll(model, ids)
    best = load_checkpoint(tmp_path / "whole/checkpoints/best.pt")["progress"]["best_val_loss"]
    assert nll / tokens == pytest.approx(best, rel=1e-6)
    # Resume after the switch: bit-identical to the uninterrupted run.
    stop = switched_at + 4
    half = tiny_config(
        tmp_path, tiny_files, f"run.dir={tmp_path / 'half'}", f"train.max_steps={stop}", *extra
    )
    fit(half, **QUIET)
    assert load_checkpoint(tmp_path / "half/checkpoints/last.pt")["ntasgd"]["averaging"]
    rest = tiny_config(tmp_path, tiny_files, f"run.dir={tmp_path / 'half'}", *extra)
    fit(rest, resume="auto", **QUIET)
    again = load_checkpoint(tmp_path / "half/checkpoints/last.pt")
    assert again["ntasgd"]["count"] == nt["count"]
    for k, v in last["model"].items():
        assert torch.equal(v, again["model"][k]), k
        assert torch.equal(nt["raw"][k], again["ntasgd"]["raw"][k]), k


def test_awd_options_train_from_the_cli(tmp_path: Path, tiny_files, cli) -> None:
    cfg = tiny_config(tmp_path, tiny_files)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    r = invoke(
        cli, "fit", path, "model.weight_drop=0.2", "train.ar_alpha=2", "train.tar_beta=1",
        "train.variable_bptt=true", "train.optimizer=ntasgd", "train.lr=2", "train.epochs=1", "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "best val loss" in r.stdout
    r = invoke(
        cli, "fit", path, "model.weight_drop=1.5", "train.ar_alpha=-1", "train.optimizer=ntsgd"
    )
    assert r.exit_code == 2
    for needle in ("model.weight_drop", "train.ar_alpha", "did you mean 'ntasgd'"):
        assert needle in r.stderr
