"""Bits per byte and the UTF-8 byte counts it divides by."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmtrain.evaluation.bpb as bpb
from lmtrain.data.tokenizers import ByteVocab
from lmtrain.evaluation.bpb import bits_per_byte, file_utf8_bytes, text_utf8_bytes


def test_bits_per_byte_is_nats_over_bytes_over_ln2() -> None:
    assert bits_per_byte(100 * math.log(2), 100) == pytest.approx(1.0)
    # A byte model that is uniform over 256 bytes spends exactly 8 bits on each.
    text = "héllo wörld\n" * 10
    n = ByteVocab().encode(text).ids.numel()
    assert bits_per_byte(n * math.log(256), text_utf8_bytes(text)) == pytest.approx(8.0)


def test_bits_per_byte_refuses_an_empty_text() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        bits_per_byte(1.0, 0)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF)))
def test_text_bytes_are_its_utf8_length(text: str) -> None:
    assert text_utf8_bytes(text) == len(text.encode("utf-8", "surrogatepass"))


def test_file_bytes_with_chunks_cutting_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.txt"
    path.write_text("日本語 🙂 café\n" * 30, encoding="utf-8")
    monkeypatch.setattr(bpb, "_CHUNK", 5)  # every multi-byte character crosses some cut
    assert file_utf8_bytes(path) == path.stat().st_size


def test_replaced_bytes_count_as_the_replacement_character(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"a\xffb")
    assert file_utf8_bytes(path, "replace") == 5  # a, U+FFFD (3 bytes), b
    assert text_utf8_bytes(path.read_bytes().decode("utf-8", "replace")) == 5
    with pytest.raises(UnicodeDecodeError):
        file_utf8_bytes(path)


def test_a_character_cut_off_at_the_end_of_the_file_counts(tmp_path: Path) -> None:
    path = tmp_path / "cut.txt"
    path.write_bytes("ab日".encode()[:-1])  # the last character lost its final byte
    assert file_utf8_bytes(path, "replace") == 5  # a, b, U+FFFD
    with pytest.raises(UnicodeDecodeError):
        file_utf8_bytes(path)


def test_file_bytes_refuse_a_pipe(tmp_path: Path) -> None:
    """The test text is reopened by path for its byte count: a FIFO there is refused at once."""
    import os

    from lmtrain.files import NotRegularFileError

    fifo = tmp_path / "test.txt"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError):
        file_utf8_bytes(fifo)
