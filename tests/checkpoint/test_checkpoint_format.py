"""The checkpoint format: typed, versioned, validated on load; what may change on resume; a full
disk during a save; non-regular files; the NaN guard's advice followed literally.

Each refusal is checked the way a user meets it: the exit code, the message naming the problem,
no traceback, and the run directory byte-identical afterwards."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import lmtrain
from conftest import invoke, tiny_config, write_config
from lmtrain.checkpoint import VERSION, Checkpoint, Progress, load_checkpoint
from lmtrain.checkpoint import storage as ckpt_mod
from lmtrain.errors import TrainingStopped
from lmtrain.models.output import SoftmaxOutput
from lmtrain.training import fit
from lmtrain.training.loop import Trainer

REPO = Path(lmtrain.__file__).resolve().parents[1]
RUN_STEPS = ("train.max_steps=8", "train.eval_every=4")


def _ckpts(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


def _hashes(directory: Path) -> dict[str, str]:
    """Every file under `directory` by relative path, with the SHA-256 of its bytes."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _replace(path: Path, raw: dict[str, Any]) -> None:
    """Write `raw` as the file at `path`, breaking any hard link (last.pt shares its inode)."""
    tmp = path.with_name("replacement.tmp-test")
    torch.save(raw, tmp)
    os.replace(tmp, path)


@pytest.fixture
def trained(tmp_path: Path, tiny_files: dict[str, Path]) -> Path:
    """A finished 8-step run (checkpoints at steps 4 and 8); returns its config file."""
    config = write_config(tmp_path, tiny_files, *RUN_STEPS)
    fit(tiny_config(tmp_path, tiny_files, *RUN_STEPS), quiet=True)
    return config


# ---------------------------------------------------------------------------------------------
# The format


def test_checkpoint_is_typed_versioned_and_names_its_run(trained, tmp_path):
    last = load_checkpoint(_ckpts(tmp_path) / "last.pt")
    assert isinstance(last, Checkpoint) and last.version == VERSION == 2
    assert isinstance(last.progress, Progress) and last.progress.step == 8
    assert re.fullmatch(r"[0-9a-f]{32}", last.run_id)
    assert load_checkpoint(_ckpts(tmp_path) / "step-00000004.pt").run_id == last.run_id
    raw = torch.load(_ckpts(tmp_path) / "last.pt", weights_only=True)
    assert raw["format"] == "lmtrain-checkpoint" and raw["version"] == 2
    assert raw["progress"]["eval_pending"] is False


def _as_version_1(ck: Checkpoint) -> dict[str, Any]:
    """The dict today's format had before version 2: no run_id, NT-ASGD under "ntasgd"."""
    raw = ck.to_dict()
    raw["version"] = 1
    del raw["run_id"]
    averager = raw.pop("averager")
    if averager is not None:
        raw["ntasgd"] = averager
    if raw["grad_scaler"] is None:
        del raw["grad_scaler"]
    del raw["progress"]["eval_pending"]
    return raw


def test_version_1_checkpoint_still_evaluates_and_resumes(trained, tmp_path, cli):
    last = _ckpts(tmp_path) / "last.pt"
    before = invoke(cli, "eval", last, "--json")
    assert before.exit_code == 0, before.output
    _replace(last, _as_version_1(load_checkpoint(last)))
    old = load_checkpoint(last)
    assert old.version == 1 and old.run_id == "" and old.progress.step == 8
    after = invoke(cli, "eval", last, "--json")
    assert after.exit_code == 0, after.output
    assert after.stdout == before.stdout
    result = invoke(cli, "fit", trained, "train.max_steps=12", "--resume", "auto", "--quiet")
    assert result.exit_code == 0, result.output
    assert "resuming at step 8" in result.stderr
    assert load_checkpoint(last).version == 2 and load_checkpoint(last).progress.step == 12


