"""Recipes that transfer to other corpora: cutoffs that follow the vocabulary, a cosine decay that
spans the time budget, and early stopping; each survives a resume."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest

from lmtrain.catalog import resolve_config
from lmtrain.checkpoint import load_checkpoint, load_model
from lmtrain.config import (
    AdaptiveSoftmaxConfig,
    Config,
    ModelConfig,
    TrainConfig,
    load_config,
)
from lmtrain.evaluation import EvalResult
from lmtrain.metrics import read_metrics
from lmtrain.models import build_model
from lmtrain.models.adaptive import AdaptiveSoftmaxOutput, cutoffs_note
from lmtrain.models.output import SoftmaxOutput
from lmtrain.training import fit
from lmtrain.training.optim import LRSchedule
from tests.conftest import tiny_config

# -- cutoffs follow the vocabulary ------------------------------------------------------------


def _zipf_corpus(directory: Path, words: int) -> dict[str, Path]:
    """train/valid (and test = valid) files over `words` word types, drawn with Zipfian frequencies."""
    vocab = [f"w{i}" for i in range(words)]
    weights = [1 / (rank + 1) for rank in range(words)]
    rng = random.Random(0)
    files = {}
    for split, lines in (("train", 400), ("valid", 40)):
        text = "\n".join(" ".join(rng.choices(vocab, weights, k=12)) for _ in range(lines))
        if split == "train":  # every word at least once, so the vocabulary has them all
            text += "\n" + " ".join(vocab)
        files[split] = directory / f"{split}.txt"
        files[split].write_text(text + "\n", encoding="utf-8")
    files["test"] = files["valid"]
    return files


@pytest.mark.slow
def test_the_wikitext2_recipe_model_trains_on_a_300_word_vocabulary(tmp_path: Path) -> None:
    # The recipe's model section unchanged (adaptive softmax cutoffs [2000, 10000]); only the
    # data paths and a short run change.
    files = _zipf_corpus(tmp_path, 297)  # + <pad>, <unk>, <eos> = 300 entries
    cfg = load_config(
        resolve_config("wikitext2_word_cpu"),
        [
            f"data.train={files['train']}", f"data.valid={files['valid']}", "data.test=null",
            "data.cache_dir=null", f"run.dir={tmp_path / 'run'}", "run.tensorboard=false",
            "run.sample_tokens=0", "train.max_steps=20", "train.batch_size=8",
            "train.eval_every=20", "train.max_minutes=null", "train.num_threads=1",
        ],
    )  # fmt: skip
    assert cfg.model.adaptive_softmax.cutoffs == [2000, 10000]
    lines: list[str] = []
    result = fit(cfg, quiet=True, echo=lines.append)
    assert result.progress.step == 20
    assert (
        "model.adaptive_softmax.cutoffs [2000, 10000]: the vocabulary has only 300 entries, "
        "so using the full softmax"
    ) in lines
    # Learned: clearly better than a uniform guess over the 300 entries.
    assert result.progress.best_val_loss < math.log(300) - 0.5


def test_cutoffs_the_vocabulary_cannot_hold_are_dropped_the_rest_kept() -> None:
    a = AdaptiveSoftmaxConfig(cutoffs=[2000, 10000])
    assert a.cutoffs_for(33_278) == [2000, 10000]  # fits: used unchanged
    assert a.cutoffs_for(5000) == [2000]
    assert a.cutoffs_for(2000) == []
    assert cutoffs_note(a, 33_278) is None  # nothing to say when the list is used as given
    assert cutoffs_note(a, 5000) == (
        "model.adaptive_softmax.cutoffs [2000, 10000]: the vocabulary has only 5,000 entries, "
        "so using [2000]"
    )
    model = build_model(ModelConfig(hidden_size=64, embedding_dim=8, adaptive_softmax=a), 33_278)
    assert isinstance(model.output, AdaptiveSoftmaxOutput)
    assert model.output.asm.cutoffs == [2000, 10000, 33_278]  # torch appends the vocabulary size
    model = build_model(ModelConfig(hidden_size=64, embedding_dim=8, adaptive_softmax=a), 5000)
    assert model.output.asm.cutoffs == [2000, 5000]


@pytest.mark.parametrize(
    ("vocab_size", "expected"),
    [
        (300, []),
        (3999, []),
        (4000, [2000]),
        (10_000, [2000]),  # Grave et al. 2017 on Penn Treebank: one cutoff at 2,000
        (33_278, [2000, 10000]),  # WikiText-2; their text8 (44k words) used the same
        (267_735, [2000, 10000, 50000]),  # WikiText-103
    ],
)
def test_auto_cutoffs_follow_the_vocabulary_size(vocab_size: int, expected: list[int]) -> None:
    a = AdaptiveSoftmaxConfig(auto=True)
    assert a.cutoffs_for(vocab_size) == expected
    shown = f"using {expected}" if expected else "using the full softmax"
    assert cutoffs_note(a, vocab_size) == (
        f"model.adaptive_softmax.auto: {shown} for a vocabulary of {vocab_size:,}"
    )


def test_an_explicit_list_wins_over_auto() -> None:
    a = AdaptiveSoftmaxConfig(cutoffs=[100, 1000], auto=True)
    assert a.cutoffs_for(33_278) == [100, 1000]
    assert cutoffs_note(a, 33_278) is None
    cfg = ModelConfig(hidden_size=8, embedding_dim=8, adaptive_softmax=AdaptiveSoftmaxConfig())
    assert isinstance(build_model(cfg, 33_278).output, SoftmaxOutput)  # [] and no auto: full


def test_auto_cutoffs_are_rebuilt_from_the_checkpoint(tmp_path: Path) -> None:
    files = _zipf_corpus(tmp_path, 4500)
    cfg = tiny_config(
        tmp_path, files, "model.adaptive_softmax.auto=true", "train.max_steps=4",
        "data.test=null", "model.num_layers=1",
    )  # fmt: skip
    lines: list[str] = []
    fit(cfg, quiet=True, echo=lines.append)
    assert "model.adaptive_softmax.auto: using [2000] for a vocabulary of 4,503" in lines
    model, vocab, _ = load_model(tmp_path / "run")
    assert len(vocab) == 4503 and model.output.asm.cutoffs == [2000, 4503]


def replace_train(cfg: Config, **changes: object) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


# -- the cosine decay spans the time budget ---------------------------------------------------


def _cosine(lr: float, min_lr: float, progress: float) -> float:
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def test_cosine_progress_is_the_larger_of_steps_and_time() -> None:
    seconds = [0.0]
    cfg = TrainConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_steps=10, max_minutes=2)
    s = LRSchedule(cfg, total_steps=1010, train_seconds=lambda: seconds[0])
    assert s.lr(5) == pytest.approx(6 / 11)  # warm-up is by steps, whatever the clock
    assert s.lr(510) == pytest.approx(_cosine(1.0, 0.1, 0.5))  # half the steps, no time yet
    seconds[0] = 90.0  # three quarters of the two minutes
    assert s.progress(510) == pytest.approx(0.75)
    assert s.lr(510) == pytest.approx(_cosine(1.0, 0.1, 0.75))
    assert s.progress(1000) == pytest.approx(0.99)  # the steps are further along now
    seconds[0] = 500.0  # past the budget: the floor, not beyond it
    assert s.lr(20) == pytest.approx(0.1)
    steps_only = LRSchedule(
        TrainConfig(lr=1.0, schedule="cosine", max_minutes=2, schedule_span="steps"),
        total_steps=100,
        train_seconds=lambda: 500.0,
    )
    assert steps_only.lr(50) == pytest.approx(0.5)


def _fake_clock(monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    """perf_counter advancing `step` seconds per reading, whatever the machine's speed."""
    from lmtrain.training import window as window_mod

    ticks = iter(range(0, 10**7))
    monkeypatch.setattr(window_mod.time, "perf_counter", lambda: step * next(ticks))


