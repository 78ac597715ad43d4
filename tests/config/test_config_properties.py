"""Property tests: no config input yields a traceback."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmtrain.config import Config, config_from_dict, load_config
from lmtrain.errors import ConfigError

SECTIONS = ["data", "model", "train", "run"]
KEYS = ["train", "valid", "tokenizer", "mode", "cell", "hidden_size", "dropout", "lr", "epochs"]
KEYS += ["max_steps", "device", "dir", "keep_last", "max_nonfinite_steps", "clip_grad_norm"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["lstm", "gru", "char", "cpu", "cuda:7", "1e-3", "nan", "inf", ""])
)
keys = st.sampled_from(SECTIONS + KEYS) | st.text(max_size=10) | st.integers() | st.none()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
documents = st.dictionaries(st.sampled_from(SECTIONS) | keys, values, max_size=5) | values
override_keys = st.lists(st.sampled_from(SECTIONS + KEYS) | st.text(max_size=6), max_size=4).map(
    ".".join
)
overrides = st.lists(
    st.tuples(override_keys, st.sampled_from(["=", "", "=="]), st.text(max_size=20)).map("".join)
    | st.text(max_size=30),
    max_size=4,
)


def _config_or_error(raw, items) -> Config | ConfigError:
    try:
        return config_from_dict(raw, items)
    except ConfigError as e:
        assert e.problems and str(e).startswith("config:")
        return e


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, overrides)
@example({"train": None}, ["train.lr=0.5"])
@example({"train": {"lr": 10**400}}, [])
@example({"model": {"hidden_size": 2.0**70}}, ["train.lr=1e999"])
def test_no_config_document_or_override_gives_a_traceback(raw, items):
    _config_or_error(raw, items)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
@example("train: {lr: &a [*a]}")
@example("? [a, b]\n: 1")
@example("a: &x {b: *x}")
@example("[" * 3000)
@example("x: !!python/object/apply:os.system ['echo pwned']")
def test_no_config_file_gives_a_traceback(text):
    path = Path(_tmp()) / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(ConfigError):
        load_config(path)


def test_a_section_left_empty_accepts_overrides():
    cfg = config_from_dict(yaml.safe_load("train:\nmodel:\n"), ["train.lr=0.5"])
    assert cfg.train.lr == 0.5


def test_huge_and_self_referencing_values_are_config_errors():
    with pytest.raises(ConfigError, match="train.lr: must be a finite number"):
        config_from_dict({"train": {"lr": 10**400}})
    loop: dict = {}
    loop["x"] = loop
    with pytest.raises(ConfigError, match="nested too deeply|refers to itself"):
        config_from_dict({"train": loop})


_TMP: list[str] = []


def _tmp() -> str:
    if not _TMP:
        import tempfile

        _TMP.append(tempfile.mkdtemp(prefix="lmtrain-props-"))
    return _TMP[0]
