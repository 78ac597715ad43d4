"""A graceful stop (SIGINT/SIGTERM during fit) is not an error, and names the command to go on."""

from __future__ import annotations

import os
import re
import shlex
import signal

import pytest

from conftest import invoke, tiny_config
from lmtrain.metrics import RunLogger


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_line_has_no_error_prefix_and_the_typed_command(
    cli, tmp_path, tiny_files, monkeypatch, signum, code
) -> None:
    config = tmp_path / "my config.yaml"  # a space: the command must be quoted for a shell
    config.write_text(tiny_config(tmp_path, tiny_files).to_yaml(), encoding="utf-8")
    advance = RunLogger.advance
    steps = []

    def advance_then_signal(self: RunLogger, n: int = 1, tokens: int | None = None) -> None:
        advance(self, n, tokens)
        steps.append(n)
        if len(steps) == 3:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(RunLogger, "advance", advance_then_signal)
    r = invoke(cli, "fit", config, "train.max_steps=40", "--train.lr", "0.02", "--quiet")
    monkeypatch.undo()
    assert r.exit_code == code, r.output
    name = signal.Signals(signum).name
    line = next(x for x in r.stderr.splitlines() if "received: stopped after step" in x)
    assert line.startswith(f"{name} received: stopped after step 3 and saved"), line
    assert "error:" not in r.stderr
    assert "CONFIG" not in r.stderr
    typed = shlex.join(["lmtrain", "fit", str(config), "train.max_steps=40", "train.lr=0.02"])
    assert f"`{typed} --resume auto`" in line

    # The advice works as printed.
    command = re.search(r"`lmtrain (fit .*?)`", line).group(1)
    again = invoke(cli, *shlex.split(command), "--quiet")
    assert again.exit_code == 0, again.output
    assert "resuming at step 3" in again.stderr
