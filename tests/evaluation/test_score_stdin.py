"""`lmtrain score --file -` reads the sentences from standard input, as other tools do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.cli import app
from lmtrain.training import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("score-stdin")
    fit(tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=4"), quiet=True, echo=print)
    return tmp / "run"


def test_file_dash_scores_standard_input_as_the_same_lines_given_as_arguments(cli, run) -> None:
    r = cli.invoke(
        app,
        ["score", str(run), "--file", "-", "--json"],
        input="the cat sat .\n\n  \nthe dog sat on the log .\n",
    )
    assert r.exit_code == 0, r.output
    given = invoke(cli, "score", run, "the cat sat .", "the dog sat on the log .", "--json")
    assert json.loads(r.stdout) == json.loads(given.stdout)
    assert [s["text"] for s in json.loads(r.stdout)] == [
        "the cat sat .",
        "the dog sat on the log .",
    ]


def test_file_dash_then_arguments_keep_their_order(cli, run) -> None:
    r = cli.invoke(
        app, ["score", str(run), "a cat .", "--file", "-", "--json"], input="the mat .\n"
    )
    assert r.exit_code == 0, r.output
    assert [s["text"] for s in json.loads(r.stdout)] == ["the mat .", "a cat ."]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "nothing to score"),
        (b"the \xff cat\n", "--file - (standard input): not valid UTF-8 at byte offset 4"),
        (b"the\x00cat\n", "--file - (standard input): looks like binary data"),
    ],
)
def test_bad_standard_input_is_refused_by_name(cli, run, data: bytes, needle: str) -> None:
    r = cli.invoke(app, ["score", str(run), "--file", "-"], input=data)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and "Traceback" not in r.output


def test_too_much_standard_input_is_refused(cli, run, monkeypatch) -> None:
    from lmtrain.evaluation import scoring

    monkeypatch.setattr(scoring, "TEXT_FILE_MAX_BYTES", 64)
    r = cli.invoke(app, ["score", str(run), "--file", "-"], input="the cat .\n" * 10)
    assert r.exit_code == 2, r.output
    assert "--file - (standard input): more than" in r.stderr


def test_a_file_named_dash_is_read_as_dot_slash_dash(cli, run, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("-").write_text("the log .\n", encoding="utf-8")
    r = invoke(cli, "score", run, "--file", "./-", "--json")
    assert r.exit_code == 0, r.output
    assert [s["text"] for s in json.loads(r.stdout)] == ["the log ."]
