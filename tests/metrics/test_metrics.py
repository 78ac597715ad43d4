"""What a run reports: RUN/metrics.jsonl, RUN/results.json, the console, TensorBoard tags,
throughput that counts training time only, optional loggers, and a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import invoke, tiny_config
from lmtrain.errors import TrainingStopped
from lmtrain.metrics import MetricsError, read_metrics, read_results
from lmtrain.metrics import files as metrics_files
from lmtrain.training import fit
from lmtrain.training import window as window_mod
from lmtrain.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]


def _silent(_: str) -> None:
    pass


def _tree(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# metrics.jsonl and results.json


def test_metrics_file_and_results_after_a_tiny_fit(tmp_path: Path, tiny_files) -> None:
    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_steps=20", "train.log_every=5", "train.eval_every=10"
    )
    result = fit(cfg, quiet=True)
    run = Path(cfg.run.dir)
    records = read_metrics(run)
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert [r["step"] for r in evals] == [10, 20]
    for line in (run / "metrics.jsonl").read_text().splitlines():
        assert line.startswith('{"type": ')
    assert list(train[0]) == [
        "type", "step", "epoch", "loss", "ppl", "lr", "grad_norm", "grad_norm_max",
        "tokens_per_sec", "tokens", "train_seconds",
    ]  # fmt: skip
    assert list(evals[0]) == [
        "type", "step", "epoch", "split", "loss", "ppl", "bpb", "tokens", "best",
        "train_seconds", "train_tokens",
    ]  # fmt: skip
    steps_per_epoch = result.progress.step // 1  # the tiny corpus: one epoch has > 20 steps
    assert steps_per_epoch >= 20 and all(r["epoch"] == 1 for r in records)
    for r in records:
        assert r["ppl"] == pytest.approx(math.exp(r["loss"]), rel=1e-12)
    # batch_size 4 x bptt 8 = 32 tokens per step
    assert [r["tokens"] for r in train] == [160, 320, 480, 640]
    assert [r["train_tokens"] for r in evals] == [320, 640]
    for r in train:
        assert 0 < r["grad_norm"] <= r["grad_norm_max"]
        assert r["lr"] == 0.01
    assert train[-1]["train_seconds"] == pytest.approx(result.progress.train_seconds)
    assert evals[0]["split"] == "valid" and evals[0]["best"] is True
    assert evals[0]["tokens"] == evals[1]["tokens"] > 0  # the validation text, every time

    results = json.loads((run / "results.json").read_text())
    assert read_results(run) == results
    best = min(evals, key=lambda r: r["loss"])
    assert results["status"] == "completed"
    assert results["steps"] == 20 and results["tokens"] == 640
    assert results["best_val"] == {k: best[k] for k in ("step", "loss", "ppl", "bpb")}
    assert results["last_val"] == {k: evals[-1][k] for k in ("step", "loss", "ppl", "bpb")}
    assert results["train_seconds"] == pytest.approx(result.progress.train_seconds)
    assert results["tokens_per_sec"] == pytest.approx(640 / results["train_seconds"])
    config_bytes = (run / "config.yaml").read_bytes()
    assert results["config_sha256"] == hashlib.sha256(config_bytes).hexdigest()
    assert results["lmtrain_version"] and results["torch_version"]
    assert results["nonfinite_steps"] == 0
    assert result.results == results


def test_character_models_get_bpc(tmp_path: Path, tiny_files) -> None:
    cfg = tiny_config(
        tmp_path, tiny_files, "data.tokenizer=char", "train.max_steps=4", "train.log_every=2"
    )
    fit(cfg, quiet=True)
    records = read_metrics(Path(cfg.run.dir))
    assert [(r["type"], r["step"]) for r in records] == [("train", 2), ("train", 4), ("eval", 4)]
    for r in records:
        assert r["bpc"] == pytest.approx(r["loss"] / math.log(2), rel=1e-12)
    results = json.loads((Path(cfg.run.dir) / "results.json").read_text())
    assert set(results["best_val"]) == {"step", "loss", "ppl", "bpc", "bpb"}


def _crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    original = Trainer.train_step

    def crash(trainer: Trainer, batch: Any) -> Any:
        if trainer.progress.step + 1 == step:
            raise RuntimeError("injected crash")
        return original(trainer, batch)

    monkeypatch.setattr(Trainer, "train_step", crash)


def _timeless(records: list[dict]) -> list[dict]:
    """The records without the wall-clock figures, which differ from run to run."""
    drop = {"train_seconds", "tokens_per_sec"}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_each_step_once_after_a_stop_a_crash_and_resumes(
    tmp_path: Path, tiny_files, monkeypatch
) -> None:
    extra = ("train.max_steps=20", "train.log_every=2", "train.eval_every=5", "model.dropout=0.3")
    ref = fit(tiny_config(tmp_path, tiny_files, f"run.dir={tmp_path / 'ref'}", *extra), quiet=True)
    cfg = tiny_config(tmp_path, tiny_files, *extra)
    run = Path(cfg.run.dir)

    # SIGTERM after step 6: a checkpoint at 6; lines up to 6 (train) and 5 (eval). (A stop
    # between two logging points would split that window's averages, in TensorBoard too.)
    original = Trainer.train_step

    def stop_after_6(trainer: Trainer, batch: Any) -> Any:
        out = original(trainer, batch)
        if trainer.progress.step + 1 == 6:
            signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", stop_after_6)
    with pytest.raises(TrainingStopped):
        fit(cfg, quiet=True)
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(run)] == [2, 4, 5, 6]
    assert json.loads((run / "results.json").read_text())["status"] == "stopped"

    # Resume, crash before step 13: the newest checkpoint is step 10, lines reach step 12.
    _crash_at(monkeypatch, 13)
    with pytest.raises(RuntimeError, match="injected crash"):
        fit(cfg, resume="auto", quiet=True)
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(run)][-3:] == [10, 10, 12]

    fit(cfg, resume="auto", quiet=True)
    got, want = read_metrics(run), read_metrics(ref.run_dir)
    assert [(r["type"], r["step"]) for r in got] == [(r["type"], r["step"]) for r in want]
    # Exact resume: the same losses, norms, rates and token counts as the uninterrupted run.
    assert _timeless(got) == _timeless(want)
    assert json.loads((run / "results.json").read_text())["status"] == "completed"


def test_resume_refuses_a_metrics_file_lmtrain_did_not_write(tmp_path: Path, tiny_files) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=4", "train.log_every=2")
    fit(cfg, quiet=True)
    run = Path(cfg.run.dir)
    (run / "metrics.jsonl").write_text("step,loss\n1,2.5\n")
    before = _tree(run)
    resumed = tiny_config(tmp_path, tiny_files, "train.max_steps=8", "train.log_every=2")
    with pytest.raises(MetricsError, match=r"metrics.jsonl, line 1: not JSON"):
        fit(resumed, resume="auto", quiet=True)
    after = _tree(run)
    for name in ("metrics.jsonl", "results.json", "checkpoints/last.pt"):
        assert after[name] == before[name], name


def test_read_metrics_skips_a_line_cut_short_and_names_a_bad_one(tmp_path: Path) -> None:
    good = '{"type": "train", "step": 2, "loss": 1.5}\n'
    (tmp_path / "metrics.jsonl").write_text(good + '{"type": "eval", "st')
    assert read_metrics(tmp_path) == [{"type": "train", "step": 2, "loss": 1.5}]
    (tmp_path / "metrics.jsonl").write_text(good + "[1, 2]\n" + good)
    with pytest.raises(MetricsError, match="line 2: not an lmtrain metrics record"):
        read_metrics(tmp_path)
    with pytest.raises(MetricsError, match="not found"):
        read_metrics(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# Throughput


def test_tokens_per_sec_counts_training_time_only(tmp_path: Path, tiny_files, monkeypatch) -> None:
    # A clock that moves only inside a training step (1 s each) and an evaluation (100 s each):
    # every figure is then exact, and would be far lower if evaluation time leaked in.
    now = [0.0]
    monkeypatch.setattr(window_mod.time, "perf_counter", lambda: now[0])
    step, evaluate = Trainer.train_step, Trainer.evaluate

    def timed_step(trainer: Trainer, batch: Any) -> Any:
        now[0] += 1.0
        return step(trainer, batch)

    def slow_evaluate(trainer: Trainer) -> Any:
        now[0] += 100.0
        return evaluate(trainer)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_steps=12", "train.log_every=4", "train.eval_every=2"
    )
    result = fit(cfg, quiet=True)
    tokens_per_step = 4 * 8
    assert result.train_seconds == 12.0
    assert result.train_tokens == 12 * tokens_per_step
    assert result.tokens_per_sec == tokens_per_step
    train = [r for r in read_metrics(Path(cfg.run.dir)) if r["type"] == "train"]
    assert [r["tokens_per_sec"] for r in train] == [tokens_per_step] * 3
    assert [r["train_seconds"] for r in train] == [4.0, 8.0, 12.0]
    results = json.loads((Path(cfg.run.dir) / "results.json").read_text())
    assert results["tokens_per_sec"] == tokens_per_step and results["train_seconds"] == 12.0


# ---------------------------------------------------------------------------------------------
# The console


def _write_config(tmp_path: Path, tiny_files, *extra: str) -> Path:
    cfg = tiny_config(tmp_path, tiny_files, *extra)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    return path


@pytest.mark.slow
def test_piped_fit_prints_progress_lines_and_next_commands(tmp_path: Path, tiny_files) -> None:
    path = _write_config(
        tmp_path, tiny_files, "train.max_steps=12", "train.log_every=4", "run.tensorboard=true"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lmtrain", "fit", str(path)],
        capture_output=True,  # both streams are pipes, not a terminal
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    err = done.stderr.splitlines()
    progress = [line for line in err if line.startswith("step ") and "tokens/s" in line]
    assert [line.split(" | ")[0] for line in progress] == ["step 4/12", "step 8/12", "step 12/12"]
    fields = progress[0].split(" | ")
    assert fields[1] == "epoch 1" and fields[2].startswith("loss ") and fields[3].startswith("ppl ")
    assert fields[4].startswith("lr ") and fields[5].endswith(" tokens/s")
    assert fields[6].startswith("elapsed ") and fields[7].startswith("ETA ")
    assert f"run directory: {run}" in err
    assert f"TensorBoard: tensorboard --logdir {run / 'tb'}" in err
    assert "\r" not in done.stderr  # no progress bar on a pipe
    out = done.stdout.splitlines()
    assert out[0].startswith("done: 12 steps, 384 tokens in ")
    assert f"evaluate: lmtrain eval {run}" in out
    assert f"sample:   lmtrain sample {run}" in out


def test_quiet_fit_prints_nothing(tmp_path: Path, tiny_files, capsys) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=6", "train.log_every=2")
    fit(cfg, quiet=True)
    assert capsys.readouterr() == ("", "")


def test_quiet_cli_keeps_evaluations_and_the_summary(tmp_path: Path, tiny_files, cli) -> None:
    path = _write_config(tmp_path, tiny_files, "train.max_steps=6", "train.log_every=2")
    loud = invoke(cli, "fit", path, "run.dir=" + str(tmp_path / "loud"))
    quiet = invoke(cli, "fit", path, "--quiet")
    assert loud.exit_code == quiet.exit_code == 0
    assert "step 2/6 | epoch 1 | loss" in loud.stderr
    assert "/6 | epoch" not in quiet.stderr
    assert "step 6 | epoch 1 |" in quiet.stderr and "| val loss" in quiet.stderr
    assert quiet.stdout.startswith("done: 6 steps")


# ---------------------------------------------------------------------------------------------
# TensorBoard


def test_tensorboard_tags_layout_and_hparams(tmp_path: Path, tiny_files) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(
        tmp_path, tiny_files, "data.tokenizer=char", "train.max_steps=6", "train.log_every=2",
        "train.eval_every=3", "run.tensorboard=true",
    )  # fmt: skip
    fit(cfg, quiet=True)
    tb = Path(cfg.run.dir) / "tb"
    assert [p for p in tb.iterdir() if p.is_dir()] == []  # hparams: no subdirectory
    acc = EventAccumulator(str(tb), size_guidance={"tensors": 0}).Reload()
    assert set(acc.Tags()["scalars"]) == {
        "train/loss", "train/ppl", "train/bpc",
        "val/loss", "val/ppl", "val/bpc", "val/bpb", "best/loss", "best/ppl", "best/bpc", "best/bpb",
        "watch/lr", "watch/grad_norm", "watch/grad_norm_max", "watch/tokens_per_sec",
    }  # fmt: skip
    assert [e.step for e in acc.Scalars("train/bpc")] == [2, 4, 6]
    assert [e.step for e in acc.Scalars("val/bpc")] == [3, 6]
    records = read_metrics(Path(cfg.run.dir))
    assert [e.value for e in acc.Scalars("watch/grad_norm_max")] == pytest.approx(
        [r["grad_norm_max"] for r in records if r["type"] == "train"], rel=1e-6
    )
    best = min(r["loss"] for r in records if r["type"] == "eval")
    assert acc.Scalars("best/loss")[0].value == pytest.approx(best, rel=1e-6)
    tensors = set(acc.Tags()["tensors"])
    assert "custom_scalars__config__" in tensors
    layout = acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    assert b"train/bpc" in layout and b"val/bpc" in layout
    hparams = acc.PluginTagToContent("hparams")
    assert set(hparams) == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info",
    }  # fmt: skip
    assert b"best/bpc" in hparams["_hparams_/experiment"]
    assert b"model.hidden_size" in hparams["_hparams_/session_start_info"]


# ---------------------------------------------------------------------------------------------
# Optional loggers


class _Recorder(types.ModuleType):
    """A stand-in for wandb or mlflow that records every call."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: list[tuple[str, tuple, dict]] = []

        def record(fn: str, returns: Any = None):
            def call(*args: Any, **kwargs: Any) -> Any:
                self.calls.append((fn, args, kwargs))
                return returns

            return call

        # What wandb.init and mlflow.start_run return: a run with its id.
        run = types.SimpleNamespace(summary={}, id="w1", log_artifact=record("log_artifact"))
        self.run = run
        for fn in (
            "log", "finish", "save", "log_params", "log_metrics", "end_run", "set_tracking_uri",
            "log_artifact", "log_artifacts",
        ):  # fmt: skip
            setattr(self, fn, record(fn))
        self.init = record("init", run)
        self.start_run = record(
            "start_run", types.SimpleNamespace(info=types.SimpleNamespace(run_id="m1"))
        )


