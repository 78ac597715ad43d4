"""Fault injection: damaged and untrusted checkpoints, a full disk, NaN steps, bad input. Each
test checks what the user sees (exit code, message) and what is kept on disk. Signals and kill -9
in the middle of a save are in tests/runtime/test_signals.py."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import lmtrain
from conftest import invoke, tiny_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.checkpoint import storage as ckpt_mod
from lmtrain.models.output import SoftmaxOutput
from lmtrain.training import fit
from lmtrain.training.loop import Trainer

REPO = Path(lmtrain.__file__).resolve().parents[1]


def _write_config(tmp_path: Path, files: dict[str, Path], *overrides: str) -> Path:
    cfg = tiny_config(tmp_path, files, *overrides)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    return path


def _ckpts(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


# ---------------------------------------------------------------------------------------------
# Damaged, untrusted and mismatched checkpoints


@pytest.fixture
def trained(tmp_path: Path, tiny_files: dict[str, Path]) -> Path:
    """A finished run with checkpoints at steps 4, 8 and 12 (keep_last 2 keeps 8 and 12)."""
    config = _write_config(tmp_path, tiny_files, "train.max_steps=12", "train.eval_every=4")
    fit(tiny_config(tmp_path, tiny_files, "train.max_steps=12", "train.eval_every=4"), quiet=True)
    return config


def test_keep_last_keeps_the_newest_numbered_checkpoints(trained, tmp_path):
    names = sorted(p.name for p in _ckpts(tmp_path).iterdir())
    assert names == ["best.pt", "last.pt", "step-00000008.pt", "step-00000012.pt"]
    for name, step in (("step-00000008.pt", 8), ("step-00000012.pt", 12), ("last.pt", 12)):
        assert load_checkpoint(_ckpts(tmp_path) / name)["progress"]["step"] == step
    # One write per save: last.pt is the step-12 file under a second name.
    assert (_ckpts(tmp_path) / "last.pt").samefile(_ckpts(tmp_path) / "step-00000012.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_resume_auto_skips_a_damaged_latest_checkpoint(damage, trained, tmp_path, cli):
    last = _ckpts(tmp_path) / "last.pt"
    step12 = _ckpts(tmp_path) / "step-00000012.pt"
    for path in (last, step12):
        data = path.read_bytes()
        new = {"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}
        path.write_bytes(new[damage])
    result = invoke(cli, "fit", trained, "train.max_steps=16", "--resume", "auto", "--quiet")
    assert result.exit_code == 0, result.output
    assert "skips last.pt" in result.stderr and "skips step-00000012.pt" in result.stderr
    assert "continues from" in result.stderr and "step-00000008.pt (step 8)" in result.stderr
    assert "resuming at step 8" in result.stderr
    assert load_checkpoint(last)["progress"]["step"] == 16


def test_explicitly_named_damaged_checkpoint_fails_clearly(trained, tmp_path, cli):
    last = _ckpts(tmp_path) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    for args in (("fit", trained, "--resume", last), ("eval", last), ("sample", last)):
        result = invoke(cli, *args)
        assert result.exit_code == 2, result.output
        assert f"{last}: damaged or truncated checkpoint" in result.stderr
        assert "Traceback" not in result.output


def test_resume_auto_with_every_checkpoint_damaged_never_starts_from_scratch(
    trained, tmp_path, cli
):
    for path in _ckpts(tmp_path).iterdir():
        path.write_bytes(b"not a checkpoint")
    result = invoke(cli, "fit", trained, "--resume", "auto", "--quiet")
    assert result.exit_code == 2
    assert "none of the 4 checkpoint(s)" in result.stderr and "Nothing was changed" in result.stderr
    assert {p.read_bytes() for p in _ckpts(tmp_path).iterdir()} == {b"not a checkpoint"}


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
def test_checkpoint_whose_pickle_runs_code_is_refused(how, trained, tmp_path, cli):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    payload = {"format": "lmtrain-checkpoint", "model": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    for args in (("eval", evil), ("fit", trained, "--resume", evil)):
        result = invoke(cli, *args)
        assert result.exit_code == 2, result.output
        assert "refused" in result.stderr or "cannot be read" in result.stderr
        assert not marker.exists()
    # The same file as the newest checkpoint of a run: skipped, still never executed.
    (_ckpts(tmp_path) / "last.pt").write_bytes(evil.read_bytes())
    result = invoke(cli, "fit", trained, "train.max_steps=14", "--resume", "auto", "--quiet")
    assert result.exit_code == 0 and "skips last.pt" in result.stderr
    assert not marker.exists()


def test_resume_with_changed_architecture_names_the_keys(trained, tmp_path, cli):
    before = {p.name: p.read_bytes() for p in _ckpts(tmp_path).iterdir()}
    result = invoke(
        cli, "fit", trained, "model.hidden_size=32", "model.cell=gru", "--resume", "auto"
    )
    assert result.exit_code == 2
    assert "model.cell (checkpoint: 'lstm', now: 'gru')" in result.stderr
    assert "model.hidden_size (checkpoint: 16, now: 32)" in result.stderr
    assert {p.name: p.read_bytes() for p in _ckpts(tmp_path).iterdir()} == before


def test_resume_from_tensors_that_do_not_fit_is_a_clear_error(trained, tmp_path, cli):
    last = _ckpts(tmp_path) / "last.pt"
    payload = load_checkpoint(last)
    payload["model"]["embedding.weight"] = torch.zeros(3, 3)
    ckpt_mod.save_checkpoint(last, payload)
    result = invoke(cli, "fit", trained, "--resume", last)
    assert result.exit_code == 2
    assert "cannot resume" in result.stderr and "embedding.weight" in result.stderr


def test_existing_run_directory_is_never_overwritten(trained, tmp_path, cli):
    before = {p.name: p.read_bytes() for p in _ckpts(tmp_path).iterdir()}
    result = invoke(cli, "fit", trained)
    assert result.exit_code == 2 and "already holds a run" in result.stderr
    assert {p.name: p.read_bytes() for p in _ckpts(tmp_path).iterdir()} == before


# ---------------------------------------------------------------------------------------------
# Disk full and unwritable directories


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(
    tmp_path, tiny_files, cli, monkeypatch
):
    config = _write_config(tmp_path, tiny_files, "train.max_steps=12", "train.eval_every=4")
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        # The save at step 4 writes one file (last.pt and best.pt are hard links to it); the
        # next checkpoint write, the step-8 one, finds the disk full. Other files pass.
        if ".pt." in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(ckpt_mod.os, "fdatasync", fsync)
    result = invoke(cli, "fit", config, "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert "could not write the checkpoint (No space left on device)" in result.stderr
    assert "previous checkpoint, if any, is unchanged" in result.stderr
    assert load_checkpoint(_ckpts(tmp_path) / "last.pt")["progress"]["step"] == 4
    assert not list(_ckpts(tmp_path).glob(".*.tmp"))


def test_unwritable_run_directory(tmp_path, tiny_files, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config = _write_config(tmp_path, tiny_files, f"run.dir={blocker / 'run'}")
    result = invoke(cli, "fit", config)
    assert result.exit_code == 2
    assert f"run directory {blocker / 'run'} cannot be written" in result.stderr
    assert blocker.read_text() == "x"


# ---------------------------------------------------------------------------------------------
# Non-finite loss or gradients


def _poison(monkeypatch: pytest.MonkeyPatch, steps: set[int], where: str) -> None:
    """Make the training loss (where='loss') or its gradient ('grad') NaN at the given steps."""
    real = SoftmaxOutput.nll
    count = {"step": 0}

    def nll(self: SoftmaxOutput, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return real(self, hidden, targets)  # evaluation stays clean
        count["step"] += 1
        if count["step"] in steps:
            if where == "loss":
                return real(self, hidden, targets) * float("nan")
            hidden.register_hook(lambda g: g * float("inf"))
        return real(self, hidden, targets)

    monkeypatch.setattr(SoftmaxOutput, "nll", nll)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_step_is_skipped_with_weights_unchanged(
    where, tmp_path, tiny_files, monkeypatch
):
    _poison(monkeypatch, {4, 5}, where)
    real_step = Trainer.train_step
    skipped_unchanged: list[int] = []

    def step(trainer: Trainer, batch: Any) -> Any:
        before = [p.detach().clone() for p in trainer.model.parameters()]
        out = real_step(trainer, batch)
        after = list(trainer.model.parameters())
        if out.skipped and all(torch.equal(a, b) for a, b in zip(before, after, strict=True)):
            skipped_unchanged.append(trainer.progress.step + 1)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)
    lines: list[str] = []
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=10")
    result = fit(cfg, quiet=True, echo=lines.append)
    assert skipped_unchanged == [4, 5]
    assert result.progress.step == 10 and result.progress.nonfinite_steps == 2
    assert result.progress.nonfinite_run == 0
    assert any("step 5 | non-finite loss or gradient: step skipped" in x for x in lines)
    assert all(
        torch.isfinite(p).all()
        for p in load_checkpoint(_ckpts(tmp_path) / "last.pt")["model"].values()
    )


def test_too_many_non_finite_steps_stop_with_exit_3_and_keep_checkpoints(
    tmp_path, tiny_files, cli, monkeypatch
):
    config = _write_config(
        tmp_path,
        tiny_files,
        "train.max_steps=30",
        "train.eval_every=4",
        "train.max_nonfinite_steps=3",
    )
    _poison(monkeypatch, set(range(6, 100)), "loss")
    result = invoke(cli, "fit", config, "--quiet")
    assert result.exit_code == 3, result.output
    assert "stopped at step 8: 3 consecutive steps had a NaN or infinite loss" in result.stderr
    assert "newest from step 4" in result.stderr
    for name in ("last.pt", "best.pt"):
        saved = load_checkpoint(_ckpts(tmp_path) / name)
        assert saved["progress"]["step"] == 4
        assert all(torch.isfinite(p).all() for p in saved["model"].values())


# ---------------------------------------------------------------------------------------------
# Bad input data


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing", None, "file not found"),
        ("directory", "DIR", "is a directory"),
        ("empty", b"", "the file is empty or holds only whitespace"),
        ("blank lines", b"\n\n  \n\t\n", "the file is empty or holds only whitespace"),
        ("invalid utf-8", b"hello world\nbad \xff\xfe here\n", "not valid UTF-8 at byte offset 16"),
        ("binary", bytes(range(256)) * 8, "looks like a binary file"),
    ],
)
def test_bad_training_file(name, content, message, tmp_path, tiny_files, cli):
    bad = tmp_path / "bad.txt"
    if content == "DIR":
        bad.mkdir()
    elif content is not None:
        bad.write_bytes(content)
    config = _write_config(tmp_path, tiny_files, f"data.train={bad}")
    result = invoke(cli, "fit", config)
    assert result.exit_code == 2, result.output
    assert f"{bad}: {message}" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_decode_errors_replace_reads_invalid_utf8(tmp_path, tiny_files):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(tiny_files["train"].read_bytes() + "caf\xe9 au lait\n".encode("latin-1"))
    cfg = tiny_config(
        tmp_path,
        tiny_files,
        f"data.train={bad}",
        "data.decode_errors=replace",
        "data.tokenizer=char",
        "train.max_steps=1",
    )
    fit(cfg, quiet=True)
    vocab = load_checkpoint(_ckpts(tmp_path) / "last.pt")["vocab"]["itos"]
    assert "\ufffd" in vocab


@pytest.mark.slow
def test_one_50mb_line_encodes_in_bounded_memory(tmp_path):
    """One 50 MB line (no newline) through read, vocabulary and both encoders, in a fresh process.

    Peak memory above the imports stays within a small multiple of the text: the ids themselves
    (8 bytes per token) plus pieces of about 1 M characters, not a list of every word.
    """
    big = tmp_path / "one-line.txt"
    words = [f"w{i % 5000}" for i in range(10_000)]
    chunk = (" ".join(words) + " ").encode()
    with big.open("wb") as f:
        for _ in range(50_000_000 // len(chunk) + 1):
            f.write(chunk)
    size = big.stat().st_size
    assert size >= 50_000_000 and b"\n" not in big.read_bytes()[:1000]
    script = textwrap.dedent(
        f"""
        import resource, sys
        from lmtrain.data import read_text
        from lmtrain.data.tokenizers import Settings, build
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        text = read_text({str(big)!r})
        w = build("word", text, Settings())
        n_words = w.encode(text).ids.numel()
        c = build("char", text, Settings())
        n_chars = c.encode(text).ids.numel()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(w), n_words, len(c), n_chars, (peak - base) * 1024)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    n_word_vocab, n_words, n_char_vocab, n_chars, grown = map(int, out.stdout.split())
    assert n_word_vocab == 3 + 5000 and n_words == size // len(chunk) * 10_000 + 1
    assert n_char_vocab == 2 + 12 and n_chars == size  # w, 0-9, space
    # text (1 byte/char) + char ids (8 bytes/char) + ~1 M character pieces: measured 546 MB for
    # 50 MB; encoding the whole text at once (UTF-32 copies, a list of every word) took 1640 MB.
    assert grown < 16 * size, f"peak grew by {grown / 1e6:.0f} MB for a {size / 1e6:.0f} MB line"