def test_version_1_ntasgd_state_becomes_the_averager(tmp_path, tiny_files):
    extra = ("train.optimizer=ntasgd", "train.lr=5", "train.eval_every=2", "train.nonmono=1")
    fit(tiny_config(tmp_path, tiny_files, "train.epochs=1", *extra), quiet=True)
    last = _ckpts(tmp_path) / "last.pt"
    new = load_checkpoint(last)
    assert new.averager is not None and new.averager["averaging"]
    _replace(last, _as_version_1(new))
    old = load_checkpoint(last)
    assert old.averager is not None and old.averager["count"] == new.averager["count"]
    for k, v in new.averager["raw"].items():
        assert torch.equal(old.averager["raw"][k], v), k


def _set(path: str, value: Any):
    def edit(raw: dict[str, Any]) -> None:
        *parents, leaf = path.split("/")
        d = raw
        for key in parents:
            d = d[key]
        d[leaf] = value

    return edit


def _delete(key: str):
    def edit(raw: dict[str, Any]) -> None:
        del raw[key]

    return edit


BROKEN = {
    "missing optimizer": (_delete("optimizer"), "'optimizer' is missing"),
    "missing progress": (_delete("progress"), "'progress' is missing"),
    "step as text": (
        _set("progress/step", "7"),
        "'progress.step' should be a whole number >= 0, not str '7'",
    ),
    "negative tokens": (
        _set("progress/tokens", -5),
        "'progress.tokens' should be a whole number >= 0, not int -5",
    ),
    "schedule is None": (_set("schedule", None), "'schedule' should be a dict, not None"),
    "rng of floats": (
        _set("rng/torch", torch.zeros(3)),
        "'rng.torch' should be a uint8 tensor, not a torch.float32 tensor of shape (3,)",
    ),
    "vocabulary not a list": (
        _set("vocab/itos", 5),
        "'vocab.itos' should be a non-empty list of strings, not int 5",
    ),
    "weight not a tensor": (
        _set("model/embedding.weight", [1.0, 2.0]),
        "'model[embedding.weight]' should be a tensor, not list [1.0, 2.0]",
    ),
    "unknown field": (_set("surprise", 1), "'surprise': unknown field for format version 2"),
    "future version": (
        _set("version", 3),
        "written by a newer lmtrain (checkpoint format version 3; this lmtrain reads versions "
        "1 to 2). Upgrade lmtrain",
    ),
    "version as text": (_set("version", "2"), "its format version is '2', not a whole number"),
    "schedule scale NaN": (
        _set("schedule/scale", math.nan),
        "'schedule.scale' should be a finite number >= 0, not float nan",
    ),
    "negative bad_evals": (
        _set("schedule/bad_evals", -1),
        "'schedule.bad_evals' should be a whole number >= 0, not int -1",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_invalid_checkpoint_is_refused_by_name(case, trained, tmp_path, cli):
    edit, message = BROKEN[case]
    raw = torch.load(_ckpts(tmp_path) / "last.pt", weights_only=True)
    edit(raw)
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    before = _hashes(tmp_path / "run")
    for args in (("eval", bad), ("sample", bad), ("fit", trained, "--resume", bad)):
        result = invoke(cli, *args)
        assert result.exit_code == 2, (args, result.output)
        assert f"{bad}: " in result.stderr and message in result.stderr, result.stderr
        assert "Traceback" not in result.output
    assert _hashes(tmp_path / "run") == before


def test_several_problems_are_named_at_once(trained, tmp_path, cli):
    raw = torch.load(_ckpts(tmp_path) / "last.pt", weights_only=True)
    del raw["optimizer"]
    raw["progress"]["step"] = 1.5
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    result = invoke(cli, "eval", bad)
    assert result.exit_code == 2
    assert "'optimizer' is missing" in result.stderr
    assert "'progress.step' should be a whole number >= 0, not float 1.5" in result.stderr


def _wrong_carried_state(raw: dict[str, Any]) -> None:
    raw["carried_state"] = [torch.zeros(2, 4, 5), torch.zeros(2, 4, 5)]


def _carried_rows(rows: int) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw["carried_state"] = [t[:, :1].expand(-1, rows, -1).clone() for t in raw["carried_state"]]

    return edit


def _wrong_adam_moment(raw: dict[str, Any]) -> None:
    state = raw["optimizer"]["state"]
    state[0]["exp_avg"] = torch.zeros(3, 3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _wrong_carried_state,
            "the carried recurrent state has shape(s) (2, 4, 5), (2, 4, 5); this model's is "
            "(2, rows, 16), (2, rows, 16)",
        ),
        (_wrong_adam_moment, "optimizer state 'exp_avg' has shape (3, 3) for a parameter"),
        (
            _carried_rows(2),
            "the carried recurrent state has 2 rows; train.batch_size is 4 and stream mode "
            "carries every stream",
        ),
        (_carried_rows(8), "the carried recurrent state has 8 rows; train.batch_size is 4"),
    ],
)
def test_state_of_the_wrong_shape_is_refused_before_training(edit, message, trained, tmp_path, cli):
    last = _ckpts(tmp_path) / "last.pt"
    raw = torch.load(last, weights_only=True)
    edit(raw)
    _replace(last, raw)
    before = _hashes(tmp_path / "run")
    result = invoke(cli, "fit", trained, "train.max_steps=12", "--resume", "auto")
    assert result.exit_code == 2, result.output
    assert "cannot resume" in result.stderr and message in result.stderr
    assert "Traceback" not in result.output
    assert _hashes(tmp_path / "run") == before