def test_optional_loggers_get_the_same_points(tmp_path: Path, tiny_files, monkeypatch) -> None:
    wandb, mlflow = _Recorder("wandb"), _Recorder("mlflow")
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_steps=6", "train.log_every=2", "train.eval_every=3",
        "run.loggers=[wandb, mlflow]",
    )  # fmt: skip
    fit(cfg, quiet=True)
    logged = [(kw["step"], sorted(args[0])) for fn, args, kw in wandb.calls if fn == "log"]
    train_tags = sorted(
        ["train/loss", "train/ppl", "watch/lr", "watch/grad_norm", "watch/grad_norm_max",
         "watch/tokens_per_sec"]
    )  # fmt: skip
    assert logged == [
        (2, train_tags), (3, ["val/bpb", "val/loss", "val/ppl"]), (4, train_tags),
        (6, train_tags), (6, ["val/bpb", "val/loss", "val/ppl"]),
    ]  # fmt: skip
    assert wandb.calls[0][0] == "init" and wandb.calls[0][2]["config"] == cfg.to_dict()
    assert wandb.calls[-1] == ("finish", (), {"exit_code": 0})
    assert wandb.run.summary["status"] == "completed" and wandb.run.summary["steps"] == 6
    mlflow_steps = [kw.get("step") for fn, _, kw in mlflow.calls if fn == "log_metrics"]
    assert mlflow_steps == [2, 3, 4, 6, 6, 6]  # the last: the final figures, at the final step
    assert mlflow.calls[-1] == ("end_run", (), {"status": "FINISHED"})
    params = next(args[0] for fn, args, _ in mlflow.calls if fn == "log_params")
    assert params["train.lr"] == "0.01"


