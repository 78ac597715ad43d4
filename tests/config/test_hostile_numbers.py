"""Hostile numbers and text: every integer option of every command is bounded where it is parsed;
values that torch or the tokenizers library would fail on, and config text that is not UTF-8,
are refused by validate and fit with exit 2 and the key named, never a traceback."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.config import Config, config_from_dict
from lmtrain.errors import LmtrainError
from lmtrain.preflight import environment_problems


def _write_config(tmp_path: Path, *overrides: str) -> Path:
    path = tmp_path / "config.yaml"
    cfg = tiny_config(tmp_path, write_tiny_files(tmp_path), *overrides)
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    return path


# --- command options --------------------------------------------------------------------------


def _int_options() -> set[tuple[str, str]]:
    """(command, --option) of every integer option the CLI declares."""
    from lmtrain.cli import app
    from lmtrain.cli.tools import diagnose_app

    found = set()
    for group, prefix in ((app, ""), (diagnose_app, "diagnose ")):
        for command in group.registered_commands:
            fn = inspect.unwrap(command.callback)
            for name, hint in typing.get_type_hints(fn, include_extras=True).items():
                base = typing.get_args(hint)[:1] or [hint]  # Annotated[int, typer.Option(...)]
                if int in (*base, *typing.get_args(base[0])):
                    found.add(
                        (prefix + (command.name or fn.__name__), "--" + name.replace("_", "-"))
                    )
    return found


INT_OPTIONS = sorted(
    [
        ("eval", "--batch-size"),
        ("eval", "--streams"),
        ("eval", "--dynamic-bptt"),
        ("eval", "--cache-size"),
        ("score", "--batch-size"),
        ("sample", "--max-tokens"),
        ("sample", "--top-k"),
        ("sample", "--seed"),
        ("sample", "--num-samples"),
        ("diagnose gradient-flow", "--steps"),
        ("diagnose gradient-flow", "--batch"),
        ("eval", "--threads"),
        ("score", "--threads"),
        ("sample", "--threads"),
        ("diagnose gradient-flow", "--threads"),
    ]
)


def test_the_sweep_below_covers_every_integer_option() -> None:
    assert _int_options() == set(INT_OPTIONS)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lmtrain.training import fit

    tmp = tmp_path_factory.mktemp("numbers")
    fit(tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=2"), quiet=True)
    return tmp / "run"


@pytest.mark.parametrize(("command", "option"), INT_OPTIONS)
def test_an_integer_option_beyond_its_range_exits_2(run: Path, cli, command, option) -> None:
    for value in (10**20, 2**63, -(10**20)):
        extra = ["the cat"] if command == "score" else []
        r = invoke(cli, *command.split(), run, *extra, option, value)
        assert r.exit_code == 2, (value, r.output)
        assert option in r.stderr and "must be" in r.stderr and "Traceback" not in r.output
        assert r.stdout == "" and (value < 0 or f"got {value}" in r.stderr)


def test_score_batch_size_beyond_int64_names_the_range(run: Path, cli) -> None:
    r = invoke(cli, "score", run, "the cat", "--batch-size", "99999999999999999999")
    assert r.exit_code == 2
    assert "--batch-size must be at most 1,000,000, got 99999999999999999999" in r.stderr
    ok = invoke(cli, "score", run, "the cat", "--batch-size", "1000000")
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("value", ["1e39", "1e308"])
def test_a_dynamic_lr_beyond_float32_exits_2(run: Path, cli, value: str) -> None:
    r = invoke(cli, "eval", run, "--dynamic-lr", value)
    assert r.exit_code == 2, r.output
    assert f"--dynamic-lr must be at most 3.403e+38, got {float(value)}" in r.stderr


@pytest.mark.parametrize("value", ["3", 2.5, True, None, 10**20])
def test_the_python_api_refuses_a_batch_size_that_is_no_count(run: Path, value) -> None:
    import lmtrain

    model = lmtrain.load(run)
    for call in (model.score, model.evaluate):
        with pytest.raises(LmtrainError, match=r"^batch_size must be (an integer|at most)"):
            call("the cat sat", batch_size=value)
    with pytest.raises(LmtrainError, match=r"^streams must be (an integer|at most)"):
        model.evaluate("the cat sat", streams=value)


# --- config values that used to fail inside torch or the tokenizers library -------------------

NOT_UTF8 = "\udcff"  # how Python spells the byte 0xff of an argument that is not UTF-8

CONFIG_CASES = [
    # (what makes the key matter, the hostile value, the message)
    (
        ["data.tokenizer=bpe", "data.vocab_size=300"],
        "data.vocab_size=4294967297",
        "must be in [260, 16,777,216]",
    ),
    ([], "train.weight_decay=1e308", "train.weight_decay: must be at most 3.403e+38"),
    (["train.optimizer=sgd"], "train.lr=1e39", "train.lr: must be at most 3.403e+38"),
    ([], "train.clip_grad_value=1e39", "train.clip_grad_value: must be at most 3.403e+38"),
    (["data.mode=sentences"], f"data.max_length={2**63 - 1}", "data.max_length: must be below"),
    (["model.adaptive_softmax.cutoffs=[5]"], "model.adaptive_softmax.div_value=0", ">= 1"),
    (["model.adaptive_softmax.auto=true"], "model.adaptive_softmax.div_value=0", ">= 1"),
    (["model.adaptive_softmax.cutoffs=[5]"], "model.adaptive_softmax.div_value=1e-320", ">= 1"),
    (
        ["model.adaptive_softmax.cutoffs=[5,9]"],
        "model.adaptive_softmax.div_value=1e308",
        "overflows",
    ),
    (["run.tensorboard=true"], f"run.dir=runs/{NOT_UTF8}", "run.dir: holds byte 0xff"),
    (
        ["run.tensorboard=true", "run.sample_tokens=5"],
        f"run.sample_prompt=the {NOT_UTF8}",
        "run.sample_prompt: holds byte 0xff (character 5), which is not UTF-8 text",
    ),
    (["run.tensorboard=true"], f"data.train={NOT_UTF8}.txt", "data.train: holds byte 0xff"),
]


@pytest.mark.parametrize(("context", "override", "message"), CONFIG_CASES)
def test_values_that_fail_inside_a_library_are_refused_by_validate_and_fit(
    context, override, message, tmp_path, cli, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative run.dir lands here, if anywhere
    config = _write_config(tmp_path, *context)
    before = sorted(tmp_path.rglob("*"))
    for command in ("validate", "fit"):
        r = invoke(cli, command, config, override)
        assert r.exit_code == 2, r.output
        assert message in r.stderr and "Traceback" not in r.output
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_a_byte_that_is_not_utf8_in_an_argument_is_refused(tmp_path: Path) -> None:
    """The real path: the shell hands over bytes, Python decodes them with surrogateescape."""
    config = _write_config(tmp_path, "run.tensorboard=true", "run.sample_tokens=5")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    args = [b"run.dir=" + os.fsencode(tmp_path) + b"/r\xff", b"run.sample_prompt=a\xfe"]
    out = subprocess.run(
        [sys.executable, "-m", "lmtrain", "fit", config, *args],
        capture_output=True,
        env=env,
        timeout=300,
    )
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 2, err
    assert "run.dir: holds byte 0xff (character" in err
    assert "run.sample_prompt: holds byte 0xfe (character 2)" in err
    assert "Traceback" not in err and not list(tmp_path.glob("r*"))


# --- every other number and value of the config -----------------------------------------------


def _number_keys(cls: type, prefix: str = "") -> list[str]:
    """The dotted keys of `cls` whose values are integers or numbers (lists of them included)."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _number_keys(tp, f"{prefix}{f.name}.")
        elif {int, float} & {tp, *typing.get_args(tp)}:
            keys.append(prefix + f.name)
    return keys


