"""Mixed precision on CPU: bf16 autocast runs, fp16 scales and unscales, missing kernels fall back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import fit_with_losses
from lmtrain.config import ModelConfig
from lmtrain.models import build_model
from lmtrain.runtime.precision import Amp
from lmtrain.training import fit
from tests.conftest import invoke, tiny_config

CPU = torch.device("cpu")


def _losses(tmp_path: Path, tiny_files: dict, *overrides: str) -> dict[int, float]:
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=6", "train.device=cpu", *overrides)
    return fit_with_losses(cfg, quiet=True, echo=lambda _: None).losses


def test_bf16_autocast_trains_close_to_fp32(tmp_path: Path, tiny_files: dict) -> None:
    # nn.GRU (like the hand-built cells) runs bf16 on any x86 CPU; oneDNN's bf16 LSTM needs
    # AVX-512, which some CPUs lack (see the next test), so the GRU makes this test portable.
    amp = Amp.for_model("bf16", CPU, build_model(ModelConfig(cell="gru"), 10).rnn)
    assert amp.dtype == torch.bfloat16 and amp.scaler is None
    fp32 = _losses(tmp_path / "a", tiny_files, "model.cell=gru")
    bf16 = _losses(tmp_path / "b", tiny_files, "model.cell=gru", "train.precision=bf16")
    assert sorted(bf16) == list(range(1, 7))
    # bf16 keeps ~3 significant digits: close to fp32, but not bit-identical (it did run).
    assert bf16[1] == pytest.approx(fp32[1], rel=2e-2)
    assert bf16[1] != fp32[1]
    assert all(math.isfinite(v) for v in bf16.values())


def test_bf16_lstm_runs_in_bf16_or_says_it_falls_back() -> None:
    # Which one depends on the CPU (oneDNN's bf16 LSTM needs AVX-512); either way the user is
    # told what runs, and a fallback is plain fp32.
    amp = Amp.for_model("bf16", CPU, build_model(ModelConfig(cell="lstm"), 10).rnn)
    if amp.dtype is None:
        (note,) = amp.notes
        assert note.startswith("train.precision=bf16: the recurrent kernel on cpu has no bf16")
        assert "training in fp32 instead" in note
    else:
        assert amp.dtype == torch.bfloat16 and amp.notes == ["mixed precision: bf16 autocast"]


def test_fp16_uses_a_grad_scaler_and_unscales_before_clipping(
    tmp_path: Path, tiny_files: dict
) -> None:
    # oneDNN has an fp16 kernel for the plain RNN cell on CPU, so the scaler path runs here.
    amp = Amp.for_model("fp16", CPU, build_model(ModelConfig(cell="rnn_tanh"), 10).rnn)
    assert amp.dtype == torch.float16 and amp.scaler is not None
    norms = {}
    for precision in ("fp32", "fp16"):
        c = tiny_config(
            tmp_path / precision,
            tiny_files,
            "model.cell=rnn_tanh",
            "train.device=cpu",
            "train.max_steps=1",
            "train.log_every=1",
            f"train.precision={precision}",
            "run.tensorboard=true",
        )
        fit(c, quiet=True, echo=lambda _: None)
        norms[precision] = _scalar(tmp_path / precision / "run/tb", "watch/grad_norm")
    # Measured after unscaling: the true norm, not 65536 times it.
    assert norms["fp16"] == pytest.approx(norms["fp32"], rel=5e-2)
    ckpt = torch.load(tmp_path / "fp16/run/checkpoints/last.pt", weights_only=True)
    assert ckpt["grad_scaler"]["scale"] > 1.0


def _scalar(tb_dir: Path, tag: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return acc.Scalars(tag)[-1].value


def test_missing_kernel_falls_back_to_fp32_with_a_message(
    tmp_path: Path, tiny_files: dict, cli
) -> None:
    # oneDNN has no fp16 LSTM on CPU: the probe finds out before the first step.
    amp = Amp.for_model("fp16", CPU, build_model(ModelConfig(cell="lstm"), 10).rnn)
    assert amp.dtype is None and amp.scaler is None
    (note,) = amp.notes
    assert note.startswith("train.precision=fp16: the recurrent kernel on cpu has no fp16 support")
    assert "training in fp32 instead" in note
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=3", "train.device=cpu")
    config = tmp_path / "fp16.yaml"
    config.write_text(cfg.to_yaml())
    res = invoke(cli, "fit", config, "train.precision=fp16", "--quiet")
    assert res.exit_code == 0, res.output
    assert "train.precision=fp16: the recurrent kernel on cpu has no fp16 support" in res.stderr
    # The fallback is plain fp32: the same losses as asking for fp32.
    fp32 = _losses(tmp_path / "a", tiny_files, "train.max_steps=3")
    fb = _losses(tmp_path / "b", tiny_files, "train.max_steps=3", "train.precision=fp16")
    assert fb == fp32
