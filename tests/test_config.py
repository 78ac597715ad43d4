from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import invoke
from lmtrain.config import Config, config_from_dict, describe, field_docs, load_config
from lmtrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


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
