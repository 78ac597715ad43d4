"""Using recipes, init, export, plot, the fit summary and the Python API the way a newcomer (or
a careless script) would: each test is a mistake that once gave a traceback, a silently wrong
result or a misleading message."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import lmtrain
from conftest import invoke, tiny_config, write_tiny_files
from lmtrain import api, catalog
from lmtrain.errors import LmtrainError
from lmtrain.training import fit

QUICKSTART = api.config("quickstart")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained word model in sentences mode with an adaptive softmax."""
    tmp = tmp_path_factory.mktemp("adversary")
    cfg = tiny_config(
        tmp,
        write_tiny_files(tmp),
        "data.mode=sentences",
        "model.adaptive_softmax.cutoffs=[4,8]",
        "train.max_steps=6",
        "train.eval_every=3",
    )
    return fit(cfg, quiet=True, echo=lambda _: None).run_dir


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# -- Python API --------------------------------------------------------------------------------


def test_a_nested_override_changes_only_the_keys_it_names() -> None:
    # {"train": {"lr": 0.5}} once replaced the recipe's whole train section: epochs fell from
    # the recipe's 8 to the default 1 without a word.
    cfg = api.config("quickstart", {"train": {"lr": 0.5}, "model": {"hidden_size": 64}})
    assert (cfg.train.lr, cfg.model.hidden_size) == (0.5, 64)
    assert cfg.train.epochs == QUICKSTART.train.epochs == 8
    assert cfg.train.bptt == QUICKSTART.train.bptt and cfg.model.cell == "lstm"


def test_override_values_may_be_paths_and_bad_ones_are_named() -> None:
    cfg = api.config("quickstart", {"data.train": Path("my/train.txt")})
    assert cfg.data.train == "my/train.txt"
    with pytest.raises(LmtrainError, match=r"override value <object .*not a number, string"):
        api.config("quickstart", {"train.lr": object()})
    with pytest.raises(LmtrainError, match="overrides must be a dict"):
        api.config("quickstart", 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("source", [None, 42])
def test_fit_with_no_config_is_an_lmtrain_error(source: object) -> None:
    with pytest.raises(LmtrainError, match="config source must be a recipe name, a YAML path"):
        lmtrain.fit(source)  # type: ignore[arg-type]


def test_generate_and_score_refuse_bad_arguments_by_name(run: Path) -> None:
    model = lmtrain.load(run)
    cases = [
        # num_samples=0 once returned one sample, as if 1 had been asked for.
        (lambda: model.generate("the", num_samples=0), "num_samples must be an int >= 1"),
        (lambda: model.generate(5), "prompt must be a str, got int"),
        (lambda: model.generate("the", max_tokens="5"), "max_tokens must be an int, got '5'"),
        (lambda: model.generate("the", temperature="hot"), "temperature must be a number"),
        # bytes were iterated as numbers: "text 0 to score is empty or not a string: 116".
        (lambda: model.score(b"the cat"), "texts must be a str or a list of str, got bytes"),
        (lambda: model.score(5), "texts must be a str or a list of str, got int"),
    ]
    for call, message in cases:
        with pytest.raises(LmtrainError, match=message):
            call()
    assert len(model.generate("the", max_tokens=3, seed=0, num_samples=2)) == 2


# -- recipes and init --------------------------------------------------------------------------


def test_a_folder_named_like_a_recipe_does_not_hide_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").mkdir()  # say, the run directory of an earlier quickstart
    r = invoke(cli, "validate", "quickstart")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("quickstart: OK")
    (tmp_path / "mine").mkdir()
    r = invoke(cli, "validate", "mine")
    assert r.exit_code == 2 and "is a directory; give a YAML file" in r.stderr


def test_init_into_a_new_folder_a_home_path_and_past_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    recipe = (catalog.RECIPES_DIR / "quickstart.yaml").read_text()
    # `new/` asks for a folder; it was once written as a file called `new`.
    r = invoke(cli, "init", "quickstart", "new/")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "new" / "quickstart.yaml").read_text() == recipe
    # A quoted `~` (no shell to expand it) once made a folder literally called `~`.
    r = invoke(cli, "init", "quickstart", "~/configs/")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "home" / "configs" / "quickstart.yaml").read_text() == recipe
    assert not (tmp_path / "~").exists()
    # A file where a folder must go was a NotADirectoryError traceback.
    (tmp_path / "notes").write_text("mine")
    r = invoke(cli, "init", "quickstart", "notes/sub/my.yaml")
    assert r.exit_code == 2, r.output
    assert "notes is a file, not a folder" in r.stderr and "Traceback" not in r.output
    assert (tmp_path / "notes").read_text() == "mine"


