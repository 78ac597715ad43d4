"""Out-of-range options of eval, score and sample stop with exit 2 and a message naming the option;
score shows unknown words; sample prints the seed it drew."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.config import AdaptOptions, EvalOptions, SampleOptions
from lmtrain.errors import LmtrainError
from lmtrain.runtime.device import resolve_device
from lmtrain.training import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("options")
    fit(
        tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=6"),
        quiet=True,
        echo=lambda s: None,
    )
    return tmp / "run"


def _tree_hash(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        h.update(str(p.relative_to(directory)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# --- devices -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["foo", "cuda:x", "cuda:-1", "CPU", "cpu ", ""])
def test_unknown_device_names_are_refused(spec: str) -> None:
    with pytest.raises(LmtrainError, match=re.escape(f"--device is {spec!r}; expected auto")):
        resolve_device(spec, "--device")


def test_known_device_names_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("command", ["eval", "score", "sample"])
def test_cli_device_typo_exits_2(run: Path, cli, command: str) -> None:
    extra = ["the cat"] if command == "score" else []
    r = invoke(cli, command, run, *extra, "--device", "foo")
    assert r.exit_code == 2, r.output
    assert "error: --device is 'foo'; expected auto, cpu, cuda or cuda:N" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_sample_does_not_import_the_training_module(run: Path) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lmtrain.cli import app\n"
        f"r = CliRunner().invoke(app, ['sample', {str(run)!r}, '--max-tokens', '3', '--seed', '1'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print('lmtrain.training.loop' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- option ranges -------------------------------------------------------------------------

SAMPLE_CASES = [
    (("--temperature", "inf"), "--temperature must be > 0 and finite, got inf"),
    (("--temperature", "nan"), "--temperature must be > 0 and finite, got nan"),
    (("--temperature", "0"), "--temperature must be > 0 and finite, got 0.0"),
    (("--temperature", "-1"), "--temperature must be > 0 and finite, got -1.0"),
    (("--top-p", "0"), "--top-p must be in (0, 1] (1 = off), got 0.0"),
    (("--top-p", "1.5"), "--top-p must be in (0, 1] (1 = off), got 1.5"),
    (("--top-p", "nan"), "--top-p must be in (0, 1] (1 = off), got nan"),
    (("--top-k", "-1"), "--top-k must be >= 0 (0 = off), got -1"),
    (("--max-tokens", "-1"), "--max-tokens must be in [0, 1,000,000], got -1"),
    (("--max-tokens", "2000000000"), "--max-tokens must be in [0, 1,000,000], got 2000000000"),
    (("--num-samples", "0"), "--num-samples must be in [1, 10,000], got 0"),
    (("--num-samples", "99999999"), "--num-samples must be in [1, 10,000], got 99999999"),
    (
        ("--num-samples", "10000", "--max-tokens", "10000"),
        "is 100,000,000 tokens, more than the 10,000,000 one call generates",
    ),
    (("--seed", "-5"), "--seed must be in [0, 2**63 - 1], got -5"),
    (("--seed", str(2**64)), f"--seed must be in [0, 2**63 - 1], got {2**64}"),
]

EVAL_CASES = [
    (("--streams", "20000"), "--streams 20000 is more than"),
    (("--streams", "0"), "--streams must be >= 1 (1 = exact), got 0"),
    (("--batch-size", "0"), "--batch-size must be >= 1, got 0"),
    (("--dynamic-lr", "nan"), "--dynamic-lr must be >= 0 and finite (0 = off), got nan"),
    (("--dynamic-lr", "inf"), "--dynamic-lr must be >= 0 and finite (0 = off), got inf"),
    (("--dynamic-lr", "-0.1"), "--dynamic-lr must be >= 0 and finite (0 = off), got -0.1"),
    (("--dynamic-bptt", "0"), "--dynamic-bptt must be >= 1, got 0"),
    (("--dynamic-decay", "nan"), "--dynamic-decay must be in [0, 1), got nan"),
    (("--dynamic-decay", "-1"), "--dynamic-decay must be in [0, 1), got -1.0"),
    (("--dynamic-method", "adam"), "--dynamic-method must be sgd or rms, got 'adam'"),
    (("--cache-size", "-3"), "--cache-size must be >= 0 (0 = off), got -3"),
    (("--cache-theta", "nan"), "--cache-theta must be >= 0 and finite, got nan"),
    (("--cache-theta", "inf"), "--cache-theta must be >= 0 and finite, got inf"),
    (("--cache-theta", "-1"), "--cache-theta must be >= 0 and finite, got -1.0"),
    (("--cache-lambda", "inf"), "--cache-lambda must be in [0, 1), got inf"),
    (("--cache-lambda", "1"), "--cache-lambda must be in [0, 1), got 1.0"),
]


@pytest.mark.parametrize(("args", "needle"), SAMPLE_CASES)
def test_sample_option_out_of_range_exits_2(run: Path, cli, args, needle: str) -> None:
    before = _tree_hash(run)
    r = invoke(cli, "sample", run, *args)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and "Traceback" not in r.output
    assert r.stdout == "" and _tree_hash(run) == before


@pytest.mark.parametrize(("args", "needle"), EVAL_CASES)
def test_eval_option_out_of_range_exits_2(run: Path, cli, args, needle: str) -> None:
    r = invoke(cli, "eval", run, *args)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and "Traceback" not in r.output
    assert r.stdout == ""


def test_score_batch_size_zero_exits_2(run: Path, cli) -> None:
    r = invoke(cli, "score", run, "the cat", "--batch-size", "0")
    assert r.exit_code == 2 and "--batch-size must be >= 1, got 0" in r.stderr


def test_all_problems_are_reported_at_once() -> None:
    assert len(SampleOptions(max_tokens=-1, temperature=0, top_k=-1, top_p=2).problems()) == 4
    assert len(AdaptOptions(dynamic_lr=-1, cache_size=-1, cache_theta=-1).problems()) == 3
    assert len(EvalOptions(batch_size=0, streams=0).problems()) == 2
    # Each stream needs a token to read and one to predict.
    assert EvalOptions(streams=5).text_problems(10, "t") == []
    assert EvalOptions(streams=6).text_problems(10, "t") != []
    assert EvalOptions().text_problems(1, "t") == [
        "t: too little text to evaluate (1 tokens; at least 2 needed)"
    ]


def test_largest_streams_allowed_evaluates(run: Path, cli) -> None:
    r = invoke(cli, "eval", run, "--json")
    tokens = json.loads(r.stdout)["tokens"] + 1
    r = invoke(cli, "eval", run, "--streams", str(tokens // 2), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tokens"] == tokens // 2  # one prediction per stream


def test_extreme_temperatures_sample_without_error(run: Path, cli) -> None:
    greedy = invoke(cli, "sample", run, "--greedy", "--max-tokens", "12", "--seed", "3")
    assert greedy.exit_code == 0, greedy.output
    # A vanishing temperature is greedy decoding (it used to make every probability NaN).
    cold = invoke(
        cli, "sample", run, "--temperature", "1e-300", "--max-tokens", "12", "--seed", "3"
    )
    assert cold.exit_code == 0, cold.output
    assert cold.stdout == greedy.stdout
    hot = invoke(cli, "sample", run, "--temperature", "1e300", "--max-tokens", "12", "--seed", "3")
    assert hot.exit_code == 0, hot.output


# --- score shows unknown words -------------------------------------------------------------


def test_score_shows_unknown_words_and_warns(run: Path, cli) -> None:
    r = invoke(cli, "score", run, "the cat sat", "zebra quagga okapi")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "logprob\tlog2prob\ttokens\tppl\toov\ttext"
    assert [line.split("\t")[4:] for line in lines[1:]] == [
        ["0", "the cat sat"],
        ["3", "zebra quagga okapi"],
    ]
    assert "warning: 1 of 2 sentence(s) hold tokens not in the model's vocabulary" in r.stderr
    r = invoke(cli, "score", run, "the cat sat", "zebra quagga okapi", "--json")
    assert [s["oov"] for s in json.loads(r.stdout)] == [0, 3]
    assert "warning: 1 of 2" in r.stderr
    # Only known words: no warning and no oov column.
    r = invoke(cli, "score", run, "the cat sat")
    assert r.stderr == "" and r.stdout.splitlines()[0] == "logprob\tlog2prob\ttokens\tppl\ttext"


# --- sample prints the seed it drew --------------------------------------------------------


def test_sample_prints_a_drawn_seed_that_regenerates_the_text(run: Path, cli) -> None:
    first = invoke(cli, "sample", run, "--max-tokens", "20", "--num-samples", "2")
    assert first.exit_code == 0, first.output
    m = re.fullmatch(r"seed: (\d+) \(pass --seed \1 to repeat\)\n", first.stderr)
    assert m, first.stderr
    again = invoke(cli, "sample", run, "--max-tokens", "20", "--num-samples", "2", "--seed", m[1])
    assert again.exit_code == 0 and again.stdout == first.stdout
    assert again.stderr == ""  # a given seed is not echoed
