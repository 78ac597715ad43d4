"""The command options (eval, score, sample, diagnose) are a schema like the config's."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml

from conftest import invoke
from lmtrain.config import (
    COMMAND_OPTIONS,
    AdaptOptions,
    Config,
    EvalOptions,
    GradientFlowOptions,
    PlotOptions,
    SampleOptions,
    build_options,
    config_from_dict,
    describe,
    field_docs,
)
from lmtrain.data.config import MIN_BPE_VOCAB
from lmtrain.errors import ConfigError


@pytest.mark.parametrize("name", list(COMMAND_OPTIONS))
def test_every_command_option_has_a_doc_and_is_listed_by_lmtrain_config(name: str) -> None:
    cls = COMMAND_OPTIONS[name]
    docs = field_docs(cls)
    assert [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)] == []
    text = describe()
    assert f"# {name}:  # {cls.__doc__}" in text
    for f in dataclasses.fields(cls):
        assert f"#   {f.name}: " in text


def test_lmtrain_config_prints_the_command_defaults_and_stays_a_valid_config(cli) -> None:
    out = invoke(cli, "config").stdout
    assert "#   batch_size: 32  # Sentences scored together." in out
    assert "#   cache_lambda: 0.1279  # Weight of the cache in the mixture" in out
    assert "#   steps: 50  # Window length T." in out
    # The command options are comments, so `lmtrain config > my.yaml` is still a config.
    assert config_from_dict(yaml.safe_load(out)) == Config()


def test_build_options_is_as_strict_as_the_config() -> None:
    assert build_options(EvalOptions, {"batch_size": 4}, "eval") == EvalOptions(batch_size=4)
    assert build_options(SampleOptions, None, "sample") == SampleOptions()
    with pytest.raises(ConfigError) as e:
        build_options(
            AdaptOptions,
            {"dynamic_lr": "fast", "cache_sise": 3, "dynamic_method": "rsm", "cache_lambda": 2},
            "adapt",
        )
    assert e.value.problems == [
        "adapt.dynamic_lr: expected a number, got 'fast' (str)",
        "adapt.cache_sise: unknown key; did you mean 'adapt.cache_size'? (valid keys here: "
        "dynamic_lr, dynamic_bptt, dynamic_method, dynamic_decay, cache_size, cache_theta, "
        "cache_lambda)",
        "adapt.dynamic_method: expected one of 'sgd', 'rms', got 'rsm'; did you mean 'rms'?",
        "--cache-lambda must be in [0, 1), got 2.0",
    ]
    with pytest.raises(ConfigError, match="expected a mapping of options, got list"):
        build_options(EvalOptions, [1], "eval")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"gradient_flow.cell\[0\]: expected a string"):
        build_options(GradientFlowOptions, {"cell": [3]}, "gradient_flow")


def test_gradient_flow_cli_defaults_and_help_come_from_the_schema() -> None:
    from lmtrain.cli.tools import gradient_flow_cmd

    params = inspect.signature(gradient_flow_cmd).parameters
    defaults = GradientFlowOptions()
    assert params["steps"].default == defaults.steps
    assert params["batch"].default == defaults.batch
    assert str(params["out"].default) == defaults.out
    assert GradientFlowOptions(steps=1).problems() == ["--steps must be >= 2 and --batch >= 1"]


def test_plot_cli_defaults_come_from_the_schema() -> None:
    from lmtrain.cli.tools import plot_cmd

    params = inspect.signature(plot_cmd).parameters
    defaults = PlotOptions()
    assert (str(params["out"].default), params["metric"].default, params["x"].default) == (
        defaults.out,
        defaults.metric,
        defaults.x,
    )
    with pytest.raises(
        ConfigError, match="plot.metric: expected one of 'loss', 'ppl', 'bpc', 'bpb'"
    ):
        build_options(PlotOptions, {"metric": "perplexity"}, "plot")


def _data(**data: object) -> list[str]:
    try:
        config_from_dict({"data": data})
    except ConfigError as e:
        return e.problems
    return []


def test_bpe_keys_are_checked() -> None:
    assert Config().data.cache_dir == "auto"
    assert _data(tokenizer="bpe", vocab_size=MIN_BPE_VOCAB) == []
    assert _data(tokenizer="bpe", tokenizer_file="tok.json") == []
    assert _data(tokenizer="bpe") == [
        "data.tokenizer: bpe needs data.vocab_size (to train one on the training split) "
        "or data.tokenizer_file (a tokenizer.json)"
    ]
    assert _data(tokenizer="bpe", vocab_size=MIN_BPE_VOCAB - 1) == [
        f"data.vocab_size: must be >= {MIN_BPE_VOCAB} (3 specials and 256 byte symbols come "
        f"before the first merge), got {MIN_BPE_VOCAB - 1}"
    ]
    both = _data(tokenizer="bpe", vocab_size=1000, tokenizer_file="tok.json")
    assert both == [
        "data.vocab_size: data.tokenizer_file brings its own vocabulary; set one of "
        "vocab_size and tokenizer_file"
    ]
    assert _data(tokenizer="word", vocab_size=1000, tokenizer_file="t.json") == [
        "data.vocab_size: only applies to data.tokenizer: bpe; leave it null",
        "data.tokenizer_file: only applies to data.tokenizer: bpe; leave it null",
    ]
    assert _data(tokenizer="bpe", vocab_size=1000, max_size=10) == [
        "data.max_size: bpe sets its size with data.vocab_size; leave max_size null"
    ]
