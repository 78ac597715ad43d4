"""The run directory lmtrain owns: lock, manifest, fork, rewind, and files it did not write.

Each test injects one fault or hostile situation and checks what a user notices: the exit code,
the message, and that every file that existed before is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lmtrain
from conftest import disk_full_for, invoke, tiny_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.rundir import open_directory
from lmtrain.training import fit

REPO = Path(lmtrain.__file__).resolve().parents[1]
RUN_ARGS = ("train.max_steps=12", "train.eval_every=4", "run.keep_last=3")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (hidden ones included), by relative path."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_kept(before: dict[str, str], root: Path) -> None:
    """Every file of `before` is still there, byte for byte."""
    after = snapshot(root)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"changed or removed: {changed}"


def _config_file(tmp_path: Path, files: dict[str, Path], *overrides: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(tiny_config(tmp_path, files, *RUN_ARGS, *overrides).to_yaml(), "utf-8")
    return path


def _manifest(run: Path) -> dict:
    return json.loads((run / ".lmtrain" / "manifest.json").read_text())


def _step(path: Path) -> int:
    return load_checkpoint(path).progress.step


@pytest.fixture
def run_a(tmp_path: Path, tiny_files: dict[str, Path]) -> Path:
    """A finished run: checkpoints at steps 4, 8 and 12 (keep_last 3), in tmp_path/run."""
    fit(tiny_config(tmp_path, tiny_files, *RUN_ARGS), quiet=True)
    return tmp_path / "run"


# ---------------------------------------------------------------------------------------------
# Fork


def test_fork_into_a_directory_holding_another_run_is_refused(run_a, tmp_path, tiny_files, cli):
    config = _config_file(tmp_path, tiny_files)
    run_b = tmp_path / "run_b"
    assert invoke(cli, "fit", config, f"run.dir={run_b}", "train.max_steps=4", "-q").exit_code == 0
    before_a, before_b = snapshot(run_a), snapshot(run_b)
    result = invoke(
        cli, "fit", config, f"run.dir={run_b}", "--resume", run_a / "checkpoints" / "last.pt"
    )
    assert result.exit_code == 2, result.output
    assert f"run directory {run_b} already holds a different run" in result.stderr
    assert "fork" in result.stderr and "nothing was changed" in result.stderr
    assert snapshot(run_b) == before_b and snapshot(run_a) == before_a


def test_fork_into_a_new_directory_records_its_parent(run_a, tmp_path, tiny_files, cli):
    config = _config_file(tmp_path, tiny_files)
    before_a = snapshot(run_a)
    fork = tmp_path / "fork"
    source = run_a / "checkpoints" / "step-00000008.pt"
    result = invoke(
        cli, "fit", config, f"run.dir={fork}", "train.max_steps=16", "--resume", source, "-q"
    )
    assert result.exit_code == 0, result.output
    assert f"fork: a new run in {fork} continues from {source} (step 8)" in result.stderr
    assert "resuming at step 8" in result.stderr
    assert snapshot(run_a) == before_a  # the parent is only read
    parent, child = _manifest(run_a), _manifest(fork)
    assert child["run_id"] != parent["run_id"]
    assert child["parent"] == {
        "run_id": parent["run_id"],
        "checkpoint": str(source.resolve()),
        "step": 8,
    }
    last = load_checkpoint(fork / "checkpoints" / "last.pt")
    assert last.progress.step == 16 and last.run_id == child["run_id"]
    # best.pt: the lowest validation loss of the fork's lineage (the parent's up to step 8).
    best = load_checkpoint(fork / "checkpoints" / "best.pt").progress
    assert best.last_val_loss == best.best_val_loss == last.progress.best_val_loss


def test_resume_from_a_run_directory_means_its_newest_checkpoint(run_a, tmp_path, tiny_files, cli):
    config = _config_file(tmp_path, tiny_files)
    fork = tmp_path / "fork"
    result = invoke(cli, "fit", config, f"run.dir={fork}", "train.max_steps=14", "--resume", run_a)
    assert result.exit_code == 0, result.output
    assert "resuming at step 12" in result.stderr and "fork:" in result.stderr
    # The run's own directory: a plain continue.
    result = invoke(cli, "fit", config, "train.max_steps=16", "--resume", run_a, "-q")
    assert result.exit_code == 0, result.output
    assert "resuming at step 12" in result.stderr and "fork" not in result.stderr
    assert _step(run_a / "checkpoints" / "last.pt") == 16


# ---------------------------------------------------------------------------------------------
# Rewind


def test_rewind_keeps_its_source_moves_the_abandoned_branch_and_best_is_its_lineages(
    run_a, tmp_path, tiny_files, cli
):
    ckpts = run_a / "checkpoints"
    losses = {
        s: load_checkpoint(ckpts / f"step-{s:08d}.pt").progress.last_val_loss for s in (4, 8, 12)
    }
    assert losses[12] < losses[8] < losses[4], "the tiny run must improve at every evaluation"
    assert _step(ckpts / "best.pt") == 12
    before = snapshot(ckpts)
    config = _config_file(tmp_path, tiny_files)
    # A much smaller learning rate: the new branch improves on step 8, but less than the old one.
    result = invoke(
        cli, "fit", config, "train.lr=0.001", "train.max_steps=20", "--resume",
        ckpts / "step-00000008.pt", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    aside = ckpts / "abandoned-00000008-00000012"
    assert (
        f"rewind to step 8: 3 checkpoint(s) of the abandoned branch (up to step 12) were "
        f"moved to {aside}, unchanged" in result.stderr
    )
    # The abandoned branch, byte for byte, out of the lineage's way.
    for name in ("step-00000012.pt", "last.pt", "best.pt"):
        assert snapshot(aside)[name] == before[name]
    # The checkpoint resumed from is never deleted, however many saves follow.
    assert snapshot(ckpts)["step-00000008.pt"] == before["step-00000008.pt"]
    assert _step(ckpts / "last.pt") == 20
    lineage = [load_checkpoint(ckpts / f"step-{s:08d}.pt").progress for s in (8, 12, 16, 20)]
    new_12 = lineage[1].last_val_loss
    assert losses[8] > new_12 > losses[12], "the new branch must be worse than the abandoned one"
    best = load_checkpoint(ckpts / "best.pt").progress
    assert best.last_val_loss == min(losses[4], *(p.last_val_loss for p in lineage))
    assert best.last_val_loss > losses[12]  # not the abandoned branch's model
    # --resume auto continues the new branch, not the abandoned one.
    result = invoke(cli, "fit", config, "train.lr=0.001", "train.max_steps=24", "--resume", "auto")
    assert result.exit_code == 0 and "resuming at step 20" in result.stderr
    assert snapshot(aside) == {k: before[k] for k in ("step-00000012.pt", "last.pt", "best.pt")}


def test_rewind_to_a_step_whose_best_is_older_links_that_best(run_a, tmp_path, tiny_files, cli):
    ckpts = run_a / "checkpoints"
    config = _config_file(tmp_path, tiny_files)
    result = invoke(
        cli, "fit", config, "--resume", ckpts / "step-00000004.pt", "train.max_steps=4", "-q"
    )
    assert result.exit_code == 0, result.output
    # Rewound to 4 and already done: best.pt and last.pt are the step-4 checkpoint.
    assert (ckpts / "best.pt").samefile(ckpts / "step-00000004.pt")
    assert (ckpts / "last.pt").samefile(ckpts / "step-00000004.pt")
    assert sorted(p.name for p in (ckpts / "abandoned-00000004-00000012").iterdir()) == [
        "best.pt", "last.pt", "step-00000008.pt", "step-00000012.pt",
    ]  # fmt: skip


def test_pruning_keeps_the_best_a_rewind_would_need(tmp_path, tiny_files):
    def run(*extra: str, resume: str | None = None) -> None:
        cfg = tiny_config(tmp_path, tiny_files, "train.eval_every=2", "run.keep_last=2", *extra)
        fit(cfg, resume=resume, quiet=True)

    ckpts = tmp_path / "run" / "checkpoints"
    run("train.max_steps=8")  # improves at every evaluation: best at step 8
    run("train.max_steps=12", "train.lr=1e-12", resume="auto")  # no improvement at 10, 12
    run("train.max_steps=14", resume="auto")  # a new best at 14
    # keep_last 2 keeps 14 and 12, and 8: the best of step 12's lineage.
    assert sorted(p.name for p in ckpts.glob("step-*")) == [
        "step-00000008.pt", "step-00000012.pt", "step-00000014.pt",
    ]  # fmt: skip
    losses = {s: load_checkpoint(ckpts / f"step-{s:08d}.pt").progress for s in (8, 12, 14)}
    assert losses[14].last_val_loss < losses[8].last_val_loss == losses[12].best_val_loss
    run("train.max_steps=12", resume=str(ckpts / "step-00000012.pt"))
    assert (ckpts / "best.pt").samefile(ckpts / "step-00000008.pt")


def test_abandoned_branch_can_be_forked_but_not_continued_in_place(
    run_a, tmp_path, tiny_files, cli
):
    ckpts = run_a / "checkpoints"
    config = _config_file(tmp_path, tiny_files)
    invoke(cli, "fit", config, "--resume", ckpts / "step-00000008.pt", "train.max_steps=8")
    old = ckpts / "abandoned-00000008-00000012" / "last.pt"
    before = snapshot(run_a)
    result = invoke(cli, "fit", config, "--resume", old)
    assert result.exit_code == 2
    assert "belongs to a branch of this run abandoned by a rewind" in result.stderr
    assert snapshot(run_a) == before
    result = invoke(cli, "fit", config, f"run.dir={tmp_path / 'b'}", "--resume", old, "-q")
    assert result.exit_code == 0, result.output
    assert _step(tmp_path / "b" / "checkpoints" / "last.pt") == 12


# ---------------------------------------------------------------------------------------------
# Files lmtrain did not write


@pytest.mark.parametrize("name", [".write-test", "tb", "step-00000007.pt", "notes.txt"])
def test_new_run_refuses_a_directory_holding_other_files(name, tmp_path, tiny_files, cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_bytes(b"mine")
    before = snapshot(run)
    result = invoke(cli, "fit", _config_file(tmp_path, tiny_files))
    assert result.exit_code == 2
    assert f"run directory {run} holds files lmtrain did not write ({name})" in result.stderr
    assert snapshot(run) == before and sorted(os.listdir(run)) == [name]


def test_a_user_file_named_like_lmtrains_bookkeeping_is_refused(tmp_path, tiny_files, cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lmtrain").write_bytes(b"mine")
    result = invoke(cli, "fit", _config_file(tmp_path, tiny_files))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{run / '.lmtrain'} cannot be created (it exists and is not lmtrain's" in result.stderr
    assert (run / ".lmtrain").read_bytes() == b"mine" and os.listdir(run) == [".lmtrain"]


def test_resume_never_touches_user_files_in_the_run(run_a, tmp_path, tiny_files, cli):
    planted = {
        run_a / ".write-test": b"a",
        run_a / "notes.txt": b"b",
        run_a / "checkpoints" / "step-00000014.pt": b"c",  # a name the resumed run will want
        run_a / "checkpoints" / "step-00000002.pt": b"d",
        run_a / "checkpoints" / ".mine.tmp": b"e",
        run_a / "checkpoints" / ".last.pt.tmp": b"f",
    }
    for path, data in planted.items():
        path.write_bytes(data)
    config = _config_file(tmp_path, tiny_files, "train.eval_every=2", "run.keep_last=1")
    result = invoke(cli, "fit", config, "train.max_steps=18", "--resume", "auto", "-q")
    assert result.exit_code == 0, result.output
    assert "step-00000014.pt was not written by lmtrain; it is left untouched" in result.stderr
    assert {p: p.read_bytes() for p in planted} == planted
    assert _step(run_a / "checkpoints" / "last.pt") == 18
    # Never read as a checkpoint of the run, even when it is the newest-looking one.
    (run_a / "checkpoints" / "step-00000099.pt").write_bytes(b"not a checkpoint")
    result = invoke(cli, "fit", config, "train.max_steps=20", "--resume", "auto", "-q")
    assert result.exit_code == 0 and "skips" not in result.stderr


def test_resume_refuses_a_user_file_where_lmtrain_must_write(run_a, tmp_path, tiny_files, cli):
    (run_a / "tb").write_bytes(b"my file called tb")
    before = snapshot(run_a)
    config = _config_file(tmp_path, tiny_files, "run.tensorboard=true")
    result = invoke(cli, "fit", config, "train.max_steps=14", "--resume", "auto")
    assert result.exit_code == 2, result.output
    assert f"run directory {run_a} holds tb, which lmtrain did not write" in result.stderr
    assert "Traceback" not in result.output
    assert snapshot(run_a) == before


def test_resume_auto_on_a_folder_that_is_not_a_run_changes_nothing(tmp_path, tiny_files, cli):
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    for name in (".write-test", "a.tmp", "checkpoints/.x.tmp", "checkpoints/.last.pt.ab12.tmp"):
        (folder / name).write_bytes(b"user data")
    before = snapshot(folder)
    result = invoke(cli, "fit", _config_file(tmp_path, tiny_files), "--resume", "auto")
    assert result.exit_code == 2
    assert "no checkpoint in" in result.stderr and "nothing to resume" in result.stderr
    assert snapshot(folder) == before and not (folder / ".lmtrain").exists()


def test_damaged_manifest_stops_with_nothing_changed(run_a, tmp_path, tiny_files, cli):
    (run_a / ".lmtrain" / "manifest.json").write_text("{not json")
    before = snapshot(run_a)
    result = invoke(cli, "fit", _config_file(tmp_path, tiny_files), "--resume", "auto")
    assert result.exit_code == 2
    assert "manifest.json is damaged" in result.stderr and "changes nothing" in result.stderr
    assert snapshot(run_a) == before


# ---------------------------------------------------------------------------------------------
# Lock: one process per run directory

_HOLDER = textwrap.dedent(
    """
    import sys
    from lmtrain.config import load_config
    from lmtrain.rundir import open_directory
    cfg = load_config(sys.argv[1], [])
    run, start = open_directory(cfg, "auto")
    print("READY", flush=True)
    sys.stdin.read()
    run.close()
    """
)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def _hold(config: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY", proc.stderr
    return proc


@pytest.mark.slow
def test_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(
    run_a, tmp_path, tiny_files, cli
):
    config = _config_file(tmp_path, tiny_files)
    holder = _hold(config)
    try:
        # The holder's write in progress: another lmtrain must not delete it.
        in_progress = run_a / "checkpoints" / f".last.pt.{holder.pid}.0123abcd.tmp"
        in_progress.write_bytes(b"half a checkpoint")
        before = snapshot(run_a)
        for args in (("--resume", "auto"), ("--resume", run_a / "checkpoints" / "last.pt")):
            result = invoke(cli, "fit", config, "train.max_steps=14", *args)
            assert result.exit_code == 2, result.output
            assert f"run directory {run_a} is in use by process {holder.pid}" in result.stderr
            assert snapshot(run_a) == before
    finally:
        holder.kill()  # dies holding the lock: no clean release
        holder.communicate()
    result = invoke(cli, "fit", config, "train.max_steps=14", "--resume", "auto", "-q")
    assert result.exit_code == 0, result.output
    assert f"locked by process {holder.pid}" in result.stderr
    assert "no longer running" in result.stderr and "taking it over" in result.stderr
    assert f"removed {in_progress}, an unfinished checkpoint write" in result.stderr
    assert (run_a / ".lmtrain" / "lock").read_bytes() == b""  # released cleanly this time


@pytest.mark.slow
def test_two_fits_on_one_directory_one_wins(tmp_path, tiny_files):
    config = _config_file(tmp_path, tiny_files, "train.max_steps=40", "train.eval_every=10")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lmtrain", "fit", str(config), "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )  # fmt: skip
        for _ in range(2)
    ]
    outcomes = sorted((p.wait(timeout=300), p.communicate()[1]) for p in procs)
    (ok, _), (refused, message) = outcomes
    assert (ok, refused) == (0, 2), outcomes
    assert "is in use by process" in message or "already holds a run" in message
    assert _step(tmp_path / "run" / "checkpoints" / "last.pt") == 40


@pytest.mark.slow
def test_a_process_stopped_by_sigterm_releases_the_lock(tmp_path, tiny_files, cli):
    config = _config_file(tmp_path, tiny_files, "train.max_steps=100000", "train.epochs=10000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmtrain", "fit", str(config), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "locked" not in err and (tmp_path / "run" / ".lmtrain" / "lock").read_bytes() == b""
    result = invoke(cli, "fit", config, "train.max_steps=4", "--resume", "auto", "-q")
    assert result.exit_code == 0 and "taking it over" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Disk full while writing config.yaml or the manifest


@pytest.mark.parametrize("victim", ["config.yaml", "manifest.json"])
def test_disk_full_writing_run_files_keeps_the_previous_ones(
    victim, run_a, tmp_path, tiny_files, cli, monkeypatch
):
    before = snapshot(run_a)
    disk_full_for(monkeypatch, victim)
    config = _config_file(tmp_path, tiny_files)
    result = invoke(cli, "fit", config, "train.max_steps=14", "--resume", "auto")
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert f"{victim}: cannot be written (the disk is full)" in result.stderr
    assert "previous version, if any, is unchanged" in result.stderr
    assert "Traceback" not in result.output
    assert_kept({k: v for k, v in before.items() if k != ".lmtrain/manifest.json"}, run_a)
    assert not [p for p in run_a.rglob("*.tmp")]
    if victim == "manifest.json":
        assert snapshot(run_a) == before
    # The run is still whole: it resumes.
    result = invoke(cli, "fit", config, "train.max_steps=14", "--resume", "auto", "-q")
    assert result.exit_code == 0 and _step(run_a / "checkpoints" / "last.pt") == 14


# ---------------------------------------------------------------------------------------------
# The directory a failed start leaves behind


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path, tiny_files, cli):
    config = _config_file(tmp_path, tiny_files, f"data.train={tmp_path / 'missing.txt'}")
    result = invoke(cli, "fit", config)
    assert result.exit_code == 2 and "file not found" in result.stderr
    assert not (tmp_path / "run").exists()
    assert invoke(cli, "fit", _config_file(tmp_path, tiny_files), "-q").exit_code == 0


def test_library_open_reports_the_decision(run_a, tmp_path, tiny_files):
    cfg = tiny_config(tmp_path, tiny_files, *RUN_ARGS)
    run, start = open_directory(cfg, "auto", warn=lambda _: None)
    try:
        assert start.kind == "continue" and start.checkpoint is not None
        assert start.checkpoint.progress.step == 12 and start.source == run.checkpoints / "last.pt"
        assert run.run_id == _manifest(run_a)["run_id"] == start.checkpoint.run_id
    finally:
        run.close()
    run, start = open_directory(cfg, str(run.checkpoints / "step-00000004.pt"), print)
    run.close()
    assert start.kind == "rewind"