# ---------------------------------------------------------------------------------------------
# Config changes on resume


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("train.batch_size=8", "train.batch_size (checkpoint: 4, now: 8)"),
        ("train.optimizer=sgd", "train.optimizer (checkpoint: 'adam', now: 'sgd')"),
        ("train.bptt=16", "train.bptt (checkpoint: 8, now: 16)"),
        ("train.seed=7", "train.seed (checkpoint: 1, now: 7)"),
        ("train.precision=bf16", "train.precision (checkpoint: 'fp32', now: 'bf16')"),
        ("train.variable_bptt=true", "train.variable_bptt (checkpoint: False, now: True)"),
        ("data.mode=sentences", "data.mode (checkpoint: 'stream', now: 'sentences')"),
        ("data.min_freq=2", "data.min_freq (checkpoint: 1, now: 2)"),
        ("model.dropout=0.5", "model.dropout (checkpoint: 0.0, now: 0.5)"),
        ("OTHER_TRAIN_FILE", "data.train (checkpoint: "),
    ],
)
def test_config_change_that_cannot_apply_is_refused_by_name(
    override, shown, trained, tmp_path, tiny_files, cli
):
    if override == "OTHER_TRAIN_FILE":
        other = tmp_path / "other.txt"
        other.write_bytes(tiny_files["train"].read_bytes())
        override = f"data.train={other}"
    before = _hashes(tmp_path / "run")
    result = invoke(cli, "fit", trained, override, "--resume", "auto", "--quiet")
    assert result.exit_code == 2, result.output
    assert "cannot change on resume" in result.stderr and shown in result.stderr
    assert "Traceback" not in result.output
    assert _hashes(tmp_path / "run") == before


def test_every_refused_key_is_named_at_once(trained, tmp_path, cli):
    result = invoke(cli, "fit", trained, "train.batch_size=8", "train.bptt=16", "--resume", "auto")
    assert result.exit_code == 2
    assert "2 setting(s) differ" in result.stderr
    assert "train.batch_size (checkpoint: 4, now: 8)" in result.stderr
    assert "train.bptt (checkpoint: 8, now: 16)" in result.stderr


