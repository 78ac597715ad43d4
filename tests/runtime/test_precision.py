"""Mixed precision on CPU: bf16 autocast runs, fp16 scales and unscales, missing kernels fall back,
`auto` follows the device's bf16 capability, evaluation stays fp32."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import fit_with_losses
from lmtrain import api
from lmtrain.config import ModelConfig
from lmtrain.models import build_model, carried_state, detach_state
from lmtrain.runtime import precision as policy
from lmtrain.runtime.precision import Amp, choose_precision, cpuinfo_bf16_features
from lmtrain.training import fit
from tests.conftest import invoke, tiny_config

CPU = torch.device("cpu")


def _losses(tmp_path: Path, tiny_files: dict, *overrides: str) -> dict[int, float]:
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=6", "train.device=cpu", *overrides)
    return fit_with_losses(cfg, quiet=True, echo=lambda _: None).losses


@pytest.mark.slow
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


NO_BF16 = (
    "train.precision=auto: fp32 (this CPU has no AVX512-BF16 or AMX; "
    "bf16 products would be slower than fp32)"
)


def _gru() -> torch.nn.Module:
    return build_model(ModelConfig(cell="gru"), 10).rnn


def _cpu_has(monkeypatch: pytest.MonkeyPatch, *features: str) -> None:
    monkeypatch.setattr(policy, "cpu_bf16_features", lambda: list(features))


def test_auto_picks_bf16_on_a_cpu_with_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_has(monkeypatch, "AMX-BF16", "AVX512-BF16")
    amp = Amp.for_model("auto", CPU, _gru())
    assert amp.dtype == torch.bfloat16 and amp.scaler is None and amp.precision == "bf16"
    assert amp.notes == ["train.precision=auto: bf16 (this CPU has AMX-BF16 and AVX512-BF16)"]


def test_auto_picks_fp32_on_a_cpu_without_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_has(monkeypatch)
    amp = Amp.for_model("auto", CPU, _gru())
    assert amp.dtype is None and amp.scaler is None and amp.precision == "fp32"
    assert amp.notes == [NO_BF16]


def test_auto_falls_back_to_fp32_when_the_recurrent_kernel_has_no_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cpu_has(monkeypatch, "AVX512-BF16")
    monkeypatch.setattr(policy, "_unsupported", lambda *_: "the kernel has no bf16 (test)")
    amp = Amp.for_model("auto", CPU, _gru())
    assert amp.dtype is None
    assert amp.notes == [
        "train.precision=auto: fp32 (this CPU has AVX512-BF16, but the kernel has no bf16 (test))"
    ]


def test_explicit_precisions_win_over_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_has(monkeypatch, "AMX-BF16")
    fp32 = Amp.for_model("fp32", CPU, _gru())
    assert fp32.dtype is None and fp32.notes == []
    _cpu_has(monkeypatch)
    bf16 = Amp.for_model("bf16", CPU, _gru())
    assert bf16.dtype == torch.bfloat16 and bf16.notes == ["mixed precision: bf16 autocast"]


@pytest.mark.parametrize(
    ("capability", "supported", "picked"),
    [
        ((8, 0), True, "bf16"),
        ((9, 0), True, "bf16"),
        ((7, 5), True, "fp32"),
        ((8, 6), False, "fp32"),
    ],
)
def test_auto_on_a_gpu_follows_its_compute_capability(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], supported: bool, picked: str
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Test GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_: supported)
    choice = choose_precision(torch.device("cuda"))
    assert choice.precision == picked
    assert choice.describe().startswith(
        f"train.precision=auto: {picked} (GPU Test GPU, compute capability "
        f"{capability[0]}.{capability[1]}, "
    )


def test_cpu_flags_are_read_from_cpuinfo_text() -> None:
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    assert cpuinfo_bf16_features(text) == ["AMX-BF16", "AVX512-BF16"]
    assert cpuinfo_bf16_features("flags\t\t: fpu sse2 avx2\n") == []
    assert cpuinfo_bf16_features("") == []


def test_auto_run_says_what_it_picked_and_trains_as_that_precision(
    tmp_path: Path, tiny_files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(name: str, *overrides: str) -> tuple[dict[int, float], list[str]]:
        said: list[str] = []
        cfg = tiny_config(
            tmp_path / name, tiny_files, "train.max_steps=4", "train.device=cpu",
            "model.cell=gru", *overrides,
        )  # fmt: skip
        return fit_with_losses(cfg, quiet=True, echo=said.append).losses, said

    _cpu_has(monkeypatch)
    auto, said = run("auto-fp32", "train.precision=auto")
    assert NO_BF16 in said
    assert auto == run("fp32")[0]
    _cpu_has(monkeypatch, "AMX-BF16")
    auto, said = run("auto-bf16", "train.precision=auto")
    assert "train.precision=auto: bf16 (this CPU has AMX-BF16)" in said
    assert auto == run("bf16", "train.precision=bf16")[0]


def test_evaluation_after_bf16_training_is_fp32(tmp_path: Path, tiny_files: dict) -> None:
    # Validation runs outside autocast: the figure a bf16 run reports is the fp32 evaluation of
    # its weights (the issue allows 1e-3 relative; fp32 against fp32 is far closer than that).
    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_steps=6", "train.device=cpu", "model.cell=gru",
        "train.precision=bf16",
    )  # fmt: skip
    result = fit_with_losses(cfg, quiet=True, echo=lambda _: None)
    reported = result.progress.last_val_loss
    fp32 = api.load(tmp_path / "run/checkpoints/last.pt").evaluate(file=tiny_files["valid"])
    assert fp32.loss == pytest.approx(reported, rel=1e-6)


def test_bf16_kernel_state_is_carried_and_saved_in_fp32(tmp_path: Path, tiny_files: dict) -> None:
    # oneDNN's plain RNN kernel runs in bf16 on any x86 CPU and returns its state in bf16, as
    # cuDNN's kernels do on a GPU. The state carried to the next window, and saved in the
    # checkpoint, is fp32: the kernel's value, not rounded again.
    model = build_model(ModelConfig(cell="rnn_tanh", embedding_dim=8, hidden_size=8), 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = model(torch.randint(0, 10, (5, 2)), model.init_state(2))[:2]
    assert [s.dtype for s in state] == [torch.bfloat16]
    (kept,) = carried_state(state)
    assert kept.dtype == torch.float32 and torch.equal(kept, state[0].float())
    # Evaluation keeps the model's dtype: a model converted to bf16 by hand runs on bf16 state.
    assert [s.dtype for s in detach_state(state)] == [torch.bfloat16]

    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_steps=3", "train.device=cpu", "model.cell=rnn_tanh",
        "train.precision=bf16",
    )  # fmt: skip
    fit(cfg, quiet=True, echo=lambda _: None)
    saved = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=False)
    assert [c.dtype for c in saved["carried_state"]] == [torch.float32]
    # An fp32 state in, under bf16 autocast: the kernel takes it (autocast casts it down).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randint(0, 10, (5, 2)), (kept,))[0]
    assert torch.isfinite(out.float()).all()
