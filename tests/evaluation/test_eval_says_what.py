"""`lmtrain eval` says what it measured: the checkpoint, its step, the text and its split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.checkpoint import load_checkpoint
from lmtrain.training import fit

OLD_KEYS = {"data", "loss", "ppl", "tokens", "oov_rate", "approximate", "streams", "nll"}
"""The keys --json always had, which scripts read: none may go or change its name."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("says-what")
    fit(tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=6"), quiet=True, echo=print)
    return tmp / "run"


def test_json_and_text_name_the_checkpoint_its_step_and_the_text(cli, run) -> None:
    best = run / "checkpoints" / "best.pt"
    step = load_checkpoint(best).progress.step
    r = invoke(cli, "eval", run, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) >= OLD_KEYS
    test = str(run.parent / "test.txt")
    assert (out["checkpoint"], out["step"], out["split"], out["data"]) == (
        str(best),
        step,
        None,
        test,
    )
    text = invoke(cli, "eval", run)
    assert text.stdout.splitlines()[0] == f"evaluated {best} (step {step}) on {test}"


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A character model of the built-in corpus, whose three splits carry one name."""
    tmp = tmp_path_factory.mktemp("says-what-builtin")
    spec = "builtin:python-docs"
    data = {"train": spec, "valid": spec, "test": spec, "tokenizer": "char"}
    files = dict.fromkeys(("train", "valid", "test"), spec)
    fit(tiny_config(tmp, files, "train.max_steps=1", data=data), quiet=True, echo=print)
    return tmp / "run"


@pytest.mark.parametrize(
    ("spec", "split"),
    [(None, "test"), ("builtin:python-docs:valid", "valid"), ("FILE:train", "train")],
)
def test_the_split_is_named_where_one_name_has_three(
    cli, builtin_run, tmp_path, spec: str | None, split: str
) -> None:
    one_file = tmp_path / "one.txt"
    one_file.write_text("The cat. " * 300 + "\n\n" + "The mat. " * 100, encoding="utf-8")
    data = ["--data", spec.replace("FILE", str(one_file))] if spec else []
    shown = data[1] if data else "builtin:python-docs"  # without --data: the run's data.test
    r = invoke(cli, "eval", builtin_run, *data, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["data"], out["split"]) == (shown, split)
    text = invoke(cli, "eval", builtin_run, *data)
    assert text.stdout.splitlines()[0].endswith(f" on {shown}, {split} split")


def test_an_export_is_named_with_the_step_it_was_exported_at(cli, run, tmp_path) -> None:
    out = tmp_path / "exp"
    assert invoke(cli, "export", run, "--out", out).exit_code == 0
    step = load_checkpoint(run / "checkpoints" / "best.pt").progress.step
    test = str(run.parent / "test.txt")  # an export names no folder of this machine
    r = invoke(cli, "eval", out, "--data", test, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (report["checkpoint"], report["step"]) == (str(out), step)
    text = invoke(cli, "eval", out, "--data", test).stdout
    assert text.startswith(f"evaluated {out} (step {step}) on {test}\n")


def test_an_export_without_a_recorded_step_says_nothing_false(run, tmp_path) -> None:
    from lmtrain.checkpoint.export_format import WEIGHTS, export_step
    from lmtrain.export import export_run

    out = tmp_path / "exp"
    export_run(run, out)
    assert export_step(out) is not None
    (out / WEIGHTS).write_bytes(b"\x00" * 16)  # no readable header
    assert export_step(out) is None
