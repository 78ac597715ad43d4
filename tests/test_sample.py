"""Sampling from weights that hold NaN or infinity: a clear error (exit 2), never a traceback
from inside torch.multinomial."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_TEXT
from lmtrain.config import ModelConfig, SampleOptions
from lmtrain.data.tokenizers import Settings, Tokenizer, build
from lmtrain.errors import LmtrainError
from lmtrain.models import build_model
from lmtrain.sample import generate


def _model(vocab: Tokenizer, value: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="lstm", embedding_dim=8, hidden_size=8), len(vocab))
    with torch.no_grad():
        model.output.decoder.weight[3].fill_(value)  # one row: only some probabilities break
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    "opts", [SampleOptions(max_tokens=20, seed=0), SampleOptions(max_tokens=20, greedy=True)]
)
def test_non_finite_weights_are_refused_with_a_clear_error(value, opts):
    vocab = build("word", TINY_TEXT, Settings())
    with pytest.raises(LmtrainError) as refused:
        generate(_model(vocab, value), vocab, "the cat", opts)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert "next-token probabilities are NaN or infinite (at generated token 1)" in message
    assert "damaged or training diverged" in message and "earlier checkpoint" in message


def test_finite_weights_still_sample_the_same_text():
    """The check lets healthy weights through unchanged, a -inf logit (padding) included."""
    vocab = build("word", TINY_TEXT, Settings())
    model = _model(vocab, 0.5)
    first = generate(model, vocab, "the cat", SampleOptions(max_tokens=30, seed=3)).texts
    again = generate(model, vocab, "the cat", SampleOptions(max_tokens=30, seed=3)).texts
    assert first == again and first[0].startswith("the cat ") and len(first[0]) > 40


def test_a_stop_request_ends_the_text_where_it_is():
    vocab = build("word", TINY_TEXT, Settings())
    model = _model(vocab, 0.5)
    seen: list[int] = []
    full = generate(model, vocab, "the", SampleOptions(max_tokens=40, seed=1)).texts[0]
    cut = generate(
        model, vocab, "the", SampleOptions(max_tokens=40, seed=1),
        stop=lambda: len(seen) >= 7, progress=seen.append,
    ).texts[0]  # fmt: skip
    assert seen == list(range(1, 8))
    assert full.startswith(cut) and len(cut) < len(full)  # the same first 7 tokens, no more


@pytest.mark.parametrize("training", [True, False])
def test_the_model_is_left_in_the_mode_it_was_in(training):
    """fit samples between training steps: the model goes back to training, dropout and all."""
    vocab = build("word", TINY_TEXT, Settings())
    model = _model(vocab, 0.5).train(training)
    generate(model, vocab, "the", SampleOptions(max_tokens=5, seed=0))
    assert model.training is training and all(m.training is training for m in model.modules())
