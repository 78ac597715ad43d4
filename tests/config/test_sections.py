"""The data and model sections live with their packages: they check themselves, and the root
config gathers their problems with the rest. That neither package reaches up into lmtrain.config
(nor into the other's section) is a rule of the layer table, tests/test_architecture.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmtrain.config import DataConfig, ModelConfig, TrainConfig, config_from_dict, field_docs
from lmtrain.data.tokenizers import TOKENIZERS
from lmtrain.errors import ConfigError
from lmtrain.metrics.config import LOGGERS
from lmtrain.records import choices, type_hints


def test_reading_the_sections_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import lmtrain.config, lmtrain.data.config, lmtrain.models.config\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_config_exports_the_sections_of_their_packages() -> None:
    import lmtrain.data.config
    import lmtrain.models.config

    assert DataConfig is lmtrain.data.config.DataConfig
    assert ModelConfig is lmtrain.models.config.ModelConfig


def test_every_section_problem_is_reported_at_once_section_by_section() -> None:
    overrides = ["train.bptt=0", "model.dropout=1.0", "data.min_freq=0", "data.cache_dir= "]
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, overrides)
    assert e.value.problems == [
        "data.min_freq: must be >= 1, got 0",
        "data.cache_dir: must not be empty (null = no cache)",
        "model.dropout: must be in [0, 1), got 1.0",
        "train.bptt: must be >= 1, got 0",
    ]


def test_the_data_section_reports_its_own_problems_by_dotted_key() -> None:
    d = DataConfig(tokenizer="byte", min_freq=2, tokenizer_file="t.json", test="a\0b")
    assert d.problems() == [
        "data.min_freq: the byte vocabulary is fixed (256 bytes); leave 1",
        "data.tokenizer_file: only applies to data.tokenizer: bpe; leave it null",
        "data.test: must not contain a NUL character",
    ]
    assert DataConfig().problems() == []


def test_run_loggers_are_the_names_of_the_metrics_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LOGGERS, "toy", object)
    assert config_from_dict({"run": {"loggers": ["toy", "wandb"]}}).run.loggers == ["toy", "wandb"]
    with pytest.raises(ConfigError) as e:
        config_from_dict({"run": {"loggers": ["neptune"]}})
    assert e.value.problems == ["run.loggers: 'neptune' is not one of wandb, mlflow, toy"]


def test_the_tokenizer_names_of_the_data_section_are_the_registrys() -> None:
    names = list(choices(type_hints(DataConfig)["tokenizer"]) or ())
    assert names == list(TOKENIZERS) == ["char", "word", "byte", "bpe"]
    assert all(TOKENIZERS[name].kind == name for name in names)
    assert all(f"`{name}`" in field_docs(DataConfig)["tokenizer"] for name in names)


def test_the_train_section_lives_with_training_and_imports_no_torch() -> None:
    import lmtrain.training.config

    assert TrainConfig is lmtrain.training.config.TrainConfig
    code = "import sys, lmtrain.training.config\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