def test_allowed_changes_apply_from_the_resume_step_and_are_announced(tmp_path, tiny_files, cli):
    first = ("train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.0")
    config = write_config(tmp_path, tiny_files, *RUN_STEPS, *first)
    assert invoke(cli, "fit", config, "--quiet").exit_code == 0
    changes = (
        "train.max_steps=12",
        "train.lr=0.005",
        "train.momentum=0.9",
        "train.weight_decay=0.001",
        "train.log_every=3",
        "run.keep_last=3",
    )
    result = invoke(cli, "fit", config, *changes, "--resume", "auto", "--quiet")
    assert result.exit_code == 0, result.output
    assert "train.lr changed from 0.01 to 0.005" in result.stderr
    assert "train.momentum changed from 0.0 to 0.9" in result.stderr
    last = load_checkpoint(_ckpts(tmp_path) / "last.pt")
    assert last.progress.step == 12
    group = last.optimizer["param_groups"][0]
    # torch would have restored the saved momentum and weight decay; the new ones are used.
    assert group["lr"] == 0.005 and group["momentum"] == 0.9 and group["weight_decay"] == 0.001
    assert any("momentum_buffer" in s for s in last.optimizer["state"].values())


# ---------------------------------------------------------------------------------------------
# Files that are not regular files


def _lmtrain(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "lmtrain", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,  # a FIFO that is opened for reading would block until then
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_non_regular_file_is_refused_before_reading(kind, trained, tmp_path):
    if kind == "fifo":
        target = tmp_path / "pipe.pt"
        os.mkfifo(target)
        message = f"{target}: is a named pipe (FIFO), not a checkpoint file; nothing was read"
    else:
        target = Path("/dev/zero")
        message = "/dev/zero: is a character device, not a checkpoint file; nothing was read"
    before = _hashes(tmp_path / "run")
    for args in (("eval", target), ("fit", trained, "--resume", target)):
        done = _lmtrain(*args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
    assert _hashes(tmp_path / "run") == before


# ---------------------------------------------------------------------------------------------
# A full disk during a save


def _disk_fills_at_second_save(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The first checkpoint write succeeds; the second finds the disk full part-way through."""
    real_save = torch.save
    calls = {"n": 0}

    class FullDisk:
        def __init__(self, f: Any) -> None:
            self.f, self.written = f, 0

        def write(self, data: bytes) -> int:
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_save(obj, f, *args, **kwargs)
        if how == "torch's RuntimeError":
            # torch's zip writer turns the failed write into "[enforce fail at
            # inline_container.cc] ... unexpected pos", with the OSError as its context.
            return real_save(obj, FullDisk(f), *args, **kwargs)
        if how == "bare RuntimeError":  # what torch says when it writes to a path itself
            f.write(b"PK\x03\x04 partial")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                "file data/0: file write failed"
            )
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod.torch, "save", save)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("torch's RuntimeError", "(No space left on device)"),
        ("OSError", "(No space left on device)"),
        ("bare RuntimeError", "PytorchStreamWriter failed writing file data/0"),
    ],
)
def test_full_disk_during_a_save_exits_2_and_keeps_the_previous_checkpoint(
    how, reason, tmp_path, tiny_files, cli, monkeypatch
):
    config = write_config(tmp_path, tiny_files, *RUN_STEPS)
    _disk_fills_at_second_save(monkeypatch, how)
    result = invoke(cli, "fit", config, "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert "could not write the checkpoint" in result.stderr and reason in result.stderr
    assert "the previous checkpoint, if any, is unchanged" in result.stderr
    assert "Traceback" not in result.output
    assert load_checkpoint(_ckpts(tmp_path) / "last.pt").progress.step == 4
    assert not [p for p in _ckpts(tmp_path).iterdir() if p.name.endswith(".tmp")]
    # And the run continues from there once space is back.
    again = invoke(cli, "fit", config, "--resume", "auto", "--quiet")
    assert again.exit_code == 0, again.output
    assert load_checkpoint(_ckpts(tmp_path) / "last.pt").progress.step == 8


# ---------------------------------------------------------------------------------------------
# The NaN guard


def _poison(monkeypatch: pytest.MonkeyPatch, calls: set[int]) -> None:
    """NaN training loss at the given training forward passes (1-based, counted from now)."""
    real = SoftmaxOutput.nll
    count = {"n": 0}

    def nll(self: SoftmaxOutput, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return real(self, hidden, targets)  # evaluation stays clean
        count["n"] += 1
        out = real(self, hidden, targets)
        return out * float("nan") if count["n"] in calls else out

    monkeypatch.setattr(SoftmaxOutput, "nll", nll)


def test_nan_guard_advice_followed_literally_continues_the_run(
    tmp_path, tiny_files, cli, monkeypatch
):
    config = write_config(
        tmp_path,
        tiny_files,
        "train.max_steps=20",
        "train.eval_every=2",
        "train.max_nonfinite_steps=3",
        "run.keep_last=1",
    )
    _poison(monkeypatch, {5, 6, 7})  # evaluations at 6 fall inside the streak
    result = invoke(cli, "fit", config, "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 3, result.output
    assert "stopped at step 7: 3 consecutive steps had a NaN" in result.stderr
    assert "newest from step 4" in result.stderr
    # Nothing was written during the streak, so the newest checkpoint is from a good step and
    # keep_last did not prune it away.
    names = sorted(p.name for p in _ckpts(tmp_path).iterdir())
    assert names == ["best.pt", "last.pt", "step-00000004.pt"]
    assert load_checkpoint(_ckpts(tmp_path) / "last.pt").progress.step == 4

    advice = re.search(r"`lmtrain fit CONFIG (.*?) --resume auto`", result.stderr)
    assert advice is not None, result.stderr
    assert advice.group(1) == "train.lr=0.005"
    assert "restarts at 0" in result.stderr
    # Following it: even if the first resumed step is still non-finite, the run goes on.
    _poison(monkeypatch, {1})
    again = invoke(cli, "fit", config, *advice.group(1).split(), "--resume", "auto", "--quiet")
    assert again.exit_code == 0, again.output
    assert "resuming at step 4" in again.stderr
    last = load_checkpoint(_ckpts(tmp_path) / "last.pt")
    assert last.progress.step == 20 and last.progress.nonfinite_steps == 1


def test_nan_guard_before_the_first_checkpoint_advises_starting_again(
    tmp_path, tiny_files, cli, monkeypatch
):
    # The streak comes before the first evaluation, so the run has no checkpoint at all:
    # `--resume auto` could only fail, and the run directory must accept a fresh start.
    config = write_config(
        tmp_path, tiny_files, "train.max_steps=8", "train.eval_every=4",
        "train.max_nonfinite_steps=2",
    )  # fmt: skip
    _poison(monkeypatch, {2, 3})
    result = invoke(cli, "fit", config, "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 3, result.output
    message = " ".join(result.stderr.split())
    assert "no checkpoint was ever saved, so there is nothing to resume" in message
    advice = re.search(r"start the run again with `lmtrain fit CONFIG (.*?)`", message)
    assert advice is not None and advice.group(1) == "train.lr=0.005", message
    assert "--resume" not in message
    again = invoke(cli, "fit", config, *advice.group(1).split(), "--quiet")
    assert again.exit_code == 0, again.output
    assert "stopped before its first checkpoint" in again.stderr
    assert load_checkpoint(_ckpts(tmp_path) / "last.pt").progress.step == 8
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if r["type"] == "eval"] == [4, 8]


def test_consecutive_non_finite_count_restarts_on_resume(tmp_path, tiny_files, monkeypatch):
    """A checkpoint written mid-streak (a signal stopped the run there) stays usable."""
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=16", "train.max_nonfinite_steps=3")
    _poison(monkeypatch, {5, 6})
    real_step = Trainer.train_step

    def step(trainer: Trainer, batch: Any) -> Any:
        out = real_step(trainer, batch)
        if trainer.progress.step + 1 == 6:
            signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(TrainingStopped) as stopped:
        fit(cfg, quiet=True)
    assert stopped.value.exit_code == 143
    saved = load_checkpoint(_ckpts(tmp_path) / "last.pt")
    assert saved.progress.step == 6 and saved.progress.nonfinite_run == 2
    monkeypatch.undo()
    _poison(monkeypatch, {1})  # one more bad step: 1 in a row now, not 3
    result = fit(cfg, resume="auto", quiet=True)
    assert result.progress.step == 16 and result.progress.nonfinite_steps == 3
