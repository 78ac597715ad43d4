from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import invoke
from lmtrain.config import Config, config_from_dict, describe, field_docs, load_config
from lmtrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_every_field_has_a_one_line_doc() -> None:
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert missing == [], f"{section.name}: fields without a docstring: {missing}"
    assert "hidden_size: 256  # Size of each recurrent layer's hidden state." in describe()


def test_overrides_are_typed_and_nested() -> None:
    cfg = config_from_dict(
        {}, ["train.lr=0.5", "model.cell=gru", "train.max_steps=null", "train.lr=1e-3"]
    )
    assert cfg.train.lr == 0.001 and cfg.model.cell == "gru" and cfg.train.max_steps is None


def test_unknown_key_names_full_path_and_closest_key() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {"hiden_size": 10}})
    assert "model.hiden_size: unknown key; did you mean 'model.hidden_size'?" in str(e.value)


def test_all_problems_reported_together() -> None:
    raw = {
        "model": {"dropout": 1.5, "tie_weights": True, "embedding_dim": 8, "hidden_size": 16},
        "train": {"bptt": 0, "optimizer": "adamm", "lr": "fast"},
        "colour": {},
    }
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    problems = e.value.problems
    assert len(problems) == 6, problems
    text = str(e.value)
    for needle in (
        "model.dropout: must be in [0, 1), got 1.5",
        "model.tie_weights: tied weights need model.embedding_dim == model.hidden_size, got 8 and 16",
        "train.bptt: must be >= 1, got 0",
        "train.optimizer: expected one of 'sgd', 'adam', 'adamw', 'rmsprop', 'ntasgd', got 'adamm'; did you mean 'adam'?",
        "train.lr: expected a number, got 'fast'",
        "colour: unknown key",
    ):
        assert needle in text


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"train": {"epochs": 1.5}}, "train.epochs: expected an integer, got 1.5"),
        ({"train": {"epochs": True}}, "train.epochs: expected an integer, got True"),
        ({"model": {"tie_weights": "yes please"}}, "model.tie_weights: expected true or false"),
        ({"train": {"lr": float("nan")}}, "train.lr: must be a finite number"),
        (
            {"train": {"device": "gpu"}},
            "train.device: expected auto, cpu, cuda or cuda:N, got 'gpu'",
        ),
        ({"train": 3}, "train: expected a mapping, got 3"),
        ([1, 2], "the top level must be a mapping"),
    ],
)
def test_wrong_types_are_named(raw: object, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert needle in str(e.value)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, ["train.lr", "model.cell.x=1"])
    text = str(e.value)
    assert "override 'train.lr': expected KEY=VALUE" in text
    assert "model.cell: expected one of 'rnn_tanh'" in text


def test_yaml_errors_and_duplicates(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_config(bad)
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_validate_command_exit_codes(cli, tmp_path: Path) -> None:
    good = ROOT / "configs" / "quickstart.yaml"
    result = invoke(cli, "validate", good, "train.lr=0.1")
    assert result.exit_code == 0, result.output
    assert "lr: 0.1" in result.stdout
    result = invoke(cli, "validate", good, "model.cel=gru", "train.bptt=0")
    assert result.exit_code == 2
    assert "2 problem(s) found" in result.stderr
    assert "did you mean 'model.cell'?" in result.stderr
    assert "Traceback" not in result.output


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\nmodel:\n  cell: gru\n")
    cfg = load_config(path)
    assert cfg.train == Config().train and cfg.model.cell == "gru"


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.cell=gru", "model.num_layers=3"],
        ["model.cell=rnn_tanh", "model.tie_weights=true", "model.embedding_dim=256"],
        ["model.cell=rnn_manual", "model.num_layers=1"],
        ["model.adaptive_softmax.cutoffs=[20, 200]", "model.adaptive_softmax.div_value=2.0"],
    ],
    ids=["lstm", "gru-3", "tied-rnn", "manual", "adaptive"],
)
def test_memory_estimate_counts_the_parameters_the_model_has(overrides: list[str]) -> None:
    from lmtrain.config import estimate_memory
    from lmtrain.models import build_model

    cfg = config_from_dict({}, overrides)
    model = build_model(cfg.model, 1000)
    estimate = estimate_memory(cfg, 1000)
    assert estimate.parameters == sum(p.numel() for p in model.parameters())
    # adam keeps two slots: weights, gradients and both slots at 4 bytes each.
    assert estimate.state_bytes == 16 * estimate.parameters


