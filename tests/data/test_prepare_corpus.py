"""A config's splits through the prepared-file cache: the same ids as today, tokenised once."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import lmtrain.data.prepare as prepare_module
from conftest import TINY_TEXT, tiny_config
from lmtrain.config import Config
from lmtrain.data.prepare import prepare_corpus
from lmtrain.data.tokenizers import Settings, Tokenizer, build, from_dict
from lmtrain.errors import DataError
from lmtrain.training.data import Corpus, prepare_data

OLD = 1_000_000_000  # outside the window in which a just-written file is hashed every time


@pytest.fixture
def old_files(tiny_files: dict[str, Path]) -> dict[str, Path]:
    for path in tiny_files.values():
        os.utime(path, (OLD, OLD))
    return tiny_files


def _in_memory(cfg: Config, vocab: Tokenizer | None = None) -> Corpus:
    """Today's path: training's own reading and encoding, with the cache off."""
    return prepare_data(replace(cfg, data=replace(cfg.data, cache_dir=None)), vocab)


def _no_text_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("the text was read although the cache holds it")

    monkeypatch.setattr(prepare_module, "read_text", refuse)


@pytest.mark.parametrize("kind", ["word", "char"])
def test_same_ids_as_prepare_data_then_mapped_without_reading(
    tmp_path: Path, old_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    cfg = tiny_config(tmp_path, old_files, f"data.tokenizer={kind}")
    today = _in_memory(cfg)
    lines: list[str] = []
    cache = tmp_path / "cache"
    for attempt in range(2):
        got = prepare_corpus(cfg.data, cache, echo=lines.append)
        assert got.vocab.itos == today.vocab.itos
        assert torch.equal(got.train.ids.long(), today.train)
        assert got.valid is not None and today.valid is not None
        assert torch.equal(got.valid.ids.long(), today.valid)
        assert got.valid.oov == today.valid_oov
        assert got.train.text_bytes == len(TINY_TEXT.encode())
        assert got.valid.text_bytes == old_files["valid"].stat().st_size
        if attempt == 0:
            assert [line.split(":")[0] for line in lines] == ["data.train", "data.valid"]
            _no_text_read(monkeypatch)
    assert len(lines) == 2  # the second run tokenised nothing


def test_a_resumed_vocabulary_maps_the_built_entry(
    tmp_path: Path, old_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tmp_path, old_files)
    cache = tmp_path / "cache"
    first = prepare_corpus(cfg.data, cache)
    _no_text_read(monkeypatch)
    again = prepare_corpus(cfg.data, cache, from_dict(first.vocab.to_dict()))
    assert torch.equal(again.train.ids, first.train.ids)


def test_another_vocabulary_gets_its_own_ids(tmp_path: Path, old_files: dict[str, Path]) -> None:
    cfg = tiny_config(tmp_path, old_files)
    cache = tmp_path / "cache"
    prepare_corpus(cfg.data, cache)
    small = build("word", TINY_TEXT, Settings(max_size=3))  # most words become <unk>
    got = prepare_corpus(cfg.data, cache, small)
    today = _in_memory(cfg, small)
    assert torch.equal(got.train.ids.long(), today.train)
    assert got.train.oov == small.encode(TINY_TEXT).oov > 0


def test_pieces_cut_at_line_ends_give_the_same_ids(
    tmp_path: Path, old_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tmp_path, old_files)
    monkeypatch.setattr(prepare_module, "_PIECE_CHARS", 10)
    got = prepare_corpus(cfg.data, tmp_path / "cache")
    assert torch.equal(got.train.ids.long(), _in_memory(cfg).train)


def test_a_one_file_corpus_caches_each_split(tmp_path: Path, old_files: dict[str, Path]) -> None:
    whole = tmp_path / "whole.txt"
    whole.write_text("\n".join(f"line {i} of the text" for i in range(300)) + "\n")
    os.utime(whole, (OLD, OLD))
    cfg = tiny_config(tmp_path, old_files, f"data.train={whole}:train", f"data.valid={whole}:valid")
    got = prepare_corpus(cfg.data, tmp_path / "cache")
    today = _in_memory(cfg)
    assert torch.equal(got.train.ids.long(), today.train)
    assert got.valid is not None and torch.equal(got.valid.ids.long(), today.valid)


def test_builtin_corpus_is_encoded_in_memory(tmp_path: Path, old_files: dict[str, Path]) -> None:
    cfg = tiny_config(
        tmp_path, old_files, "data.train=builtin:python-docs", "data.valid=builtin:python-docs",
        "data.tokenizer=char",
    )  # fmt: skip
    got = prepare_corpus(cfg.data, tmp_path / "cache")
    today = _in_memory(cfg)
    assert torch.equal(got.train.ids, today.train)
    assert not (tmp_path / "cache").exists()


def test_a_damaged_entry_is_reported_and_rebuilt(
    tmp_path: Path, old_files: dict[str, Path]
) -> None:
    cfg = tiny_config(tmp_path, old_files)
    cache = tmp_path / "cache"
    # A copy: the mapping shows the damage too (lmtrain itself never rewrites a file in place).
    expected = prepare_corpus(cfg.data, cache).train.ids.clone()
    for ids in cache.glob("*.ids"):
        ids.write_bytes(ids.read_bytes()[:-1])
    lines: list[str] = []
    again = prepare_corpus(cfg.data, cache, echo=lines.append)
    assert len(lines) == 2 and all("truncated" in line for line in lines)
    assert torch.equal(again.train.ids, expected)


def test_a_missing_file_names_the_key(tmp_path: Path, old_files: dict[str, Path]) -> None:
    cfg = tiny_config(tmp_path, old_files, f"data.valid={tmp_path / 'nope.txt'}")
    with pytest.raises(DataError, match=r"data.valid: .*nope.txt: file not found"):
        prepare_corpus(cfg.data, tmp_path / "cache")


def test_a_file_changed_while_read_is_refused(
    tmp_path: Path, old_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tmp_path, old_files)
    real = prepare_module.read_text

    def read_then_edit(spec: str, role: str, errors: str) -> str:
        text = real(spec, role, errors)
        Path(spec).write_text("someone else's text\n")
        return text

    monkeypatch.setattr(prepare_module, "read_text", read_then_edit)
    with pytest.raises(DataError, match="train.txt: the file changed while it was read"):
        prepare_corpus(cfg.data, tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.ids")) == []