def test_a_logger_that_is_not_installed_fails_before_training(
    tmp_path: Path, tiny_files, monkeypatch, cli
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    path = _write_config(tmp_path, tiny_files, "train.max_steps=2", "run.loggers=[wandb]")
    r = invoke(cli, "fit", path)
    assert r.exit_code == 2
    assert "pip install wandb" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# A full disk


def test_full_disk_while_writing_metrics_exits_2(tmp_path: Path, tiny_files, monkeypatch, cli):
    # /dev/full answers every write with ENOSPC, as a full disk does.
    full = lambda path: (open("/dev/full", "a"), 0)  # noqa: E731, SIM115
    monkeypatch.setattr(metrics_files.files, "open_append", full)
    path = _write_config(tmp_path, tiny_files, "train.max_steps=6", "train.log_every=2")
    r = invoke(cli, "fit", path)
    assert r.exit_code == 2, r.stderr
    assert "metrics.jsonl: the disk is full" in r.stderr and "--resume auto" in r.stderr
    assert "Traceback" not in r.stderr


def test_full_disk_while_writing_tensorboard_exits_2(
    tmp_path: Path, tiny_files, monkeypatch, cli
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    path = _write_config(
        tmp_path, tiny_files, "train.max_steps=6", "train.log_every=2", "run.tensorboard=true"
    )
    r = invoke(cli, "fit", path)
    assert r.exit_code == 2, r.stderr
    assert f"cannot write {tmp_path / 'run' / 'tb'}: the disk is full" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# Skipped steps


def _poison_loss(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """A NaN training loss at the given steps (evaluation stays clean)."""
    from lmtrain.models.output import SoftmaxOutput

    real = SoftmaxOutput.nll
    count = {"step": 0}

    def nll(self: SoftmaxOutput, hidden: Any, targets: Any) -> Any:
        if not torch.is_grad_enabled():
            return real(self, hidden, targets)
        count["step"] += 1
        return real(self, hidden, targets) * (math.nan if count["step"] in steps else 1.0)

    monkeypatch.setattr(SoftmaxOutput, "nll", nll)


def test_a_window_of_skipped_steps_has_no_loss(tmp_path: Path, tiny_files, monkeypatch) -> None:
    _poison_loss(monkeypatch, {5, 6})
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=8", "train.log_every=2")
    fit(cfg, quiet=True)
    train = {r["step"]: r for r in read_metrics(Path(cfg.run.dir)) if r["type"] == "train"}
    assert train[6]["loss"] is None and train[6]["ppl"] is None  # not 0 and 1
    assert train[6]["grad_norm_max"] is None and train[6]["tokens"] == 6 * 32
    assert all(train[s]["loss"] > 0 for s in (2, 4, 8))
    results = json.loads((Path(cfg.run.dir) / "results.json").read_text())
    assert results["status"] == "completed" and results["nonfinite_steps"] == 2


def test_results_say_when_too_many_steps_were_skipped(
    tmp_path: Path, tiny_files, monkeypatch
) -> None:
    _poison_loss(monkeypatch, set(range(5, 100)))
    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_steps=20", "train.eval_every=4",
        "train.max_nonfinite_steps=2",
    )  # fmt: skip
    with pytest.raises(TrainingStopped) as stopped:
        fit(cfg, quiet=True)
    assert stopped.value.exit_code == 3
    results = json.loads((Path(cfg.run.dir) / "results.json").read_text())
    assert results["status"] == "nonfinite" and results["steps"] == 6
    assert results["best_val"]["step"] == 4
