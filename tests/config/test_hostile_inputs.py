"""Hostile input: pipes and devices where files belong, YAML alias bombs, values that validate
accepts but cannot run, `~` and `${VAR}` in run.dir, what `validate` checks, `--key value`.

Anything that could hang or exhaust memory if it regressed runs in a child process with a
timeout and an address-space limit, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import lmtrain
from conftest import invoke, tiny_config, write_config
from lmtrain.config import (
    MAX_YAML_VALUES,
    check_resources,
    config_from_dict,
    load_config,
)
from lmtrain.data.corpus import TEXT_FILE_MAX_BYTES, read_file
from lmtrain.errors import ConfigError, DataError

REPO = Path(lmtrain.__file__).resolve().parents[1]

# Runs CLI commands in one child process and prints [exit code, stderr] for each as JSON.
_DRIVER = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    from typer.testing import CliRunner
    from lmtrain.cli import app
    out = []
    for args in json.loads(sys.argv[1]):
        r = CliRunner().invoke(app, args)
        out.append([r.exit_code, r.stderr])
    print(json.dumps(out))
    """
)


def _run_cli(*commands: list[str], timeout: float = 120) -> list[tuple[int, str]]:
    """Each command's (exit code, stderr), from a child process that must finish in time."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    args = json.dumps([[str(a) for a in c] for c in commands])
    try:
        out = subprocess.run(
            [sys.executable, "-c", _DRIVER, args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: still running after {timeout} s: {args}")
    assert out.returncode == 0, out.stderr
    return [(code, err) for code, err in json.loads(out.stdout)]


def _snapshot(directory: Path) -> dict[str, str]:
    """Name -> content hash of every entry under `directory`; pipes are named, never opened."""
    result = {}
    for path in sorted(directory.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            result[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result[str(path)] = oct(stat.S_IFMT(mode))
    return result


@pytest.fixture
def trained(tmp_path: Path, tiny_files: dict[str, Path]) -> Path:
    """A one-step run in tmp_path/run, for the commands that need a checkpoint."""
    from lmtrain.training import fit

    fit(tiny_config(tmp_path, tiny_files, "train.max_steps=1"), quiet=True)
    return tmp_path / "run"


# ---------------------------------------------------------------------------------------------
# Pipes and devices where a regular file belongs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_pipes_and_devices_are_refused_before_reading(kind, tmp_path, tiny_files, trained):
    if kind == "fifo":
        special = tmp_path / "pipe"
        os.mkfifo(special)
        what = "is a named pipe (FIFO), not a regular file"
    else:
        special = Path("/dev/zero")
        what = "is a character device, not a regular file"
    config = write_config(tmp_path, tiny_files, f"run.dir={tmp_path / 'new-run'}")
    before = _snapshot(tmp_path)
    results = _run_cli(
        ["validate", special],
        ["fit", special],
        ["fit", config, f"data.train={special}"],
        ["fit", config, f"data.valid={special}"],
        ["fit", config, f"model.pretrained_embeddings={special}", "model.embedding_dim=16"],
        ["score", trained, "--file", special],
        ["validate", config, "data.tokenizer=bpe", f"data.tokenizer_file={special}"],
        # With the cache off nothing hashes the file first: bpe.py reads it itself.
        [
            "fit",
            config,
            "data.tokenizer=bpe",
            f"data.tokenizer_file={special}",
            "data.cache_dir=null",
        ],
    )
    for code, err in results:
        assert code == 2, err
        assert what in err and "lmtrain reads only regular files" in err
        assert "Traceback" not in err
    assert (
        f"data.train: {special}: {what}"
        in _run_cli(["validate", config, f"data.train={special}"])[0][1]
    )
    assert _snapshot(tmp_path) == before


def test_a_config_or_score_file_of_many_megabytes_is_refused(tmp_path, trained, cli):
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:  # sparse: no disk used, and larger than any config
        f.truncate(2 * 1024 * 1024)
    result = invoke(cli, "validate", big)
    assert result.exit_code == 2
    assert f"{big}: 1 problem(s) found:\n  - larger than 1024 KB; a config is a few KB" in (
        result.stderr
    )
    sentences = tmp_path / "sentences.txt"
    with sentences.open("wb") as f:
        f.truncate(TEXT_FILE_MAX_BYTES + 1)
    result = invoke(cli, "score", trained, "--file", sentences)
    assert result.exit_code == 2
    assert f"{sentences}: larger than 16 MB" in result.stderr
    # A corpus has no such limit: read_text reads data files whole.
    with pytest.raises(DataError, match="looks like a binary file"):
        read_file(sentences, max_bytes=None)


# ---------------------------------------------------------------------------------------------
# YAML aliases


def _bomb(kind: str) -> str:
    """A YAML file under 1 KB whose nine levels of aliases expand to 9**9 values."""
    if kind == "lists":
        lines = ["a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
        lines += [f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in _LEVELS]
        return "\n".join([*lines, "model:", "  adaptive_softmax:", "    cutoffs: *i", ""])
    lines = ["a: &a {" + ", ".join(f"k{n}: {n}" for n in range(9)) + "}"]
    lines += [
        f"{b}: &{b} {{" + ", ".join(f"k{n}: *{a}" for n in range(9)) + "}" for a, b in _LEVELS
    ]
    return "\n".join([*lines, "train: *i", ""])


_LEVELS = list(zip("abcdefgh", "bcdefghi", strict=True))


def _flow_bomb() -> str:
    """One command-line value of nested aliases: 9**8 integers once expanded."""
    levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"&{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in _LEVELS[:7]]
    return "[" + ", ".join(levels) + "]"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lists", "mappings"])
def test_a_billion_laughs_is_refused_in_bounded_memory(kind, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(kind))
    assert bomb.stat().st_size < 1024
    yaml.compose(bomb.read_text())  # valid YAML: the refusal is about size, not syntax
    plain = tmp_path / "plain.yaml"
    plain.write_text("train:\n  lr: 0.1\n")
    override = "model.adaptive_softmax.cutoffs=" + _flow_bomb()
    (code, err), (code2, err2) = _run_cli(["validate", bomb], ["validate", plain, override])
    assert code == 2 and code2 == 2
    message = f"expand to more than {MAX_YAML_VALUES:,} values"
    assert message in err and message in err2
    assert f"{bomb}: 1 problem(s) found" in err
    assert "write the values out instead of nesting aliases" in err


def test_an_alias_inside_itself_and_a_small_alias(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("train: &t\n  lr: 0.1\n  x: *t\n")
    with pytest.raises(ConfigError, match="refused: an alias refers to a node that contains it"):
        load_config(loop)
    shared = tmp_path / "shared.yaml"
    shared.write_text("data:\n  valid: &v builtin:python-docs:valid\n  test: *v\n")
    cfg = load_config(shared)
    assert cfg.data.test == cfg.data.valid == "builtin:python-docs:valid"


# ---------------------------------------------------------------------------------------------
# Every value validate accepts, fit can run


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.num_threads=1000000000000", "train.num_threads: must be at most 1024"),
        ("train.seed=-1", "train.seed: must be in [0, 2**63 - 1]"),
        ("train.seed=100000000000000000000", "train.seed: 100000000000000000000 is out of range"),
        ("train.epochs=1.0e+30", "train.epochs: 1e+30 is out of range (at most 2**63 - 1)"),
        ("run.sample_tokens=1000000000000", "run.sample_tokens: must be in [0, 100,000]"),
        ("train.dist_timeout=100000000000000", "train.dist_timeout: must be in [1, 604800]"),
        ("model.adaptive_softmax.div_value=1e-300", "div_value: must be >= 1"),
        ("model.hidden_size=1000000", "model.hidden_size: training this model needs at least"),
        ("model.embedding_dim=100000000", "model.embedding_dim: training this model needs"),
        ("model.num_layers=100000000", "model.num_layers: training this model needs at least"),
        ("train.batch_size=100000000", "train.batch_size: training this model needs at least"),
        ("train.bptt=100000000", "train.bptt: training this model needs at least"),
    ],
)
def test_values_fit_cannot_run_are_refused_by_validate_and_fit(
    override, message, tmp_path, tiny_files, cli
):
    cfg_args = ["model.adaptive_softmax.cutoffs=[5]"] if "div_value" in override else []
    config = write_config(tmp_path, tiny_files, *cfg_args)
    before = _snapshot(tmp_path)
    for command in ("validate", "fit"):
        result = invoke(cli, command, config, override)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert "Traceback" not in result.output
    assert _snapshot(tmp_path) == before


def test_the_memory_refusal_names_the_estimate_and_the_machine(tmp_path, tiny_files, cli):
    config = write_config(tmp_path, tiny_files)
    result = invoke(cli, "validate", config, "model.hidden_size=1000000")
    # Two LSTM layers: 4 gates x 10**6 x (16 + 10**6 + 2) + 4 x 10**6 x (2 x 10**6 + 2), plus
    # the decoder (10**6 x 2 + 2) and embedding (2 x 16) of the smallest vocabulary, 2 words;
    # adam: 16 bytes per parameter.
    assert "(12,000,082,000,034 parameters: 192.0 TB for weights, gradients and adam state" in (
        result.stderr
    )
    assert "of RAM; lower model.hidden_size" in result.stderr or "cuda:" in result.stderr


def test_check_resources_after_the_vocabulary_is_known(tmp_path, tiny_files):
    cfg = tiny_config(tmp_path, tiny_files)
    check_resources(cfg, vocab_size=1000, device="cpu")
    with pytest.raises(ConfigError) as e:
        check_resources(cfg, vocab_size=10**12, device="cpu")
    assert "vocabulary of 1,000,000,000,000" in str(e.value)
    assert "limit the vocabulary with data.max_size or data.min_freq" in str(e.value)


def test_the_largest_values_validate_accepts_do_run(tmp_path, tiny_files, cli):
    """The caps are where a value stops running, not below: their maxima train a step."""
    config = write_config(tmp_path, tiny_files)
    result = invoke(
        cli,
        "fit",
        config,
        "train.max_steps=1",
        "train.seed=9223372036854775807",
        "train.epochs=9223372036854775807",
        "train.dist_timeout=604800",
        "train.eval_every=9223372036854775807",
        "run.keep_last=9223372036854775807",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["seed"] == 2**63 - 1


# ---------------------------------------------------------------------------------------------
# ~ and ${VAR} in run.dir


def test_run_dir_variables_are_expanded_and_saved_expanded(tmp_path, tiny_files, cli, monkeypatch):
    monkeypatch.setenv("LMTRAIN_TEST_RUNS", str(tmp_path / "runs"))
    config = write_config(tmp_path, tiny_files, "run.dir=${LMTRAIN_TEST_RUNS}/first")
    expanded = tmp_path / "runs" / "first"
    result = invoke(cli, "validate", config)
    assert result.exit_code == 0, result.output
    assert f"dir: {expanded}" in result.stdout
    result = invoke(cli, "fit", config, "train.max_steps=1", "--quiet")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((expanded / "config.yaml").read_text())["run"]["dir"] == str(expanded)
    assert not (tmp_path / "${LMTRAIN_TEST_RUNS}").exists()
    monkeypatch.delenv("LMTRAIN_TEST_RUNS")
    result = invoke(cli, "eval", expanded, "--data", tiny_files["test"])
    assert result.exit_code == 0, result.output
    # Resuming finds the same directory through the saved, expanded value.
    result = invoke(cli, "fit", expanded / "config.yaml", "train.max_steps=2", "--resume", "auto")
    assert result.exit_code == 0, result.output


def test_run_dir_and_data_paths_expand_the_home_directory(tmp_path, tiny_files, cli, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = write_config(
        tmp_path, tiny_files, "run.dir=~/runs/home", f"data.train=~/{tiny_files['train'].name}"
    )
    result = invoke(cli, "fit", config, "train.max_steps=1", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "home" / "config.yaml").exists()
    assert not Path("~").exists()


def test_an_unset_variable_in_run_dir_is_named(tmp_path, tiny_files, cli, monkeypatch):
    monkeypatch.delenv("LMTRAIN_NOT_SET", raising=False)
    config = write_config(tmp_path, tiny_files, "run.dir=${LMTRAIN_NOT_SET}/x")
    before = _snapshot(tmp_path)
    for command in ("validate", "fit"):
        result = invoke(cli, command, config)
        assert result.exit_code == 2
        assert (
            "run.dir: '${LMTRAIN_NOT_SET}/x' uses ${LMTRAIN_NOT_SET}, which is not set; "
            "export LMTRAIN_NOT_SET=..."
        ) in result.stderr
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# What validate checks beyond the schema


def test_validate_reports_every_missing_file_and_device_at_once(tmp_path, tiny_files, cli):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.txt").write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config = write_config(tmp_path, tiny_files)
    before = _snapshot(tmp_path)
    result = invoke(
        cli,
        "validate",
        config,
        f"data.train={tmp_path / 'missing.txt'}",
        f"data.valid={tmp_path / 'folder'}",
        f"data.test={tmp_path / 'pipe'}:test",
        f"model.pretrained_embeddings={tmp_path / 'empty.txt'}",
        "train.device=cuda:99",
        f"run.dir={blocker / 'run'}",
        "model.hiden_size=8",
    )
    assert result.exit_code == 2
    err = result.stderr
    assert "7 problem(s) found" in err
    for needle in (
        f"data.train: {tmp_path / 'missing.txt'}: file not found",
        f"data.valid: {tmp_path / 'folder'}: is a directory",
        f"data.test: {tmp_path / 'pipe'}: is a named pipe (FIFO)",
        f"model.pretrained_embeddings: {tmp_path / 'empty.txt'}: the file is empty",
        "train.device is 'cuda:99'",
        f"run.dir: {blocker} is not a directory",
        "model.hiden_size: unknown key; did you mean 'model.hidden_size'?",
    ):
        assert needle in err
    assert _snapshot(tmp_path) == before


def test_validate_names_an_unreadable_file(tmp_path, tiny_files, cli):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    locked = tmp_path / "locked.txt"
    locked.write_text("text\n")
    locked.chmod(0)
    config = write_config(tmp_path, tiny_files, f"data.train={locked}")
    result = invoke(cli, "validate", config)
    assert result.exit_code == 2
    assert f"data.train: {locked}: permission denied" in result.stderr


def test_validate_passes_a_good_config_with_builtin_and_split_paths(tmp_path, tiny_files, cli):
    config = write_config(
        tmp_path,
        tiny_files,
        "data.valid=builtin:python-docs",
        f"data.test={tiny_files['test']}:test",
    )
    result = invoke(cli, "validate", config)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{config}: OK")


# ---------------------------------------------------------------------------------------------
# --section.key VALUE overrides


def test_dashed_dotted_options_are_overrides(tmp_path, tiny_files, cli):
    config = write_config(tmp_path, tiny_files)
    result = invoke(
        cli, "validate", config, "--train.lr", "0.1", "--model.cell=gru", "train.bptt=5"
    )
    assert result.exit_code == 0, result.output
    out = yaml.safe_load(result.stdout.split("\n", 1)[1])
    assert (out["train"]["lr"], out["model"]["cell"], out["train"]["bptt"]) == (0.1, "gru", 5)
    result = invoke(cli, "fit", config, "--train.max_steps", "1", "--quiet", "--train.lr=0.05")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["train"]["max_steps"], saved["train"]["lr"]) == (1, 0.05)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--resum", "auto"], "no such option: --resum"),
        (["--train.lr"], "option --train.lr needs a value: --train.lr VALUE or --train.lr=VALUE"),
        (["--train.lr", "--quiet"], "option --train.lr needs a value"),
        (["-x"], "no such option: -x; config keys are set as section.key=VALUE"),
        (["--train.lrr", "0.1"], "train.lrr: unknown key; did you mean 'train.lr'?"),
        (["--train.seed", "-3"], "train.seed: must be in [0, 2**63 - 1]"),
    ],
)
def test_bad_options_fail_clearly(args, needle, tmp_path, tiny_files, cli):
    config = write_config(tmp_path, tiny_files)
    before = _snapshot(tmp_path)
    for command in ("validate", "fit"):
        result = invoke(cli, command, config, *args)
        assert result.exit_code == 2, result.output
        assert needle in result.stderr
        if args[0] == "--resum" and command == "fit":
            assert "(did you mean --resume?)" in result.stderr
    assert _snapshot(tmp_path) == before


def test_an_option_before_the_config_file_is_explained(tmp_path, tiny_files, cli):
    config = write_config(tmp_path, tiny_files)
    result = invoke(cli, "validate", "--train.lr", "0.1", config)
    assert result.exit_code == 2
    assert "--train.lr: the config file comes first, then the overrides" in result.stderr


def test_cuda_memory_is_the_limit_on_a_gpu():
    """On a GPU the estimate is compared with that GPU's memory, not the host's RAM."""
    from lmtrain.config import memory_available

    available, where = memory_available("cuda:0")
    if torch.cuda.is_available():
        assert available == torch.cuda.get_device_properties(0).total_memory
        assert where.startswith("cuda:0 (")
    else:
        assert "of RAM" in where
    assert config_from_dict({}).train.device == "auto"


def test_data_paths_are_saved_expanded_so_eval_works_without_the_variable(
    tmp_path, tiny_files, cli, monkeypatch
):
    monkeypatch.setenv("LMTRAIN_TEST_DATA", str(tiny_files["test"].parent))
    config = write_config(
        tmp_path, tiny_files, "run.dir=" + str(tmp_path / "run"),
        "data.train=${LMTRAIN_TEST_DATA}/train.txt", "data.test=${LMTRAIN_TEST_DATA}/test.txt",
    )  # fmt: skip
    result = invoke(cli, "fit", config, "train.max_steps=2", "--quiet")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]
    assert saved["test"] == str(tiny_files["test"])
    assert saved["train"] == str(tiny_files["train"])
    monkeypatch.delenv("LMTRAIN_TEST_DATA")
    result = invoke(cli, "eval", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"] == str(tiny_files["test"])
    # With the variable set again, the original config resumes: the same files, no change.
    monkeypatch.setenv("LMTRAIN_TEST_DATA", str(tiny_files["test"].parent))
    result = invoke(cli, "fit", config, "train.max_steps=3", "--resume", "auto", "--quiet")
    assert result.exit_code == 0, result.output


def test_an_unset_variable_in_a_data_path_is_named_when_read(
    tmp_path, tiny_files, cli, monkeypatch
):
    monkeypatch.delenv("LMTRAIN_NOT_SET", raising=False)
    config = write_config(tmp_path, tiny_files, "data.train=${LMTRAIN_NOT_SET}/train.txt")
    result = invoke(cli, "fit", config, "train.max_steps=1")
    assert result.exit_code == 2
    assert "LMTRAIN_NOT_SET" in result.stderr and "Traceback" not in result.stderr
