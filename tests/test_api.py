"""The Python API: `from lmtrain import fit, load, generate, score, evaluate`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import TINY_TEXT, invoke, tiny_config, write_tiny_files
from lmtrain.errors import ConfigError, LmtrainError

ROOT = Path(__file__).resolve().parents[1]

# The example of docs/api.md, verbatim (tests/test_docs.py checks that the page shows it):
# it trains the quickstart recipe on your own three files.
README_EXAMPLE = """\
from pathlib import Path

import lmtrain

# A recipe name, a YAML file or a dict, plus dotted overrides. Prints nothing by default.
result = lmtrain.fit("quickstart", {
    "data.train": "train.txt", "data.valid": "valid.txt", "data.test": "test.txt",
    "train.epochs": 2, "run.dir": "runs/notebook",
})
print(result.progress.step, "steps, best validation loss", result.progress.best_val_loss)

model = lmtrain.load(result.run_dir)     # a run, a checkpoint or an `lmtrain export` folder
print(model.generate("the ", max_tokens=40, seed=0))
for s in model.score(["the cat sat on the mat .", "mat the on sat cat the ."]):
    print(f"{s.logprob:8.2f} nats  {s.text}")
print(model.evaluate().ppl)                # the run's data.test
print(model.evaluate(Path("valid.txt")).ppl)
"""


@pytest.mark.slow
def test_readme_example_runs_on_the_tiny_corpus_and_matches_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], cli
) -> None:
    monkeypatch.chdir(tmp_path)
    write_tiny_files(tmp_path)
    exec(compile(README_EXAMPLE, "README example", "exec"), {})
    out, err = capfd.readouterr()
    assert err == ""  # fit is quiet: no bar, no log lines
    lines = out.splitlines()
    steps, _, best = lines[0].partition(" steps, best validation loss ")
    assert int(steps) > 0 and math.isfinite(float(best))
    assert lines[1].startswith("the ")  # the sample (a character model's may span lines)
    r = invoke(cli, "sample", "runs/notebook", "--prompt", "the ", "--max-tokens", 40, "--seed", 0)
    assert r.stdout.splitlines() == lines[1:-4]
    assert lines[-4].endswith(" nats  the cat sat on the mat .")
    assert lines[-3].endswith(" nats  mat the on sat cat the .")
    r = invoke(cli, "eval", tmp_path / "runs/notebook", "--json")
    assert r.exit_code == 0, r.output
    assert float(lines[-2]) == pytest.approx(json.loads(r.stdout)["ppl"], rel=1e-12)
    r = invoke(cli, "eval", tmp_path / "runs/notebook", "--data", "valid.txt", "--json")
    assert float(lines[-1]) == pytest.approx(json.loads(r.stdout)["ppl"], rel=1e-12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import lmtrain

    tmp = tmp_path_factory.mktemp("api")
    cfg = tiny_config(tmp, write_tiny_files(tmp), "train.epochs=1")
    return lmtrain.fit(cfg).run_dir


def test_module_functions_take_a_path_or_a_model(trained: Path) -> None:
    from lmtrain import evaluate, generate, load, score

    model = load(trained)
    assert repr(model).startswith("Model(lstm 2x16, word vocabulary of ")
    text = generate(trained, "the cat", max_tokens=5, seed=3)
    assert text == model.generate("the cat", max_tokens=5, seed=3)
    assert len(text.split()) == 2 + 5
    many = model.generate("the", max_tokens=3, num_samples=2, seed=1)
    assert isinstance(many, list) and len(many) == 2
    one = score(model, "the cat sat on the mat .")
    assert one.tokens == 8 and one.logprob < 0
    assert [s.logprob for s in score(trained, ["the cat sat on the mat ."])] == [one.logprob]
    plain = evaluate(trained, TINY_TEXT[:400])
    assert (
        plain.tokens > 0 and plain.ppl == model.evaluate(file=str(trained.parent / "valid.txt")).ppl
    )


def test_mistakes_raise_lmtrain_errors_with_python_names(trained: Path) -> None:
    from lmtrain import load

    model = load(trained)
    with pytest.raises(LmtrainError, match=r"^max_tokens must be .*, got -1$"):
        model.generate("the", max_tokens=-1)
    with pytest.raises(LmtrainError, match=r"every token of the prompt is unknown"):
        model.generate("zebra")
    with pytest.warns(UserWarning, match="read as <unk>"):
        model.generate("the zebra", max_tokens=2, seed=0)
    with pytest.raises(LmtrainError, match="is empty"):
        model.score(["the cat", "  "])
    valid = str(trained.parent / "valid.txt")
    with pytest.raises(LmtrainError, match=r"names a file, but a str is evaluated as the text"):
        model.evaluate(valid)
    with pytest.raises(LmtrainError, match="no checkpoint"):
        load(trained.parent)


def test_fit_takes_dicts_configs_and_recipe_names(tmp_path: Path) -> None:
    import lmtrain
    from lmtrain.api import config
    from lmtrain.catalog import RecipeError

    files = write_tiny_files(tmp_path)
    cfg = tiny_config(tmp_path, files)
    assert config(cfg.to_dict()) == cfg
    assert config(cfg, {"train.lr": 0.5}).train.lr == 0.5
    assert config(cfg, ["model.cell=gru"]).model.cell == "gru"
    assert config("quickstart", {"run.dir": "x"}).model.hidden_size == 256
    with pytest.raises(RecipeError, match="no recipe of that name .*; the recipes are: quickstart"):
        lmtrain.fit("quikstart")
    with pytest.raises(ConfigError, match="train.lrr"):
        lmtrain.fit(cfg, {"train.lrr": 1})


def test_fit_on_log_hears_every_step_once_and_matches_the_logged_loss(tmp_path: Path) -> None:
    import json

    import lmtrain

    files = write_tiny_files(tmp_path)
    cfg = tiny_config(tmp_path, files, "train.max_steps=6", "train.log_every=3")
    heard: list[dict[int, float]] = []
    lmtrain.fit(cfg, on_log=heard.append)
    assert [sorted(h) for h in heard] == [[1, 2, 3], [4, 5, 6]]
    lines = (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()
    logged = [r for r in map(json.loads, lines) if r["type"] == "train"]
    # Each window has the same number of tokens per step, so its loss is the mean of the steps'.
    for window, row in zip(heard, logged, strict=True):
        assert row["step"] == max(window)
        assert row["loss"] == pytest.approx(sum(window.values()) / len(window), rel=1e-6)


@pytest.mark.slow
def test_import_is_light_and_api_names_beat_submodules() -> None:
    code = textwrap.dedent(
        """
        import sys
        import lmtrain
        from lmtrain.cli import app
        try:
            app(["--help"], standalone_mode=False)
        except SystemExit:
            pass
        print("torch" in sys.modules)
        import lmtrain.evaluation.stream, lmtrain.evaluation.scoring   # bind the submodules first
        from lmtrain import evaluate, fit, generate, load, score
        print(all(callable(f) and f.__module__ == "lmtrain.api"
                  for f in (evaluate, fit, generate, load, score)))
        from lmtrain.evaluation.stream import EvalResult
        print(EvalResult.__module__)
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert r.stdout.splitlines()[-3:] == ["False", "True", "lmtrain.evaluation.stream"]
