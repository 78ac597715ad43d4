"""files.repair_tail reads only the last line of a JSON-lines file: a resume mends the end of a
long run's metrics.jsonl without reading the whole file, and a last line longer than one block
of the backward read is still found whole."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtrain import files


class _Counted(io.BufferedRandom):
    """A file that counts the bytes read from it."""

    read_total = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        _Counted.read_total += len(data)
        return data


def _counting_open(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    f = open(path, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it
    return _Counted(f.detach()) if mode == "r+b" else f


@pytest.mark.parametrize(
    ("tail", "kept", "dropped"),
    [(b'{"i": 1', b"", 7), (b'{"i": 1}', b'{"i": 1}\n', 0), (b'{"i": 1}\n', b'{"i": 1}\n', 0)],
)
def test_only_the_last_line_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: bytes, kept: bytes, dropped: int
) -> None:
    path = tmp_path / "metrics.jsonl"
    body = b"".join(b'{"step": %d, "loss": 1.5}\n' % i for i in range(200_000))  # 5 MB
    path.write_bytes(body + tail)
    _Counted.read_total = 0
    monkeypatch.setattr(files, "open", _counting_open, raising=False)
    assert files.repair_tail(path) == dropped
    monkeypatch.undo()
    assert path.read_bytes() == body + kept
    assert 0 < _Counted.read_total <= 2 * files._TAIL_BLOCK + len(tail)


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.text(max_size=30), max_size=6),
    cut=st.integers(0, 400),
    block=st.integers(1, 9),
)
def test_a_block_smaller_than_a_line_finds_the_same_last_line(
    lines: list[str], cut: int, block: int
) -> None:
    import tempfile

    records = [json.dumps({"s": s}) for s in lines]
    text = "".join(r + "\n" for r in records).encode()[:cut]
    whole = [r for i, r in enumerate(records) if len("".join(records[: i + 1])) + i <= len(text)]
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setattr(files, "_TAIL_BLOCK", block)
        path = Path(d) / "m.jsonl"
        path.write_bytes(text)
        files.repair_tail(path)
        assert path.read_bytes() == "".join(r + "\n" for r in whole).encode()
