"""Bad input data: training files that are missing, empty, binary or not UTF-8 fail with a
clear message; decode_errors=replace reads invalid UTF-8; one 50 MB line encodes in bounded
memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lmtrain
from conftest import invoke, tiny_config, write_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.training import fit

REPO = Path(lmtrain.__file__).resolve().parents[1]


def _ckpts(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing", None, "file not found"),
        ("directory", "DIR", "is a directory"),
        ("empty", b"", "the file is empty or holds only whitespace"),
        ("blank lines", b"\n\n  \n\t\n", "the file is empty or holds only whitespace"),
        ("invalid utf-8", b"hello world\nbad \xff\xfe here\n", "not valid UTF-8 at byte offset 16"),
        ("binary", bytes(range(256)) * 8, "looks like a binary file"),
    ],
)
def test_bad_training_file(name, content, message, tmp_path, tiny_files, cli):
    bad = tmp_path / "bad.txt"
    if content == "DIR":
        bad.mkdir()
    elif content is not None:
        bad.write_bytes(content)
    config = write_config(tmp_path, tiny_files, f"data.train={bad}")
    result = invoke(cli, "fit", config)
    assert result.exit_code == 2, result.output
    assert f"{bad}: {message}" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_decode_errors_replace_reads_invalid_utf8(tmp_path, tiny_files):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(tiny_files["train"].read_bytes() + "caf\xe9 au lait\n".encode("latin-1"))
    cfg = tiny_config(
        tmp_path,
        tiny_files,
        f"data.train={bad}",
        "data.decode_errors=replace",
        "data.tokenizer=char",
        "train.max_steps=1",
    )
    fit(cfg, quiet=True)
    vocab = load_checkpoint(_ckpts(tmp_path) / "last.pt")["vocab"]["itos"]
    assert "\ufffd" in vocab


@pytest.mark.slow
def test_one_50mb_line_encodes_in_bounded_memory(tmp_path):
    """One 50 MB line (no newline) through read, vocabulary and both encoders, in a fresh process.

    Peak memory above the imports stays within a small multiple of the text: the ids themselves
    (8 bytes per token) plus pieces of about 1 M characters, not a list of every word.
    """
    big = tmp_path / "one-line.txt"
    words = [f"w{i % 5000}" for i in range(10_000)]
    chunk = (" ".join(words) + " ").encode()
    with big.open("wb") as f:
        for _ in range(50_000_000 // len(chunk) + 1):
            f.write(chunk)
    size = big.stat().st_size
    assert size >= 50_000_000 and b"\n" not in big.read_bytes()[:1000]
    script = textwrap.dedent(
        f"""
        import resource, sys
        from lmtrain.data import read_text
        from lmtrain.data.tokenizers import Settings, build
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        text = read_text({str(big)!r})
        w = build("word", text, Settings())
        n_words = w.encode(text).ids.numel()
        c = build("char", text, Settings())
        n_chars = c.encode(text).ids.numel()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(w), n_words, len(c), n_chars, (peak - base) * 1024)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    n_word_vocab, n_words, n_char_vocab, n_chars, grown = map(int, out.stdout.split())
    assert n_word_vocab == 3 + 5000 and n_words == size // len(chunk) * 10_000 + 1
    assert n_char_vocab == 2 + 12 and n_chars == size  # w, 0-9, space
    # text (1 byte/char) + char ids (8 bytes/char) + ~1 M character pieces: measured 546 MB for
    # 50 MB; encoding the whole text at once (UTF-32 copies, a list of every word) took 1640 MB.
    assert grown < 16 * size, f"peak grew by {grown / 1e6:.0f} MB for a {size / 1e6:.0f} MB line"
