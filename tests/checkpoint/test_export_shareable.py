"""An export is shareable: no folder of the training machine in config.json or the model card,
and a card that opens with the metadata header model hubs read."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.checkpoint import load_checkpoint
from lmtrain.training import fit


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose data paths and run.dir are absolute, as a real run's often are."""
    tmp = tmp_path_factory.mktemp("shareable")
    files = write_tiny_files(tmp)
    cfg = tiny_config(tmp, files, "train.max_steps=6", f"data.cache_dir={tmp / 'cache'}")
    fit(cfg, quiet=True, echo=print)
    return tmp / "run"


def _header(card: str) -> dict:
    assert card.startswith("---\n"), card[:80]
    return yaml.safe_load(card.split("---\n")[1])


def test_config_json_and_card_name_no_folder_of_this_machine(cli, run, tmp_path) -> None:
    out = tmp_path / "exp"
    r = invoke(cli, "export", run, "--out", out)
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert not [s for s in _strings(config) if s.startswith("/")], config
    assert (config["data"]["train"], config["run"]["dir"]) == ("train.txt", "run")
    assert config["data"]["cache_dir"] == "cache"
    card = (out / "README.md").read_text()
    for folder in (str(run.parent), str(Path.home()), str(tmp_path)):
        assert folder not in card
    assert "exported from its `checkpoints/best.pt` at step" in card
    # Still a config that loads and evaluates.
    assert invoke(cli, "eval", out, "--data", run.parent / "test.txt").exit_code == 0


def test_paths_in_lmtrain_data_or_home_keep_their_place(monkeypatch, tmp_path) -> None:
    from lmtrain.export import portable_path

    monkeypatch.setenv("LMTRAIN_DATA", str(tmp_path / "corpora"))
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert portable_path(f"{tmp_path}/corpora/wikitext-2/train.txt") == (
        "${LMTRAIN_DATA}/wikitext-2/train.txt"
    )
    assert portable_path(f"{tmp_path}/me/texts/input.txt:valid") == "~/texts/input.txt:valid"
    assert portable_path("/srv/x/input.txt:train") == "input.txt:train"
    for kept in ("builtin:python-docs:test", "data/train.txt", "${LMTRAIN_DATA}/a.txt", "~/a"):
        assert portable_path(kept) == kept
    assert portable_path("auto") == "auto"


def test_card_opens_with_a_hub_metadata_header(cli, run, tmp_path) -> None:
    out = tmp_path / "exp"
    assert invoke(cli, "export", run, "--out", out, "--license", "apache-2.0").exit_code == 0
    header = _header((out / "README.md").read_text())
    assert header["library_name"] == "lmtrain"
    assert header["license"] == "apache-2.0"
    assert {"lmtrain", "pytorch", "safetensors", "lstm", "word-level"} <= set(header["tags"])
    assert header["pipeline_tag"] == "text-generation"
    assert header["metrics"] == ["perplexity", "loss"]
    best = load_checkpoint(run / "checkpoints" / "best.pt").progress.best_val_loss
    figures = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert figures == {"perplexity": round(math.exp(best), 4), "loss": round(best, 4)}
    plain = invoke(cli, "export", run, "--out", tmp_path / "exp2")
    assert plain.exit_code == 0
    assert "license" not in _header((tmp_path / "exp2" / "README.md").read_text())


def test_without_huggingface_hub_the_header_is_written_all_the_same(
    run, tmp_path, monkeypatch
) -> None:
    from lmtrain.export import export_run

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    out = export_run(run, tmp_path / "exp", license="mit").out
    header = _header((out / "README.md").read_text())
    assert (header["library_name"], header["license"]) == ("lmtrain", "mit")
    assert header["metrics"] == ["perplexity", "loss"] and "lmtrain" in header["tags"]


@pytest.mark.parametrize("bad", ["", "mit licence", "../x", "a" * 65, "-mit"])
def test_a_licence_that_is_no_identifier_is_refused(cli, run, tmp_path, bad) -> None:
    r = invoke(cli, "export", run, "--out", tmp_path / "exp", "--license", bad)
    assert r.exit_code == 2
    assert "expected a licence identifier" in r.stderr
    assert not (tmp_path / "exp").exists()
