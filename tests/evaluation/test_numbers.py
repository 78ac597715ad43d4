"""Every printed number is what it says: the cache mixture is a distribution, written special
tokens are ordinary tokens the loss counts, the OOV rate is taken over the text's tokens, and
recurrent dropout does what its help says (one mask per sequence)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.checkpoint import load_model
from lmtrain.config import AdaptOptions
from lmtrain.data.tokenizers import Settings, build, from_dict
from lmtrain.evaluation.adaptation import adaptive_token_nll
from lmtrain.models import build_model
from lmtrain.models.cells import UNDRAWN, RecurrentLayer
from lmtrain.training import fit

# --- the cache pointer's mixture sums to 1 -------------------------------------------------


def _target_probs(model, ids: torch.Tensor, k: int, opts: AdaptOptions) -> list[float]:
    """p(w) at position k for every w except padding, through the evaluation's own code path:
    the target ids[k + 1] is replaced by each w in turn (position k never sees its target)."""
    probs = []
    for w in range(1, model.vocab_size):
        changed = ids.clone()
        changed[k + 1] = w
        probs.append(math.exp(-float(adaptive_token_nll(model, changed, opts)[k])))
    return probs


def test_cache_mixture_sums_to_one_over_the_vocabulary(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, write_tiny_files(tmp_path))
    torch.manual_seed(0)
    model = build_model(cfg.model, 12)
    # Only tokens 1..5 occur, so tokens 6..11 are never in the cache: the case that used to get
    # the full p_model instead of (1 - lambda) p_model.
    ids = torch.randint(1, 6, (40,), generator=torch.Generator().manual_seed(1))
    lam = 0.3
    cache = AdaptOptions(cache_size=10, cache_theta=1.0, cache_lambda=lam)
    for k in (0, 1, 7, 20, 38):  # 0: empty cache; 1: one entry; later: a full window
        plain = _target_probs(model, ids, k, AdaptOptions())
        mixed = _target_probs(model, ids, k, cache)
        p_pad = 1 - sum(plain)  # the model's mass on <pad>, a token the cache never holds
        assert 0 < p_pad < 1
        pad_share = p_pad if k == 0 else (1 - lam) * p_pad
        assert sum(mixed) + pad_share == pytest.approx(1.0, abs=1e-9), k
        if k == 0:  # nothing cached yet: the model alone predicts
            assert mixed == pytest.approx(plain, rel=1e-12)
        else:  # a token the cache has not seen gets exactly (1 - lambda) p_model
            assert mixed[9] == pytest.approx((1 - lam) * plain[9], rel=1e-9)


@pytest.mark.parametrize("lam", [1.0, float("nan"), -0.1])
def test_cache_lambda_must_leave_the_model_some_weight(lam: float) -> None:
    # lambda = 1 would give every token the cache has not seen probability 0.
    assert AdaptOptions(cache_size=5, cache_lambda=lam).problems() == [
        f"--cache-lambda must be in [0, 1), got {lam}"
    ]


# --- written special tokens are ordinary tokens --------------------------------------------


def test_written_pad_and_eos_are_words_and_unk_is_the_unknown_word() -> None:
    text = "a <pad> b <eos> c <unk>\n<pad> d\n"
    vocab = build("word", text, Settings())
    enc = vocab.encode(text)
    ids = enc.ids.tolist()
    assert vocab.pad_id not in ids  # nothing in a text can be padding
    assert ids.count(vocab.eos_id) == 2  # only the two line ends end a line
    assert ids[1] == ids[7] == vocab.stoi["<pad>"] != vocab.pad_id
    assert ids[3] == vocab.stoi["<eos>"] != vocab.eos_id
    assert ids[5] == vocab.unk_id and enc.oov == 0  # WikiText's <unk>: the unknown word
    assert vocab.decode(enc.ids) == text
    # The entries stay distinct, so the vocabulary round-trips through a checkpoint.
    assert len(set(vocab.itos)) == len(vocab.itos) == 3 + 6
    again = from_dict(vocab.to_dict())
    assert again.encode(text).ids.tolist() == ids and again.stoi == vocab.stoi


def test_characters_of_pad_are_just_characters() -> None:
    vocab = build("char", "<pad> and <unk> and <eos>\n", Settings())
    enc = vocab.encode("<pad><unk>")
    assert enc.ids.numel() == 10 and enc.oov == 0
    assert vocab.pad_id not in enc.ids.tolist() and vocab.unk_id not in enc.ids.tolist()
    assert vocab.decode(enc.ids) == "<pad><unk>"


@pytest.fixture(scope="module")
def pad_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pad")
    files = write_tiny_files(tmp)
    text = "the <pad> cat sat on the <eos> mat .\n" * 10
    files["train"].write_text(files["train"].read_text() + text, encoding="utf-8")
    files["test"].write_text("the <pad> cat sat\n<pad> <pad>\n", encoding="utf-8")
    fit(tiny_config(tmp, files, "train.max_steps=10"), quiet=True, echo=lambda s: None)
    return tmp / "run"


def test_loss_counts_every_written_special_token(pad_run: Path, cli) -> None:
    model, vocab, cfg = load_model(pad_run)
    ids = vocab.encode(Path(cfg.data.test).read_text()).ids
    nll = adaptive_token_nll(model, ids, AdaptOptions())
    # 8 tokens (6 words + 2 line ends), 7 predicted, and every one of them costs something:
    # a target the loss ignored would have NLL exactly 0 while still being counted.
    assert nll.numel() == 7 and bool((nll > 0).all())
    r = invoke(cli, "eval", pad_run, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["tokens"] == 7 and out["nll"] == pytest.approx(float(nll.sum()), rel=1e-6)
    assert out["oov_rate"] == 0.0
    r = invoke(cli, "score", pad_run, "the <pad> cat", "--json")
    assert r.exit_code == 0, r.output
    [s] = json.loads(r.stdout)
    assert s["tokens"] == 4 and s["oov"] == 0


# --- the OOV rate is OOV tokens over the tokens of the text ------------------------------

# 5 lines (two blank), 9 words + 5 line ends = 14 tokens, of which 3 are unknown. Sentences mode
# predicts 12 of them, one stream 13 and 3 streams 9; the rate is over all 14 in every case.
OOV_TEXT = "the zebra sat\n\n\nthe qux on the mat\nwombat\n"
OOV_RATE = 3 / 14


def _train_on_oov_text(tmp: Path, mode: str) -> Path:
    files = write_tiny_files(tmp)
    files["test"].write_text(OOV_TEXT, encoding="utf-8")
    fit(
        tiny_config(tmp, files, "train.max_steps=4", f"data.mode={mode}"),
        quiet=True,
        echo=lambda s: None,
    )
    return tmp / "run"


@pytest.fixture(scope="module", params=["stream", "sentences"])
def mode_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_on_oov_text(tmp_path_factory.mktemp(request.param), request.param)


def test_oov_rate_is_unknown_tokens_over_the_texts_tokens(mode_run: Path, cli) -> None:
    r = invoke(cli, "eval", mode_run, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["oov_rate"] == pytest.approx(OOV_RATE, rel=1e-12)
    r = invoke(cli, "eval", mode_run)
    assert "OOV rate 21.4286% (3 of 14 tokens)" in r.stdout


def test_oov_rate_does_not_depend_on_streams(tmp_path: Path, cli) -> None:
    run = _train_on_oov_text(tmp_path, "stream")
    r = invoke(cli, "eval", run, "--json", "--streams", "3")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["tokens"] == 9  # 3 streams of 4 tokens predict 3 each; 2 tokens are cut off
    assert out["oov_rate"] == pytest.approx(OOV_RATE, rel=1e-12)


# --- recurrent dropout: one mask per sequence ----------------------------------------------


def test_recurrent_dropout_keeps_a_sequences_mask_and_a_new_sequence_draws_its_own(
    tmp_path: Path,
) -> None:
    """What the help states: a sequence draws its mask at its first training window and keeps
    it in the state it carries into the next chunk; a new sequence (a fresh state, its mask
    undrawn) draws another."""
    cfg = tiny_config(
        tmp_path, write_tiny_files(tmp_path), "model.cell=rnn_tanh", "model.recurrent_dropout=0.5"
    )
    torch.manual_seed(0)
    layer = RecurrentLayer(cfg.model, 8).train()
    fresh = (torch.zeros(3, 16), torch.full((3, 16), UNDRAWN))  # h and the mask, undrawn
    out0, state = layer(torch.randn(6, 3, 8), fresh, None)  # (T, B, H)
    out1, _ = layer(torch.randn(6, 3, 8), state, None)  # the next chunk of the same rows
    out2, _ = layer(torch.randn(6, 3, 8), fresh, None)  # new sequences
    # Without leak h_t is the (dropped) update itself: a dropped unit is exactly 0 at every step,
    # whatever the carried state.
    masks = []
    for out in (out0, out1, out2):
        dropped = out == 0
        assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # one mask per window
        masks.append(dropped[0])
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])