def test_integers_must_fit_in_64_bits() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, ["train.max_steps=9223372036854775808", "train.log_every=1.0e+19"])
    assert "train.max_steps: 9223372036854775808 is out of range (at most 2**63 - 1)" in str(
        e.value
    )
    assert "train.log_every: 1e+19 is out of range" in str(e.value)
    assert (
        config_from_dict({}, ["train.max_steps=9223372036854775807"]).train.max_steps == 2**63 - 1
    )


def test_run_dir_expands_when_a_file_is_loaded_not_when_a_saved_config_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMTRAIN_TEST_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  dir: ${LMTRAIN_TEST_DIR}/a\ndata:\n  train: ${LMTRAIN_TEST_DIR}/t\n")
    cfg = load_config(path)
    assert cfg.run.dir == str(tmp_path / "runs" / "a")
    # Data paths expand too where their variables are set (the saved config names the files);
    # an unset one is kept, for the read to report with the file's name.
    assert cfg.data.train == str(tmp_path / "runs" / "t")
    monkeypatch.delenv("LMTRAIN_TEST_DIR")
    path.write_text("data:\n  train: ${LMTRAIN_TEST_DIR}/t\n")
    assert load_config(path).data.train == "${LMTRAIN_TEST_DIR}/t"
    assert load_config(path, ["run.dir=~/x"]).run.dir == str(tmp_path / "home" / "x")
    assert config_from_dict({"run": {"dir": "${UNSET_IN_A_SAVED_CONFIG}"}}).run.dir == (
        "${UNSET_IN_A_SAVED_CONFIG}"
    )


def test_aliases_are_allowed_up_to_a_bound(tmp_path: Path) -> None:
    from lmtrain.config import MAX_YAML_VALUES

    items = ", ".join(["1"] * 99)
    path = tmp_path / "c.yaml"
    # With the mapping, keys and lists: 1 + 2 + 100 + (1 + 98 x 100) = 9,904 values, in bounds.
    path.write_text(f"x: &a [{items}]\ny: [{', '.join(['*a'] * 98)}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "x: unknown key" in str(e.value)
    path.write_text(f"x: &a [{items}, 1]\ny: [{', '.join(['*a'] * 101)}]\n")
    with pytest.raises(ConfigError, match=f"expand to more than {MAX_YAML_VALUES:,} values"):
        load_config(path)


@pytest.mark.parametrize("key", ["data.train", "run.dir", "model.pretrained_embeddings"])
def test_paths_with_a_nul_character_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: must not contain a NUL character"):
        config_from_dict({}, [f'{key}="a\\0b"'])


def test_a_div_value_whose_powers_overflow_is_refused() -> None:
    overrides = ["model.adaptive_softmax.cutoffs=[5, 10]", "model.adaptive_softmax.div_value=1e200"]
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, overrides)
    assert (
        "model.adaptive_softmax.div_value: 1e+200 ** 2 (one power per tail cluster) overflows"
        in (str(e.value))
    )
    assert config_from_dict({}, [*overrides[:1], "model.adaptive_softmax.div_value=1e100"])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.early_stopping=0"], "train.early_stopping: must be >= 1 or null, got 0"),
        (
            ["train.early_stopping=3", "data.valid=null"],
            "train.early_stopping: counts evaluations on validation data; set data.valid",
        ),
        (
            ["train.schedule_span=time"],
            "train.schedule_span: expected one of 'auto', 'steps', got 'time'",
        ),
        (
            ["model.adaptive_softmax.auto=true", "model.tie_weights=true"],
            "model.tie_weights: cannot tie the embedding to an adaptive softmax; set "
            "tie_weights: false or model.adaptive_softmax.cutoffs: [] and auto: false",
        ),
        (
            ["model.adaptive_softmax.auto=true", "model.adaptive_softmax.div_value=0.5"],
            "model.adaptive_softmax.div_value: must be >= 1",
        ),
    ],
)
def test_transfer_settings_are_checked(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, overrides)
    assert needle in str(e.value)


def test_transfer_settings_default_to_what_runs_did_before() -> None:
    cfg = config_from_dict({}, ["train.early_stopping=2", "model.adaptive_softmax.auto=true"])
    assert cfg.train.early_stopping == 2 and cfg.model.adaptive_softmax.auto
    default = Config()
    assert default.train.early_stopping is None  # off
    assert default.model.adaptive_softmax.cutoffs_for(50_000) == []  # full softmax
    text = describe()
    assert "early_stopping: null  # Stop after this many evaluations in a row" in text
    assert "schedule_span: auto  # Cosine decay over `auto`: the planned steps or" in text
