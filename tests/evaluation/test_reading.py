"""How every evaluation reads a model: one eval-mode helper and one logit-window rule."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmtrain.config import AdaptOptions, ModelConfig
from lmtrain.evaluation import adaptation, sentences, stream
from lmtrain.evaluation.adaptation import adaptive_token_nll
from lmtrain.evaluation.reading import evaluating, logit_window
from lmtrain.evaluation.stream import EvaluationInterrupted, stream_nll
from lmtrain.models import build_model


def _model(vocab_size: int = 12) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(cell="lstm", embedding_dim=8, hidden_size=8, num_layers=1, dropout=0.5)
    return build_model(cfg, vocab_size)


def _ids(n: int = 50, vocab_size: int = 12) -> torch.Tensor:
    return torch.randint(2, vocab_size, (n,), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("vocab_size", "rows", "window"),
    # The formula stream.py and sentences.py each wrote out before:
    # max(16, min(4096, (1 << 23) // (vocab_size * rows))).
    [(50, 1, 4096), (10_000, 1, 838), (10_000, 32, 26), (50_000, 64, 16), (260, 128, 252)],
)
def test_the_logit_window_is_the_one_both_evaluations_used(
    vocab_size: int, rows: int, window: int
) -> None:
    assert logit_window(vocab_size, rows) == window


def test_stream_and_sentences_take_their_window_from_the_one_rule(monkeypatch) -> None:
    seen: dict[str, int] = {}
    for module, name in ((stream, "StreamBatches"), (sentences, "SentenceBatches")):
        real = getattr(module, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            seen[_name] = args[2]  # (data, rows, window, ...)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    model, ids = _model(), _ids()
    stream_nll(model, ids, streams=3)
    sentences.sequence_nlls(model, [ids[:9], ids[9:20]], batch_size=5)
    assert seen == {"StreamBatches": logit_window(12, 3), "SentenceBatches": logit_window(12, 5)}


def test_evaluating_sets_eval_mode_and_no_grad_and_restores_the_mode() -> None:
    model = _model()
    for training in (True, False):
        model.train(training)
        with evaluating(model):
            assert not model.training and not torch.is_grad_enabled()
        assert model.training is training and torch.is_grad_enabled()
    with evaluating(model, grad=True):
        assert not model.training and torch.is_grad_enabled()
    model.train()
    with pytest.raises(RuntimeError, match="boom"), evaluating(model):
        raise RuntimeError("boom")
    assert model.training


def _watch(model: torch.nn.Module, seen: list[tuple[bool, bool]]) -> torch.nn.Module:
    """Record (training, grad enabled) at every forward of `model`."""
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    return model


@pytest.mark.parametrize("how", ["stream", "sentences", "plain adaptive", "dynamic"])
def test_every_evaluation_reads_in_eval_mode_and_restores_training(how: str, monkeypatch) -> None:
    seen: list[tuple[bool, bool]] = []
    model, ids = _watch(_model(), seen), _ids()
    model.train()
    if how == "stream":
        stream_nll(model, ids)
    elif how == "sentences":
        sentences.sequence_nlls(model, [ids[:9], ids[9:20]])
    elif how == "plain adaptive":
        adaptive_token_nll(model, ids, AdaptOptions())
    else:  # dynamic evaluation reads a copy of the model: watch that one
        monkeypatch.setattr(adaptation, "build_model", lambda *a: _watch(build_model(*a), seen))
        adaptive_token_nll(model, ids, AdaptOptions(dynamic_lr=0.1, dynamic_bptt=7))
    assert seen and all(not training for training, _ in seen)
    assert all(grad == (how == "dynamic") for _, grad in seen)
    assert model.training


def test_an_evaluation_stopped_or_failing_midway_restores_training(monkeypatch) -> None:
    model, ids = _model(), _ids()
    model.train()
    with pytest.raises(EvaluationInterrupted):
        stream_nll(model, ids, stop=lambda: True)
    assert model.training
    with pytest.raises(EvaluationInterrupted):
        sentences.sequence_nlls(model, [ids[:9]], stop=lambda: True)
    assert model.training

    def fail(*args: Any) -> torch.Tensor:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model.output, "token_nll", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        adaptive_token_nll(model, ids, AdaptOptions(cache_size=5))
    assert model.training  # adaptation used to leave the model in eval mode here