HOSTILE = [
    "99999999999999999999", str(2**63), str(2**63 - 1), str(-(2**63)), "-1", "0",
    "nan", "inf", "-inf", "1e308", "1e-320", "1e39", "abc", "true", "[]", "{}", "''",
    f"'{NOT_UTF8}'", "[1, 99999999999999999999]",
]  # fmt: skip
# Settings under which the keys that depend on them are read.
CONTEXTS = [
    [],
    ["data.tokenizer=bpe", "data.vocab_size=300"],
    ["data.mode=sentences"],
    ["model.adaptive_softmax.cutoffs=[5,9]", "model.cell=rnn_tanh"],
    ["train.schedule=cosine", "train.optimizer=ntasgd", "model.init=orthogonal"],
]


@pytest.mark.slow
@pytest.mark.parametrize("key", _number_keys(Config))
def test_hostile_values_of_every_key_are_a_config_error_or_accepted(key: str, tmp_path) -> None:
    raw = tiny_config(tmp_path, write_tiny_files(tmp_path)).to_dict()
    for context in CONTEXTS:
        for value in HOSTILE:
            try:
                cfg = config_from_dict(
                    raw, [*context, f"{key}={value}"], checks=environment_problems
                )
            except LmtrainError:
                continue
            # Accepted: then it is a value that the run's config.yaml holds and gives back.
            assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg, (context, key, value)
