"""An override of a text field means the text typed: `run.sample_prompt=ROMEO:` is the prompt
ROMEO:, not the YAML mapping {ROMEO: None}; fields of other types keep the YAML reading."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import invoke, tiny_config
from lmtrain.config import config_from_dict
from lmtrain.errors import ConfigError


@pytest.mark.parametrize(
    ("typed", "prompt"),
    [
        ("ROMEO:", "ROMEO:"),  # YAML: {'ROMEO': None}
        ("ROMEO: hi", "ROMEO: hi"),  # YAML: {'ROMEO': 'hi'}
        ("123", "123"),
        ("1.5", "1.5"),
        ("true", "true"),
        ("null", "null"),  # a field that takes only text: null is a word
        ("[a]", "[a]"),
        ("{a: 1}", "{a: 1}"),
        ("The ", "The "),  # YAML would drop the space the recipes' prompts end with
        ("", ""),
        ('"The "', "The "),  # a quoted YAML string keeps the quotes' meaning
        ("'ROMEO:'", "ROMEO:"),
        ("The", "The"),
    ],
)
def test_a_text_field_takes_the_text_typed(typed: str, prompt: str) -> None:
    cfg = config_from_dict({}, [f"run.sample_prompt={typed}"])
    assert cfg.run.sample_prompt == prompt


def test_a_text_field_that_takes_null_keeps_it() -> None:
    assert config_from_dict({}, ["data.valid=null"]).data.valid is None
    assert config_from_dict({}, ["data.valid=~"]).data.valid is None
    assert config_from_dict({}, ["data.valid=123"]).data.valid == "123"
    assert config_from_dict({}, ["run.dir=2024"]).run.dir == "2024"


def test_fields_of_other_types_keep_the_yaml_reading() -> None:
    cfg = config_from_dict(
        {}, ["train.lr=0.5", "run.tensorboard=false", "run.loggers=[]", "train.max_steps=7"]
    )
    assert cfg.train.lr == 0.5 and cfg.run.tensorboard is False
    assert cfg.run.loggers == [] and cfg.train.max_steps == 7
    assert config_from_dict({}, ["train.num_threads=null"]).train.num_threads is None
    with pytest.raises(ConfigError, match=r"train.lr: expected a number, got 'fast'"):
        config_from_dict({}, ["train.lr=fast"])
    # A field of named choices still says which choices there are.
    with pytest.raises(ConfigError, match=r"model.cell: expected one of .*got 5 \(int\)"):
        config_from_dict({}, ["model.cell=5"])
    # A text field in the file is YAML as written: only the command line's text is literal.
    with pytest.raises(ConfigError, match=r"run.sample_prompt: expected a string"):
        config_from_dict({"run": {"sample_prompt": {"ROMEO": None}}})


def test_validate_and_fit_take_the_prompt_as_typed(tmp_path: Path, tiny_files, cli) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files).to_yaml())
    for form in (["run.sample_prompt=ROMEO:"], ["--run.sample_prompt", "ROMEO:"]):
        r = invoke(cli, "validate", path, *form)
        assert r.exit_code == 0, r.stderr
        shown = yaml.safe_load(r.stdout.split("\n", 1)[1])
        assert shown["run"]["sample_prompt"] == "ROMEO:"
    r = invoke(cli, "fit", path, "run.sample_prompt=ROMEO:", "train.max_steps=2", "--quiet")
    assert r.exit_code == 0, r.stderr
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["run"]["sample_prompt"] == "ROMEO:"
    assert "lmtrain sample" in r.stdout and "--prompt ROMEO:" in r.stdout
