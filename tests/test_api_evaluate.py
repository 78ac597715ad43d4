"""Model.evaluate reads a file through evaluation (evaluate_file), as `lmtrain eval --data` does:
the same figures, and an empty name is a path to refuse, never the run's data.test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.errors import LmtrainError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import lmtrain

    tmp = tmp_path_factory.mktemp("api_evaluate")
    return lmtrain.fit(tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=2")).run_dir


def test_a_file_gives_the_figures_of_lmtrain_eval(trained: Path, cli) -> None:
    import lmtrain

    model = lmtrain.load(trained)
    test = trained.parent / "test.txt"
    r = invoke(cli, "eval", trained, "--data", test, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ppl"] == model.evaluate(file=test).ppl
    assert model.evaluate().ppl == model.evaluate(Path(test)).ppl  # data.test is test.txt


def test_an_empty_file_name_is_refused_not_read_as_data_test(trained: Path, cli) -> None:
    import lmtrain

    with pytest.raises(LmtrainError, match="is a directory"):
        lmtrain.load(trained).evaluate(file="")
    r = invoke(cli, "eval", trained, "--data", "")
    assert r.exit_code == 2 and "is a directory" in r.stderr, r.output
