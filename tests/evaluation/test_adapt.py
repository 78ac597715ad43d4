"""Eval-time adaptation: dynamic evaluation and the cache never look ahead, and both help."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import invoke, tiny_config
from lmtrain.checkpoint import load_model
from lmtrain.config import AdaptOptions
from lmtrain.evaluation.adaptation import adaptive_token_nll, cache_log_probs
from lmtrain.evaluation.stream import stream_nll
from lmtrain.training import fit

OPTIONS = {
    "dynamic": AdaptOptions(dynamic_lr=0.5, dynamic_bptt=7),
    "dynamic_rms": AdaptOptions(
        dynamic_lr=0.01, dynamic_bptt=7, dynamic_method="rms", dynamic_decay=0.1
    ),
    "cache": AdaptOptions(cache_size=20, cache_theta=1.0, cache_lambda=0.3),
    "both": AdaptOptions(dynamic_lr=0.5, dynamic_bptt=7, cache_size=20),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_tiny_files

    tmp = tmp_path_factory.mktemp("adapt")
    files = write_tiny_files(tmp)
    fit(tiny_config(tmp, files, "train.epochs=2"), quiet=True, echo=lambda s: None)
    return tmp / "run"


@pytest.mark.parametrize("name", list(OPTIONS))
def test_no_token_is_used_before_it_is_predicted(run: Path, name: str) -> None:
    model, vocab, cfg = load_model(run)
    ids = vocab.encode(Path(cfg.data.test).read_text()).ids[:60]
    base = adaptive_token_nll(model, ids, OPTIONS[name])
    for k in (10, 24, 45):  # inside and at the edge of segments
        changed = ids.clone()
        changed[k] = 1 + (int(ids[k]) % (len(vocab) - 1)) + (int(ids[k]) == len(vocab) - 1)
        assert changed[k] != ids[k]
        other = adaptive_token_nll(model, changed, OPTIONS[name])
        # Target j predicts ids[j + 1]: every score before the changed token is bit-identical ...
        assert torch.equal(base[: k - 1], other[: k - 1]), (name, k)
        # ... and the change is seen once it is the target (so the test can fail).
        assert base[k - 1] != other[k - 1]


def test_plain_options_equal_plain_eval(run: Path) -> None:
    model, vocab, cfg = load_model(run)
    ids = vocab.encode(Path(cfg.data.test).read_text()).ids
    nll, tokens = stream_nll(model, ids)
    plain = adaptive_token_nll(model, ids, AdaptOptions())
    assert plain.numel() == tokens
    assert float(plain.sum()) == pytest.approx(nll, rel=1e-5)
    # Dynamic evaluation scores its first segment before any step: same as plain there.
    dyn = adaptive_token_nll(model, ids, OPTIONS["dynamic"])
    assert torch.allclose(dyn[:7], plain[:7], atol=1e-5)
    assert not torch.allclose(dyn[7:14], plain[7:14], atol=1e-3)
    before = [p.clone() for p in model.parameters()]
    adaptive_token_nll(model, ids, OPTIONS["dynamic"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_cache_probability_by_hand() -> None:
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    key_y = torch.tensor([5, 6, 5])
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # Query 0 at position 2 sees keys at 0 and 1; query 1 at position 3 sees only 1 and 2 (size 2).
    got = cache_log_probs(
        query,
        keys,
        key_y,
        torch.tensor([5, 5]),
        torch.tensor([2, 3]),
        torch.tensor([0, 1, 2]),
        2,
        1.0,
    ).exp()
    e = math.e
    assert got[0].item() == pytest.approx(e / (e + 1))
    assert got[1].item() == pytest.approx(e**2 / (e**2 + e**2))
    # Nothing visible yet: -inf, the caller falls back to the model alone.
    first = cache_log_probs(
        query[:1],
        keys,
        key_y,
        torch.tensor([5]),
        torch.tensor([0]),
        torch.tensor([0, 1, 2]),
        2,
        1.0,
    )
    assert first.item() == -math.inf


def test_eval_cli_prints_plain_and_adapted(run: Path, cli) -> None:
    r = invoke(
        cli,
        "eval",
        run,
        "--json",
        "--dynamic-lr",
        "0.5",
        "--dynamic-bptt",
        "10",
        "--cache-size",
        "50",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["adapted"]["tokens"] == out["tokens"]
    # Repetitive text: both adaptations must beat the plain figure on it.
    assert out["adapted"]["ppl"] < out["ppl"]
    r = invoke(cli, "eval", run, "--cache-size", "50")
    assert r.exit_code == 0, r.output
    assert "adapted, cache (50 states" in r.stdout and "perplexity" in r.stdout
    for args, needle in (
        (("--dynamic-lr", "-1"), "--dynamic-lr must be >= 0"),
        (("--cache-size", "10", "--streams", "4"), "drop --streams"),
        (("--dynamic-lr", "0.1", "--dynamic-method", "adam"), "sgd or rms"),
    ):
        r = invoke(cli, "eval", run, *args)
        assert r.exit_code == 2 and needle in r.stderr, r.output
