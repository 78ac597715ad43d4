from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import fit_with_losses, tiny_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.config import TrainConfig
from lmtrain.errors import CheckpointError
from lmtrain.evaluation.stream import EvalResult, stream_nll
from lmtrain.models import build_model
from lmtrain.training import fit
from lmtrain.training.optim import LRSchedule


def test_loss_falls_and_runs_write_their_files(tmp_path: Path, tiny_files) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "train.epochs=6")
    result = fit_with_losses(cfg, quiet=True, echo=lambda s: None)
    losses = list(result.losses.values())
    assert len(losses) == result.progress.step
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    run = Path(cfg.run.dir)
    assert (run / "config.yaml").read_text() == cfg.to_yaml()
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    assert payload["config"] == cfg.to_dict()
    assert payload["progress"]["step"] == result.progress.step
    assert payload["vocab"]["itos"][:3] == ["<pad>", "<unk>", "<eos>"]
    assert (run / "checkpoints" / "best.pt").exists()


def test_same_seed_same_losses_other_seed_differs(tmp_path: Path, tiny_files) -> None:
    def losses(name: str, seed: int) -> list[float]:
        cfg = tiny_config(
            tmp_path,
            tiny_files,
            f"run.dir={tmp_path / name}",
            f"train.seed={seed}",
            "model.dropout=0.3",
        )
        return list(fit_with_losses(cfg, quiet=True, echo=lambda s: None).losses.values())

    a, b, c = losses("a", 1), losses("b", 1), losses("c", 2)
    assert a == b
    assert a != c


def test_refuses_to_overwrite_an_existing_run(tmp_path: Path, tiny_files) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=2")
    fit(cfg, quiet=True, echo=lambda s: None)
    before = (Path(cfg.run.dir) / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        fit(cfg, quiet=True, echo=lambda s: None)
    assert (Path(cfg.run.dir) / "checkpoints" / "last.pt").read_bytes() == before


def test_tensorboard_holds_the_documented_tags(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = {
        "train": "builtin:python-docs",
        "valid": "builtin:python-docs",
        "test": "builtin:python-docs",
    }
    cfg = tiny_config(
        tmp_path, files, "data.tokenizer=char", "train.max_steps=6", "train.eval_every=3",
        "train.log_every=2", "run.tensorboard=true", "run.sample_tokens=20",
    )  # fmt: skip
    fit(cfg, quiet=True, echo=lambda s: None)
    acc = EventAccumulator(str(Path(cfg.run.dir) / "tb"), size_guidance={"tensors": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "train/ppl",
        "val/loss",
        "val/ppl",
        "val/bpc",
        "train/bpc",
        "watch/lr",
        "watch/grad_norm",
        "watch/grad_norm_max",
        "watch/tokens_per_sec",
    } <= scalars
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]
    assert [e.step for e in acc.Scalars("val/loss")] == [3, 6]
    val = acc.Scalars("val/ppl")[-1].value
    assert val == pytest.approx(math.exp(acc.Scalars("val/loss")[-1].value), rel=1e-5)
    texts = set(acc.Tags()["tensors"])
    assert {"config/text_summary", "sample/text_summary"} <= texts


def test_perplexity_matches_a_hand_computation() -> None:
    # A model that ignores context: zero decoder weights, bias = log of fixed probabilities, so
    # every next token has probability p[token]. Over the text "aab" the predicted tokens are
    # a (p=0.5) and b (p=0.3): ppl = exp((ln 2 + ln(10/3)) / 2) = sqrt(20/3).
    cfg = tiny_config(Path("."), {"train": "x", "valid": "x", "test": "x"}).model
    model = build_model(cfg, vocab_size=4)  # <pad> <unk> a b
    with torch.no_grad():
        model.output.decoder.weight.zero_()
        model.output.decoder.bias.copy_(torch.tensor([0.1, 0.1, 0.5, 0.3]).log())
    nll, tokens = stream_nll(model, torch.tensor([2, 2, 3]))
    result = EvalResult(nll=nll, tokens=tokens, kind="char")
    assert tokens == 2
    assert result.ppl == pytest.approx(math.sqrt(20 / 3), rel=1e-6)
    assert result.bpc == pytest.approx(-(math.log2(0.5) + math.log2(0.3)) / 2, rel=1e-6)


def test_schedules() -> None:
    cos = LRSchedule(
        TrainConfig(lr=1.0, schedule="cosine", warmup_steps=4, min_lr=0.1), total_steps=14
    )
    assert [round(cos.lr(s), 4) for s in (0, 3, 4, 9, 14)] == [0.2, 0.8, 1.0, 0.55, 0.1]
    plat = LRSchedule(TrainConfig(lr=1.0, schedule="plateau", plateau_factor=0.5), total_steps=10)
    assert not plat.on_validation(improved=True)
    assert plat.on_validation(improved=False) and plat.lr(5) == 0.5
    state = plat.state_dict()
    again = LRSchedule(TrainConfig(lr=1.0, schedule="plateau", plateau_factor=0.5), total_steps=10)
    again.load_state_dict(state)
    assert again.lr(5) == 0.5


def test_unigram_baseline_is_the_frequency_model() -> None:
    from lmtrain.evaluation.stream import unigram_baseline

    # Train counts of ids 2,3 are 3 and 1; add-one smoothing over the 3 non-pad ids gives
    # p(2) = 4/7, p(3) = 2/7. Scoring [x, 2, 3] predicts 2 and 3.
    r = unigram_baseline(
        torch.tensor([2, 2, 2, 3]), torch.tensor([3, 2, 3]), vocab_size=4, kind="char"
    )
    assert r.tokens == 2
    assert r.loss == pytest.approx(-(math.log(4 / 7) + math.log(2 / 7)) / 2, rel=1e-12)


def test_max_minutes_stops_training_and_is_reported(
    tmp_path: Path, tiny_files, monkeypatch
) -> None:
    from lmtrain.training import window as window_mod

    # A clock that advances 10 s per reading: the 1-minute budget runs out after a few steps,
    # whatever the speed of the machine.
    ticks = iter(range(0, 10**6, 10))
    monkeypatch.setattr(window_mod.time, "perf_counter", lambda: float(next(ticks)))
    lines: list[str] = []
    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_minutes=1", "train.log_every=1", "train.epochs=5"
    )
    result = fit(cfg, quiet=True, echo=lines.append)
    assert result.progress.out_of_time
    assert 1 <= result.progress.step <= 8
    assert result.progress.train_seconds >= 60
    assert any("train.max_minutes=1 reached: stopping" in line for line in lines)
    # The final evaluation still runs and reports the training minutes.
    assert any(" min | val loss" in line for line in lines)


def test_on_log_hears_each_steps_loss_once_per_logging_interval(tmp_path: Path, tiny_files):
    from lmtrain.metrics import read_metrics

    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=12", "train.log_every=5")
    calls: list[dict[int, float]] = []
    fit(cfg, quiet=True, echo=lambda _: None, on_log=calls.append)
    assert [sorted(c) for c in calls] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
    train = [r for r in read_metrics(Path(cfg.run.dir)) if r["type"] == "train"]
    # Stream windows hold equal token counts: a logged loss is the mean of its steps' losses.
    for record, heard in zip(train, calls, strict=True):
        assert record["loss"] == pytest.approx(sum(heard.values()) / len(heard), rel=1e-9)
