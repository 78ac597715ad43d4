"""Pretrained word vectors: the three file formats, coverage, freezing and clear errors."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from conftest import invoke, tiny_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.data.vectors import detect_format, read_vectors
from lmtrain.errors import DataError

VECS = {"the": [0.5, -1.0, 2.0], "cat": [1.25, 0.0, -0.5], "über": [3.0, 2.0, 1.0]}


def write(path: Path, fmt: str, vecs: dict[str, list[float]] = VECS) -> Path:
    if fmt == "word2vec_binary":
        dim = len(next(iter(vecs.values())))
        body = b"".join(
            w.encode() + b" " + struct.pack(f"<{dim}f", *v) + b"\n" for w, v in vecs.items()
        )
        path.write_bytes(f"{len(vecs)} {dim}\n".encode() + body)
        return path
    lines = [f"{w} " + " ".join(str(x) for x in v) for w, v in vecs.items()]
    if fmt == "word2vec_text":
        lines.insert(0, f"{len(vecs)} {len(next(iter(vecs.values())))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["glove", "word2vec_text", "word2vec_binary"])
def test_each_format_is_detected_and_read_by_key(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path / "v", fmt)
    assert detect_format(path) == fmt
    vec = read_vectors(path, {"cat", "über", "absent"})
    assert (vec.format, vec.dim, vec.total) == (fmt, 3, 3)
    assert sorted(vec.vectors) == ["cat", "über"]
    assert vec.vectors["cat"].tolist() == [1.25, 0.0, -0.5]
    assert vec.vectors["über"].tolist() == [3.0, 2.0, 1.0]


def test_binary_without_newlines_and_forced_format(tmp_path: Path) -> None:
    body = b"".join(w.encode() + b" " + struct.pack("<3f", *v) for w, v in VECS.items())
    path = tmp_path / "v.bin"
    path.write_bytes(b"3 3\n" + body)
    assert read_vectors(path, None, "word2vec_binary").vectors["über"].tolist() == [3.0, 2.0, 1.0]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"3 3\nthe 0.1 0.2", "truncated"),
        (b"the 0.1 0.2 0.3\ncat 0.1 0.2\n", ":2: expected a word and 3 numbers"),
        (b"the 0.1 x 0.3\n", "non-number"),
        (b"", "holds no vectors"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.vec"
    path.write_bytes(content)
    with pytest.raises(DataError, match=needle):
        read_vectors(path)


# 1e39 is beyond float32 (infinity once read); a binary file, float32 itself, cannot hold it.
NON_FINITE = [float("nan"), float("inf"), -float("inf"), 1e39]
NON_FINITE_CASES = [(f, v) for f in ("glove", "word2vec_text") for v in NON_FINITE]
NON_FINITE_CASES += [("word2vec_binary", v) for v in NON_FINITE[:3]]


@pytest.mark.parametrize(("fmt", "value"), NON_FINITE_CASES)
def test_a_vector_that_is_not_finite_is_refused(tmp_path: Path, fmt: str, value: float) -> None:
    path = write(tmp_path / "v", fmt, {**VECS, "cat": [1.25, value, -0.5]})
    where = {"glove": f"{path}:2", "word2vec_text": f"{path}:3"}.get(fmt, f"{path}: word 2 of 3")
    with pytest.raises(DataError) as e:
        read_vectors(path, {"the", "cat"})
    assert str(e.value) == (
        f"{where}: the vector of 'cat' holds {value} (number 2), which is not a finite float32; "
        "pretrained vectors must be finite numbers (fix or drop that word)"
    )
    # A word the vocabulary does not hold is never used, so it does not matter.
    assert sorted(read_vectors(path, {"the"}).vectors) == ["the"]


def test_fit_with_a_nan_vector_exits_2_before_training(tmp_path: Path, tiny_files, cli) -> None:
    path = write(tmp_path / "g.txt", "glove", {"mat": [1.0, 2.0, 3.0], "the": [1.0, 2.0, 3.0]})
    path.write_text(path.read_text().replace("the 1.0 2.0", "the nan 2.0"))
    cfg = tiny_config(tmp_path, tiny_files, "model.embedding_dim=3", "train.max_steps=3")
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(cfg.to_yaml())
    r = invoke(cli, "fit", yaml_path, f"model.pretrained_embeddings={path}", "--quiet")
    assert r.exit_code == 2, r.output
    assert f"{path}:2: the vector of 'the' holds nan (number 1)" in r.stderr
    assert "Traceback" not in r.output and not (tmp_path / "run").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="vectors file not found"):
        read_vectors(tmp_path / "nope.txt")


def test_fit_loads_reports_and_freezes(tmp_path: Path, tiny_files, cli) -> None:
    path = write(
        tmp_path / "v.bin",
        "word2vec_binary",
        {"the": [1.0, 2.0, 3.0], "mat": [4.0, 5.0, 6.0], "zebra": [0.0, 0.0, 1.0]},
    )
    cfg = tiny_config(tmp_path, tiny_files, "model.embedding_dim=3", "train.max_steps=3")
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(cfg.to_yaml())
    r = invoke(
        cli,
        "fit",
        yaml_path,
        f"model.pretrained_embeddings={path}",
        "model.freeze_embeddings=true",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    payload = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    itos = payload["vocab"]["itos"]
    words = len(itos) - 1
    assert f"(word2vec_binary, 3-d, 3 words): found 2 of {words} vocabulary words" in r.stderr
    assert "missing" in r.stderr and "'<unk>'" in r.stderr and "frozen" in r.stderr
    emb = payload["model"]["embedding.weight"]
    # Frozen through three optimiser steps: exactly the file's values; <pad> stays zero.
    assert emb[itos.index("the")].tolist() == [1.0, 2.0, 3.0]
    assert emb[itos.index("mat")].tolist() == [4.0, 5.0, 6.0]
    assert emb[0].tolist() == [0.0, 0.0, 0.0]


def test_fine_tuned_vectors_move(tmp_path: Path, tiny_files) -> None:
    from lmtrain.training import fit

    path = write(tmp_path / "g.txt", "glove", {"the": [1.0, 2.0, 3.0]})
    cfg = tiny_config(
        tmp_path,
        tiny_files,
        "model.embedding_dim=3",
        "train.max_steps=3",
        f"model.pretrained_embeddings={path}",
    )
    fit(cfg, quiet=True, echo=lambda s: None)
    payload = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    row = payload["model"]["embedding.weight"][payload["vocab"]["itos"].index("the")]
    assert row.tolist() != [1.0, 2.0, 3.0]
    assert torch.allclose(row, torch.tensor([1.0, 2.0, 3.0]), atol=0.1)


def test_dimension_mismatch_and_no_coverage_exit_2(tmp_path: Path, tiny_files, cli) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "model.embedding_dim=4")
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(cfg.to_yaml())
    r = invoke(
        cli, "fit", yaml_path, f"model.pretrained_embeddings={write(tmp_path / 'v', 'glove')}"
    )
    assert r.exit_code == 2
    assert "the vectors have 3 dimensions but model.embedding_dim is 4" in r.stderr
    assert "Traceback" not in r.output
    other = write(tmp_path / "w", "glove", {"zebra": [1.0, 2.0, 3.0, 4.0]})
    r = invoke(
        cli, "fit", yaml_path, f"model.pretrained_embeddings={other}", f"run.dir={tmp_path / 'r2'}"
    )
    assert r.exit_code == 2
    assert "none of the" in r.stderr and "vocabulary words is in the vectors file" in r.stderr
    r = invoke(
        cli,
        "validate",
        yaml_path,
        "model.freeze_embeddings=true",
        "model.tie_weights=true",
        "model.hidden_size=4",
    )
    assert r.exit_code == 2 and "model.freeze_embeddings" in r.stderr