# ---------------------------------------------------------------------------------------------
# Eval with a tokeniser that does not fit, and a GPU that does not exist


def test_eval_refuses_text_mostly_unknown_to_the_tokeniser(tmp_path, tiny_files, cli):
    cfg = tiny_config(tmp_path, tiny_files, "data.tokenizer=char", "train.max_steps=2")
    fit(cfg, quiet=True)
    greek = tmp_path / "greek.txt"
    greek.write_text("αβγδε ζηθικ λμνξο πρστυ\n" * 20, encoding="utf-8")
    result = invoke(cli, "eval", tmp_path / "run", "--data", greek)
    assert result.exit_code == 2
    assert (
        f"{greek}: 400 of its 480 tokens (83%) are not in this checkpoint's char" in result.stderr
    )
    english = tmp_path / "english.txt"
    english.write_text("the cat sat on the mat, naïvely.\n", encoding="utf-8")
    result = invoke(cli, "eval", tmp_path / "run", "--data", english, "--json")
    assert result.exit_code == 0, result.output  # a few unknown characters are fine


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_asked_for_where_none_exists(tmp_path, tiny_files, cli):
    config = _write_config(tmp_path, tiny_files)
    result = invoke(cli, "fit", config, "train.device=cuda")
    assert result.exit_code == 2
    assert "train.device is 'cuda' but no CUDA GPU is available here" in result.stderr
    assert not (tmp_path / "run").exists()
    fit(tiny_config(tmp_path, tiny_files, "train.max_steps=1"), quiet=True)
    result = invoke(cli, "eval", tmp_path / "run", "--device", "cuda:1")
    assert result.exit_code == 2 and "no CUDA GPU" in result.stderr
