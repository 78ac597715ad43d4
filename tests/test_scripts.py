"""The scripts outside the package: the files they name exist, and the exact figures they print
(the synthetic source's true perplexity in bench_transfer) are right."""

from __future__ import annotations

import itertools
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_transfer  # noqa: E402


@pytest.mark.parametrize("runner", ["scripts/gpu_check.sh", "Makefile"])
def test_every_script_and_test_file_a_runner_names_exists(runner: str) -> None:
    text = (ROOT / runner).read_text()
    named = set(re.findall(r"\b((?:scripts|tests)/[\w/]+\.(?:py|sh))", text))
    assert named, f"{runner} names no script"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == [], f"{runner} names files that do not exist: {missing}"


def _brute_force_nll(src: bench_transfer.HiddenMarkovSource, tokens: list[int]) -> float:
    """-log p(tokens[1:] | tokens[0]) by summing over every hidden path."""

    def joint(seq: list[int]) -> float:
        total = 0.0
        for path in itertools.product(range(src.k), repeat=len(seq)):
            p, prev = 1.0, src.k - 1
            for s, tok in zip(path, seq, strict=True):
                p *= src.trans[prev, s] * src.emit[s, tok]
                prev = s
            total += p
        return total

    return -math.log(joint(tokens) / joint(tokens[:1]))


def test_the_synthetic_source_perplexity_is_exact() -> None:
    src = bench_transfer.HiddenMarkovSource(seed=3, states=3, words=5, per_state=3)
    tokens = src.sample(5, seed=4)[:5]
    nll, count = src.nll_after_first(tokens)
    assert count == len(tokens) - 1
    assert nll == pytest.approx(_brute_force_nll(src, tokens), rel=1e-10)


def test_the_synthetic_text_is_what_lmtrain_reads_as_the_sampled_tokens() -> None:
    src = bench_transfer.HiddenMarkovSource()
    tokens = src.sample(2_000, seed=5)
    text = src.text(tokens)
    newline = len(src.vocab) - 1
    # The END state never follows itself: no empty line, and the text ends with a newline.
    assert "\n\n" not in text and text.endswith("\n") and not text.startswith("\n")
    words = [w for line in text.splitlines() for w in [*line.split(), "<eos>"]]
    assert words == ["<eos>" if t == newline else src.vocab[t] for t in tokens]
    assert np.allclose(src.trans.sum(1), 1) and np.allclose(src.emit.sum(1), 1)
