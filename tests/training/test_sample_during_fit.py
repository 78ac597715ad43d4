"""A long sample during fit (run.sample_tokens up to its maximum, 100,000): it shows progress
the way fit's steps do, and SIGTERM stops it at once with the usual graceful stop (exit 143, a
checkpoint to resume from, valid files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lmtrain
from conftest import tiny_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.metrics import read_metrics
from lmtrain.training import fit, validation

REPO = Path(lmtrain.__file__).resolve().parents[1]
LONG = ("run.tensorboard=true", "run.sample_tokens=100000", "train.eval_every=2")
# `lmtrain fit` as the CLI runs it, with one change: a progress line every 0.2 s of sampling
# instead of every 10 s, so that the test knows the sample has begun, on any machine.
DRIVER = """
import sys
from lmtrain.training import validation
validation.SAMPLE_PROGRESS_SECONDS = 0.2
sys.argv = ["lmtrain", "fit", sys.argv[1]]
from lmtrain.cli import main
main()
"""


@pytest.mark.slow
def test_sigterm_during_a_long_sample_stops_at_once_and_leaves_a_valid_run(tmp_path, tiny_files):
    config = tmp_path / "config.yaml"
    cfg = tiny_config(tmp_path, tiny_files, *LONG, "train.max_steps=40")
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    begun = threading.Event()

    def read() -> None:  # stderr is not a terminal: progress comes as lines
        assert child.stderr is not None
        for line in child.stderr:
            lines.append(line)
            if line.startswith("step 2 | sample for TensorBoard: "):
                begun.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert begun.wait(timeout=180), "no progress line for the sample:\n" + "".join(lines)
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=120)
        took = time.monotonic() - sent
        reader.join(timeout=10)
    finally:
        child.kill()
    shown = next(x for x in lines if x.startswith("step 2 | sample for TensorBoard: "))
    rest = "".join(lines[lines.index(shown) + 1 :])
    err = "".join(lines)
    assert child.returncode == 143, err
    assert "step 2 | SIGTERM during sampling: abandoned" in rest
    assert "SIGTERM received: stopped after step 2 and saved" in rest
    assert "Traceback" not in err
    # Finishing the sample would take as long as the line said was left; a prompt stop only
    # writes the checkpoint. Measured against the child's own pace, not a fixed figure.
    left = float(shown.rsplit("|", 1)[1].split()[0]) * 60
    assert took < left, (took, shown)
    run = tmp_path / "run"
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last.progress.step == 2 and last.progress.last_eval_step == 2
    assert [r["step"] for r in read_metrics(run) if r["type"] == "eval"] == [2]
    assert json.loads((run / "results.json").read_text())["status"] == "stopped"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    # Resuming continues from the checkpoint and logs samples again (shorter ones here).
    resumed = fit(
        tiny_config(tmp_path, tiny_files, *LONG[:1], "run.sample_tokens=50", "train.eval_every=2",
                    "train.max_steps=4"),
        resume="auto", quiet=True,
    )  # fmt: skip
    assert resumed.progress.step == 4


def test_sampling_shows_progress_lines_only_when_it_takes_long(tmp_path, tiny_files, monkeypatch):
    lines: list[str] = []
    short = ("run.tensorboard=true", "run.sample_tokens=30", "train.max_steps=2")
    fit(tiny_config(tmp_path, tiny_files, *short), echo=lines.append)
    assert any(x.startswith("step 2 | epoch 1 | ") for x in lines)  # the run did evaluate
    assert not [x for x in lines if "sample for TensorBoard" in x]  # done in well under 10 s
    monkeypatch.setattr(validation, "SAMPLE_PROGRESS_SECONDS", 0.0)  # a line after every token
    lines.clear()
    fit(tiny_config(tmp_path, tiny_files, *short, f"run.dir={tmp_path / 'b'}"), echo=lines.append)
    progress = [x.split(" | ") for x in lines if "sample for TensorBoard" in x]
    assert [x[:2] for x in progress] == [
        ["step 2", f"sample for TensorBoard: {n}/30 tokens"] for n in range(1, 31)
    ]
    assert all(x[2].endswith(" tokens/s") and x[3].endswith(" min left") for x in progress)
    assert progress[-1][3] == "0.0 min left"
    lines.clear()
    fit(tiny_config(tmp_path, tiny_files, *short, f"run.dir={tmp_path / 'c'}"), quiet=True,
        echo=lines.append)  # fmt: skip
    assert not [x for x in lines if "sample for TensorBoard" in x]  # quiet drops progress