def _train_lrs(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(run_dir) if r["type"] == "train"}


def test_the_rate_has_decayed_when_the_time_budget_ends(
    tmp_path: Path, tiny_files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_clock(monkeypatch, 2.0)
    base = [
        "train.schedule=cosine",
        "train.epochs=1000",
        "train.max_minutes=1",
        "train.log_every=1",
    ]
    result = fit(tiny_config(tmp_path, tiny_files, *base), quiet=True)
    assert result.progress.out_of_time
    lrs = _train_lrs(tmp_path / "run")
    # A thousand epochs planned, so by steps the decay has hardly begun (at most 2% of the
    # planned steps); by time it is nearly over when the budget ends.
    assert result.progress.step <= 20
    assert lrs[max(lrs)] < 0.1 * 0.01
    assert list(lrs.values()) == sorted(lrs.values(), reverse=True)

    _fake_clock(monkeypatch, 2.0)
    by_steps = [*base, "train.schedule_span=steps", f"run.dir={tmp_path / 'steps'}"]
    fit(tiny_config(tmp_path, tiny_files, *by_steps), quiet=True)
    lrs = _train_lrs(tmp_path / "steps")
    assert lrs[max(lrs)] > 0.98 * 0.01  # by steps alone the rate has hardly come down


def test_a_resumed_run_continues_on_the_same_time_curve(
    tmp_path: Path, tiny_files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 steps use most of a 70 s budget; the resumed session's clock stands still, so its rate
    # is the one those seconds give (more than the 3-5 of 6 steps would), which only the saved
    # train_seconds can tell it.
    base = ["train.schedule=cosine", "train.epochs=1000", "train.log_every=1"]
    _fake_clock(monkeypatch, 10.0)
    cfg = tiny_config(
        tmp_path, tiny_files, *base, "train.max_steps=3", f"train.max_minutes={70 / 60!r}"
    )
    first = fit(cfg, quiet=True)
    budget = cfg.train.max_minutes * 60
    progress = first.progress.train_seconds / budget
    assert 5 / 6 < progress < 1
    _fake_clock(monkeypatch, 0.0)
    fit(replace_train(cfg, max_steps=6), resume="auto", quiet=True)
    lrs = _train_lrs(tmp_path / "run")
    for step in (4, 5, 6):
        assert lrs[step] == pytest.approx(_cosine(0.01, 0.0, progress), rel=1e-9)


# -- early stopping ---------------------------------------------------------------------------


def _scripted_validation(monkeypatch: pytest.MonkeyPatch, losses: list[float]) -> list[int]:
    """Validation losses given in order; returns the list of evaluation calls' count."""
    from lmtrain.training import loop as loop_mod

    calls: list[int] = []

    def validate(session, stop) -> EvalResult:
        calls.append(1)
        return EvalResult(nll=losses[len(calls) - 1] * 100, tokens=100, kind="word")

    monkeypatch.setattr(loop_mod, "validate", validate)
    return calls


def test_early_stopping_stops_after_n_evaluations_without_a_new_best(
    tmp_path: Path, tiny_files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _scripted_validation(monkeypatch, [3.0, 2.5, 2.6, 2.7, 2.4, 2.3])
    cfg = tiny_config(
        tmp_path, tiny_files, "train.early_stopping=2", "train.eval_every=2", "train.epochs=50"
    )
    lines: list[str] = []
    result = fit(cfg, quiet=True, echo=lines.append)
    assert result.progress.step == 8 and len(calls) == 4
    assert (
        "step 8 | train.early_stopping=2: no new best validation loss in 2 evaluations "
        "(best 2.5000): stopping; best.pt holds the best weights"
    ) in lines
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 8
    assert results["best_val"]["step"] == 4
    assert load_checkpoint(tmp_path / "run/checkpoints/best.pt")["progress"]["step"] == 4
    last = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert last["schedule"]["evals_without_best"] == 2
    # Resuming a run that stopped early has nothing left to do.
    again = fit(cfg, resume="auto", quiet=True)
    assert again.progress.step == 8 and len(calls) == 4


def test_the_count_of_evaluations_without_a_best_survives_a_resume(
    tmp_path: Path, tiny_files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _scripted_validation(monkeypatch, [3.0, 2.5, 2.6, 2.7, 2.4])
    base = ["train.early_stopping=2", "train.eval_every=2", "train.epochs=50"]
    fit(tiny_config(tmp_path, tiny_files, *base, "train.max_steps=6"), quiet=True)
    assert len(calls) == 3  # 3.0, 2.5 (best), 2.6: one without a best
    result = fit(
        tiny_config(tmp_path, tiny_files, *base, "train.max_steps=40"), resume="auto", quiet=True
    )
    # One more evaluation without a best (2.7) makes two: stopped at step 8, not at 10.
    assert result.progress.step == 8 and len(calls) == 4


def test_a_schedule_state_from_before_early_stopping_loads() -> None:
    s = LRSchedule(TrainConfig(early_stopping=3), total_steps=10)
    s.load_state_dict({"scale": 0.5, "bad_evals": 1})  # a version-2 checkpoint's schedule
    assert s.evals_without_best == 0 and not s.stalled()
    for _ in range(3):
        s.on_validation(improved=False)
    assert s.stalled()
    assert s.state_dict() == {"scale": 0.5, "bad_evals": 1, "evals_without_best": 3}


def test_the_time_budget_ends_within_a_step_not_a_logging_interval(
    tmp_path: Path, tiny_files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 s per step and a logging point every 50 steps: a budget checked only when logging would
    # run to step 50 (100 s of a 60 s budget). One process checks its clock after every step.
    _fake_clock(monkeypatch, 2.0)
    cfg = tiny_config(
        tmp_path, tiny_files, "train.epochs=1000", "train.max_minutes=1", "train.log_every=50"
    )
    lines: list[str] = []
    result = fit(cfg, quiet=True, echo=lines.append)
    assert result.progress.out_of_time
    assert 60 <= result.progress.train_seconds < 64
    assert result.progress.step == 30
    assert sum("train.max_minutes=1 reached: stopping" in line for line in lines) == 1


def test_under_torchrun_every_rank_plans_the_same_last_step() -> None:
    # Ranks cannot each read their own clock (one would stop while the others wait for it), so
    # at a logging point they agree, from all-reduced means, on the step where the budget ends.
    from types import SimpleNamespace

    from lmtrain.checkpoint import Progress
    from lmtrain.training.budget import TimeBudget

    said: list[str] = []
    # Two ranks at 49 and 51 s, 1.9 and 2.1 s a step: means 50 s and 2 s, 5 steps left.
    ctx = SimpleNamespace(world=2, sum=lambda values: [2 * v for v in values])
    budget = TimeBudget(minutes=1, log_every=50, ctx=ctx, message=said.append)
    p = Progress(step=100, train_seconds=50.0)
    budget.at_logging_point(p, seconds_per_step=2.0)
    assert budget.planned_step == 105 and not p.out_of_time
    for step in range(101, 106):
        p.step, p.train_seconds = step, p.train_seconds + 5.0  # a rank's own clock runs fast
        budget.after_step(p)  # ...but only the planned step counts under torchrun
        assert p.out_of_time == (step == 105)
    assert said == ["step 105 | train.max_minutes=1 reached: stopping"]
    # A budget already spent at the logging point stops there; none plans nothing.
    spent = Progress(step=7, train_seconds=61.0)
    TimeBudget(1, 50, ctx, said.append).at_logging_point(spent, 2.0)
    assert spent.out_of_time and said[-1] == "step 7 | train.max_minutes=1 reached: stopping"
    free = TimeBudget(None, 50, ctx, said.append)
    free.at_logging_point(spent := Progress(step=7, train_seconds=1e9), 2.0)
    free.after_step(spent)
    assert not spent.out_of_time and free.planned_step is None


def test_one_process_stops_on_its_clock_not_on_a_planned_step() -> None:
    # A plan made at the last window's pace would end the run early when the pace quickens
    # (seen: 599.3 s of a 600 s budget). One process needs no plan: it reads its own clock.
    from types import SimpleNamespace

    from lmtrain.checkpoint import Progress
    from lmtrain.training.budget import TimeBudget

    one = SimpleNamespace(world=1, sum=lambda values: list(values))
    budget = TimeBudget(minutes=1, log_every=50, ctx=one, message=lambda _: None)
    p = Progress(step=100, train_seconds=50.0)
    budget.at_logging_point(p, seconds_per_step=2.0)
    assert budget.planned_step is None
    for step in range(101, 120):  # faster than planned: 1 s a step
        p.step, p.train_seconds = step, p.train_seconds + 1.0
        budget.after_step(p)
        assert p.out_of_time == (p.train_seconds >= 60)
    assert p.out_of_time