# -- export ------------------------------------------------------------------------------------


def test_an_export_is_identical_to_its_run_in_eval_sample_and_score(
    run: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "exp"
    assert invoke(cli, "export", run, "--out", out).exit_code == 0
    # The export names no folder of this machine, so the run's data.test is given as --data.
    for args in (
        ("eval", "--json", "--data", str(run.parent / "test.txt")),
        ("sample", "--prompt", "the", "--seed", "3", "--max-tokens", "12", "--num-samples", "2"),
        ("score", "the cat sat on the mat .", "a dog", "--json"),
    ):
        a, b = invoke(cli, args[0], run, *args[1:]), invoke(cli, args[0], out, *args[1:])
        assert a.exit_code == b.exit_code == 0, (a.stderr, b.stderr)
        if args[0] == "eval":  # the same report, but each names the checkpoint it read
            reports = [json.loads(r.stdout) for r in (a, b)]
            assert reports[0].pop("checkpoint") == str(run / "checkpoints" / "best.pt")
            assert reports[1].pop("checkpoint") == str(out)
            assert reports[1] == reports[0]
            continue
        assert a.stdout == b.stdout
    best = json.loads((run / "results.json").read_text())["best_val"]
    assert f"best validation loss {best['loss']:.4f} nats/token" in (out / "README.md").read_text()


def test_exporting_an_export_says_what_it_is_and_changes_nothing(
    run: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "exp"
    assert invoke(cli, "export", run, "--out", out).exit_code == 0
    before = _tree_hash(tmp_path)
    r = invoke(cli, "export", out)
    assert r.exit_code == 2
    # It once said the folder had no checkpoints/ and asked whether it was a run directory.
    assert f"{out}: is already an export" in r.stderr and "checkpoints" not in r.stderr
    assert _tree_hash(tmp_path) == before


# -- plot --------------------------------------------------------------------------------------


def test_plot_writes_the_format_its_suffix_names(tmp_path: Path, cli) -> None:
    pytest.importorskip("matplotlib")
    from tests.metrics.test_plot import write_run

    a = write_run(tmp_path / "a", [(10, 3.0, 6.0), (20, 2.5, 12.0)])
    r = invoke(cli, "plot", a, "--out", tmp_path / "c.pdf")
    assert r.exit_code == 0, r.stderr
    # curves.pdf once held a PNG.
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
    r = invoke(cli, "plot", a, "--out", tmp_path / "c.jpg")
    assert r.exit_code == 2 and "--out must end in .png, .pdf or .svg" in r.stderr
    assert not (tmp_path / "c.jpg").exists()


def test_plot_warns_when_char_and_word_runs_share_a_perplexity_axis(tmp_path: Path, cli) -> None:
    pytest.importorskip("matplotlib")
    from lmtrain import plot
    from tests.metrics.test_plot import write_run

    char = write_run(tmp_path / "char", [(10, 1.2, 6.0)], bpc=True)
    word = write_run(tmp_path / "word", [(10, 4.5, 6.0)])
    r = invoke(cli, "plot", char, word, "--out", tmp_path / "c.png")
    assert r.exit_code == 0, r.stderr
    assert "warning: the ppl of character models (char) is per character" in r.stderr
    assert "word models (word) per word" in r.stderr
    assert [c.label for c in plot.run_curves([char, word], "loss")] == [
        "char (char)",
        "word (word)",
    ]
    assert [c.label for c in plot.run_curves([word], "loss")] == ["word"]
    r = invoke(cli, "plot", char, "--out", tmp_path / "d.png")
    assert "warning" not in r.stderr


# -- the fit summary ---------------------------------------------------------------------------


def test_a_resumed_fit_says_which_figures_are_this_sessions(tmp_path: Path, cli) -> None:
    files = write_tiny_files(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config(tmp_path, files, "train.eval_every=4").to_yaml())
    r = invoke(cli, "fit", config, "train.max_steps=4", "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("done: 4 steps, ")
    r = invoke(cli, "fit", config, "train.max_steps=8", "--resume", "auto", "-q")
    assert r.exit_code == 0, r.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # It once printed "done: 8 steps, N tokens" with N the tokens of the last 4 steps only.
    session = results["tokens"] // 2
    assert r.stdout.startswith(
        f"done: step 8, {results['tokens']:,} tokens in all; this session {session:,} tokens in "
    )


@pytest.mark.slow
@pytest.mark.parametrize("caller", ["cli", "api"])
def test_fit_piped_into_a_reader_that_stops_early_still_finishes_the_run(
    caller: str, tmp_path: Path
) -> None:
    """`lmtrain fit ... 2>&1 | head -1`: once head exits, every write hits a closed pipe."""
    files = write_tiny_files(tmp_path)
    config = tmp_path / "c.yaml"
    overrides = ("train.max_steps=40", "train.log_every=1", "train.eval_every=20")
    config.write_text(tiny_config(tmp_path, files, *overrides).to_yaml())
    cmd = [sys.executable, "-m", "lmtrain", "fit", str(config)]
    if caller == "api":
        cmd = [sys.executable, "-c", f"import lmtrain; lmtrain.fit({str(config)!r}, quiet=False)"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
        assert child.stdout is not None
        assert child.stdout.readline().startswith(b"run directory: ")
        child.stdout.close()
        # It once died at its next log line, before saving anything.
        assert child.wait(timeout=120) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["status"], results["steps"]) == ("completed", 40)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_the_model_cards_retrain_command_works_as_written(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    out = tmp_path / "exp"
    assert invoke(cli, "export", run, "--out", out).exit_code == 0
    card = (out / "README.md").read_text(encoding="utf-8")
    line = next(line for line in card.splitlines() if line.startswith("    lmtrain fit "))
    # It once said `lmtrain fit config.json`, whose run.dir is the original run: refused.
    monkeypatch.chdir(run.parent)  # where the run was trained, with its run.dir beside it
    args = shlex.split(line)[2:]
    r = invoke(cli, "fit", out / args[0], *args[1:], "train.max_steps=1", "-q")
    assert r.exit_code == 0, r.stderr
    assert (run.parent / "runs" / f"{run.name}-again" / "results.json").is_file()


def test_download_to_a_quoted_home_path_lands_in_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    from lmtrain import download

    data = b"First Citizen:\n"
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "input.txt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    source = download.Source(
        f"file://{tmp_path / 'mirror'}", "NO_SUCH_MIRROR_VARIABLE", (("input.txt", digest),)
    )
    monkeypatch.setitem(download.CORPORA, "tinyshakespeare", source)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    # '~/data' quoted (no shell expansion) once made a folder literally called "~".
    r = invoke(cli, "download", "tinyshakespeare", "~/data")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "home/data/tinyshakespeare/input.txt").read_bytes() == data
    assert f"export LMTRAIN_DATA={tmp_path / 'home' / 'data'}" in r.stdout
    monkeypatch.setenv("LMTRAIN_DATA", "~/corpora")  # as `export LMTRAIN_DATA="~/corpora"` sets it
    assert invoke(cli, "download", "tinyshakespeare").exit_code == 0
    assert (tmp_path / "home/corpora/tinyshakespeare/input.txt").read_bytes() == data
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (("fit", "Quickstart"), "(did you mean 'quickstart'?)"),
        (("validate", "quikstart.yaml"), "(did you mean 'quickstart'?)"),
        (("init", "wikitext2_word"), "(did you mean 'wikitext2_word_cpu'?)"),
    ],
)
def test_a_misspelt_recipe_name_gets_the_closest_one(
    args: tuple[str, ...], suggestion: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    r = invoke(cli, *args)
    assert r.exit_code == 2 and suggestion in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_fit_with_echo_gets_the_lines_that_fit_quiet_prints(tmp_path: Path) -> None:
    # The README: "fit(cfg, quiet=True) prints nothing at all; pass echo=print (or any function
    # taking a line) to get the non-progress lines". The echo was once ignored unless quiet=False.
    cfg = tiny_config(tmp_path, write_tiny_files(tmp_path), "train.max_steps=4")
    lines: list[str] = []
    lmtrain.fit(cfg, {"train.eval_every": 2, "train.log_every": 1}, echo=lines.append)
    assert lines[0] == f"run directory: {tmp_path / 'run'}"
    assert sum(" | val loss " in line for line in lines) == 2
    assert not [line for line in lines if line.startswith("step 1/")]  # no progress lines
    loud: list[str] = []
    loud_run = {"run.dir": str(tmp_path / "loud"), "train.log_every": 1}
    lmtrain.fit(cfg, loud_run, quiet=False, echo=loud.append)
    assert any(line.startswith("step 1/4 | epoch 1 | loss ") for line in loud)


def test_out_with_a_tilde_the_shell_left_alone_means_home(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    # `--out=~/x`: bash expands `~` only at the start of a word, so lmtrain gets it verbatim,
    # and once wrote into a folder called "~" in the current directory.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    r = invoke(cli, "export", run, "--out=~/exp")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "home" / "exp" / "model.safetensors").is_file()
    if importlib.util.find_spec("matplotlib") is not None:
        r = invoke(cli, "plot", run, "--out=~/c.png")
        assert r.exit_code == 0, r.stderr
        assert (tmp_path / "home" / "c.png").is_file()
    assert not (tmp_path / "~").exists()


def test_download_takes_the_recipe_name_that_lmtrain_recipes_suggests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    from lmtrain import download

    # `lmtrain recipes` ends with "fetch its data: lmtrain download NAME"; NAME, a recipe's
    # name, was once refused as an unknown corpus.
    data = b"First Citizen:\n"
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "input.txt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    source = download.Source(
        f"file://{tmp_path / 'mirror'}", "NO_SUCH_MIRROR_VARIABLE", (("input.txt", digest),)
    )
    monkeypatch.setitem(download.CORPORA, "tinyshakespeare", source)
    r = invoke(cli, "download", "shakespeare_char_cpu", tmp_path / "data")
    assert r.exit_code == 0, r.output
    assert "recipe shakespeare_char_cpu reads the corpus tinyshakespeare" in r.stderr
    assert (tmp_path / "data/tinyshakespeare/input.txt").read_bytes() == data
    r = invoke(cli, "download", "quickstart", tmp_path / "data")
    assert r.exit_code == 2
    assert "recipe quickstart reads builtin:python-docs, which needs no download" in r.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tinyshakespeare"]


def test_a_config_path_under_home_works_from_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lmtrain.fit("~/configs/x.yaml"): no shell expands that `~`; it was "file not found".
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "configs").mkdir()
    text = (catalog.RECIPES_DIR / "quickstart.yaml").read_text().replace("lr: 0.003", "lr: 0.007")
    (tmp_path / "configs" / "x.yaml").write_text(text)
    assert api.config("~/configs/x.yaml").train.lr == 0.007
