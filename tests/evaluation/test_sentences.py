"""Sentences mode: splitting, bucketed packed batches, chunked TBPTT, exact scoring, `score`."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from conftest import fit_with_losses, invoke, tiny_config
from lmtrain.config import ModelConfig, config_from_dict
from lmtrain.data import SentenceBatches
from lmtrain.data.sentences import sentence_ids, split_sequences
from lmtrain.data.tokenizers import Settings, Tokenizer, build
from lmtrain.errors import ConfigError
from lmtrain.evaluation.scoring import score_texts
from lmtrain.evaluation.sentences import sequence_nlls
from lmtrain.models import build_model
from lmtrain.training import fit

REL = 1e-5

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "log",
    "was",
    "red",
    "brown",
    "together",
]


def _word_vocab() -> Tokenizer:
    return build("word", " ".join(WORDS) + "\n", Settings())


def _random_sentences(n: int, seed: int, longest: int = 30) -> list[str]:
    rng = random.Random(seed)
    lengths = [rng.randint(1, longest) for _ in range(n)]
    return [" ".join(rng.choice(WORDS) for _ in range(k)) for k in lengths]


def _model(cell: str = "lstm", vocab_size: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(cell=cell, embedding_dim=8, hidden_size=12, num_layers=2)
    return build_model(cfg, vocab_size).eval()


def _alone(model, seqs: list[torch.Tensor]) -> list[float]:
    """Each sequence scored in a batch of its own, in one chunk."""
    return [float(sequence_nlls(model, [s], batch_size=1, bptt=1000)[0]) for s in seqs]


# --- splitting text into sequences ---------------------------------------------------------


def test_lines_become_marker_framed_sequences_and_blank_lines_are_skipped() -> None:
    vocab = _word_vocab()
    ids = vocab.encode("the cat\n\n   \t \nsat\na mat on").ids  # last line has no newline
    seqs = split_sequences(ids, vocab)
    eos = vocab.eos_id
    assert [vocab.decode(s[1:-1]) for s in seqs] == ["the cat", "sat", "a mat on"]
    assert all(int(s[0]) == eos and int(s[-1]) == eos for s in seqs)
    assert [s.numel() for s in seqs] == [4, 3, 5]


def test_char_whitespace_only_lines_are_skipped_but_inner_spaces_kept() -> None:
    text = "ab c\n  \n\t\nd\n"
    vocab = build("char", text, Settings())
    seqs = split_sequences(vocab.encode(text).ids, vocab)
    assert [vocab.decode(s) for s in seqs] == ["\nab c\n", "\nd\n"]


def test_documents_are_separated_by_blank_lines_and_keep_their_line_ends() -> None:
    vocab = _word_vocab()
    ids = vocab.encode("the cat\nsat\n\n \na dog\n\n\nred\n").ids
    seqs = split_sequences(ids, vocab, documents=True)
    assert [vocab.decode(s).split() for s in seqs] == [
        ["the", "cat", "sat"],
        ["a", "dog"],
        ["red"],
    ]
    assert [s.numel() for s in seqs] == [6, 4, 3]  # <eos> the cat <eos> sat <eos>


def test_max_length_cuts_every_sequence_to_that_many_predicted_tokens() -> None:
    vocab = _word_vocab()
    ids = vocab.encode("the cat sat on a mat\nred\n").ids
    seqs = split_sequences(ids, vocab, max_length=3)
    assert [s.numel() - 1 for s in seqs] == [3, 2]
    assert vocab.decode(seqs[0][1:]) == "the cat sat"


def test_score_frames_a_sentence_exactly_as_training_does() -> None:
    for kind in ("word", "char"):
        vocab = build(kind, " ".join(WORDS) + "\n", Settings())
        from_text = split_sequences(vocab.encode("the cat sat\n").ids, vocab)[0]
        ids, oov = sentence_ids(vocab, "the cat sat")
        assert torch.equal(ids, from_text) and oov == 0


# --- batches ---------------------------------------------------------------------------------


def _sequences(n: int = 41, seed: int = 3) -> list[torch.Tensor]:
    vocab = _word_vocab()
    return [sentence_ids(vocab, s)[0] for s in _random_sentences(n, seed)]


def test_every_target_is_predicted_once_per_epoch_with_its_own_row_state() -> None:
    seqs = _sequences()
    b = SentenceBatches(seqs, batch_size=6, bptt=7, seed=5)
    seen: dict[int, list[int]] = {}
    chunks = list(b.batches(epoch=2))
    assert len(chunks) == len(b)
    prev_rows = None
    for batch, rows in zip(chunks, b.sequence_rows(epoch=2), strict=True):
        assert batch.inputs.shape == batch.targets.shape
        assert batch.inputs.size(1) == rows.numel()
        lengths = (
            batch.lengths
            if batch.lengths is not None
            else torch.full_like(rows, batch.inputs.size(0))
        )
        assert int(lengths.min()) >= 1  # no zero-length row ever reaches the packer
        assert batch.num_tokens == int(lengths.sum()) == int((batch.targets != 0).sum())
        if batch.carry is not None:
            # The rows carried over are the same sequences, in the same order.
            assert torch.equal(prev_rows[batch.carry], rows)
        else:
            assert all(int(r) not in seen for r in rows)
        for j, r in enumerate(rows.tolist()):
            seen.setdefault(r, []).extend(batch.targets[: int(lengths[j]), j].tolist())
        prev_rows = rows
    assert sorted(seen) == list(range(len(seqs)))
    for i, s in enumerate(seqs):
        assert seen[i] == s[1:].tolist()
    assert sum(c.num_tokens for c in chunks) == b.tokens_per_epoch


def test_bucketing_is_deterministic_per_seed_and_epoch_and_reshuffled_each_epoch() -> None:
    seqs = _sequences()
    a = SentenceBatches(seqs, 4, 7, seed=9)
    b = SentenceBatches(seqs, 4, 7, seed=9)
    rows = lambda batcher, e: [r.tolist() for r in batcher.sequence_rows(e)]  # noqa: E731
    assert rows(a, 0) == rows(b, 0)
    assert rows(a, 0) != rows(a, 1)
    assert rows(a, 0) != rows(SentenceBatches(seqs, 4, 7, seed=10), 0)
    # Resuming at chunk k yields exactly the chunks k, k+1, ... of the full epoch.
    full = list(a.batches(1))
    tail = list(a.batches(1, start=5))
    assert len(tail) == len(full) - 5
    for x, y in zip(full[5:], tail, strict=True):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        assert (x.carry is None) == (y.carry is None)


def test_bucketing_leaves_little_padding() -> None:
    seqs = _sequences(200)
    b = SentenceBatches(seqs, 8, 1000, seed=1)
    padded = sum(c.inputs.numel() for c in b.batches())
    # 200 lengths in [2, 31] sorted into batches of 8: a batch's rows differ by a token or two.
    assert b.tokens_per_epoch / padded > 0.95


def test_one_token_lines_a_batch_of_one_and_one_very_long_line() -> None:
    vocab = _word_vocab()
    seqs = [sentence_ids(vocab, t)[0] for t in ["red", "a", " ".join(["cat"] * 300), "dog"]]
    b = SentenceBatches(seqs, batch_size=3, bptt=7, seed=0)
    chunks = list(b.batches())
    assert sum(c.num_tokens for c in chunks) == 2 + 2 + 301 + 2
    assert len(b) == len(chunks) == -(-301 // 7) + 1  # the long line's chunks + the batch of one
    assert max(c.inputs.size(1) for c in chunks) == 3


# --- exactness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_a_sentence_scores_the_same_alone_and_in_any_batch(cell: str) -> None:
    model = _model(cell)
    seqs = _sequences(23)
    alone = _alone(model, seqs)
    for batch_size in (2, 5, 23):
        got = sequence_nlls(model, seqs, batch_size=batch_size).tolist()
        assert got == pytest.approx(alone, rel=REL)
    order = list(range(len(seqs)))
    random.Random(0).shuffle(order)
    shuffled = sequence_nlls(model, [seqs[i] for i in order], batch_size=4).tolist()
    assert shuffled == pytest.approx([alone[i] for i in order], rel=REL)


def test_chunked_scoring_equals_unchunked_scoring() -> None:
    model = _model()
    seqs = _sequences(17)
    whole = sequence_nlls(model, seqs, batch_size=5, bptt=1000).tolist()
    chunked = sequence_nlls(model, seqs, batch_size=5, bptt=7).tolist()
    assert chunked == pytest.approx(whole, rel=REL)
    assert max(s.numel() for s in seqs) > 3 * 7  # some sequences really span several chunks


def _batch_loss(model, seqs: list[torch.Tensor]) -> torch.Tensor:
    """Summed NLL of one packed batch (one chunk), as the training step computes it."""
    (batch,) = list(SentenceBatches(seqs, len(seqs), 1000, shuffle=False).batches())
    hidden, _ = model(batch.inputs, model.init_state(batch.inputs.size(1)), batch.lengths)
    return model.output.nll(hidden.reshape(-1, hidden.size(-1)), batch.targets.reshape(-1))


def test_packed_batch_gradient_equals_sum_of_per_sentence_gradients() -> None:
    model = _model().train()  # dropout is 0, so train mode is deterministic
    seqs = _sequences(9)
    assert len({s.numel() for s in seqs}) > 3  # really padded
    model.zero_grad()
    _batch_loss(model, seqs).backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for s in seqs:
        _batch_loss(model, [s]).backward()  # gradients accumulate: their sum
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed[n], p.grad, rtol=REL, atol=1e-6, msg=n)


def test_a_huge_pad_embedding_changes_no_loss() -> None:
    model = _model()
    seqs = _sequences(11)
    before = sequence_nlls(model, seqs, batch_size=4, bptt=7)
    with torch.no_grad():
        batch_before = float(_batch_loss(model, seqs))
    with torch.no_grad():
        model.embedding.weight[0].fill_(1e30)
    after = sequence_nlls(model, seqs, batch_size=4, bptt=7)
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, before, rtol=REL, atol=0)
    with torch.no_grad():
        assert float(_batch_loss(model, seqs)) == pytest.approx(batch_before, rel=REL)


# --- training, eval and score ------------------------------------------------------------


def _sentences_config(tmp_path: Path, tiny_files, *overrides: str):
    return tiny_config(tmp_path, tiny_files, "data.mode=sentences", "train.bptt=5", *overrides)


def test_a_trained_model_scores_a_sentence_above_its_shuffled_words(tmp_path, tiny_files) -> None:
    cfg = _sentences_config(
        tmp_path,
        tiny_files,
        "train.epochs=5",
        "train.lr=0.02",
        "train.batch_size=8",
        "train.bptt=16",
    )
    fit(cfg, quiet=True, echo=lambda _: None)
    from lmtrain.checkpoint import load_model

    model, vocab, _ = load_model(cfg.run.dir)
    good = "the dog sat on the log ."
    words = good.split()
    shuffles = [" ".join(random.Random(i).sample(words, len(words))) for i in range(5)]
    scores = score_texts(model, vocab, [good, *shuffles])
    assert all(scores[0].logprob > s.logprob + 1.0 for s in scores[1:] if s.text != good)


def test_sentences_training_resumes_exactly_mid_batch(tmp_path, tiny_files) -> None:
    # bptt 3 splits every line into several chunks, so step 7 stops inside a batch.
    straight = _sentences_config(tmp_path / "a", tiny_files, "train.bptt=3", "train.max_steps=14")
    full = fit_with_losses(straight, quiet=True, echo=lambda _: None).losses
    first = _sentences_config(
        tmp_path / "b", tiny_files, "train.bptt=3", "train.max_steps=7", "train.eval_every=7"
    )
    fit(first, quiet=True, echo=lambda _: None)
    second = _sentences_config(
        tmp_path / "b", tiny_files, "train.bptt=3", "train.max_steps=14", "train.eval_every=7"
    )
    resumed = fit_with_losses(second, resume="auto", quiet=True, echo=lambda _: None)
    assert sorted(resumed.losses) == list(range(8, 15))
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(full[step], rel=REL)


def test_max_length_truncates_training_sequences(tmp_path, tiny_files) -> None:
    cfg = _sentences_config(tmp_path, tiny_files, "data.max_length=4", "train.epochs=1")
    result = fit(cfg, quiet=True, echo=lambda _: None)
    lines = [line for line in tiny_files["train"].read_text().splitlines() if line.strip()]
    assert result.train_tokens == sum(min(len(line.split()) + 1, 4) for line in lines)


@pytest.mark.parametrize("mode", ["stream", "sentences"])
def test_unigram_baseline_scores_the_tokens_the_evaluation_predicts(
    tmp_path, tiny_files, mode: str
) -> None:
    # Sentences mode predicts every token of the split (the first word after its start marker);
    # stream mode every token after the first. The baseline line must count the same tokens.
    lines: list[str] = []
    cfg = _sentences_config(
        tmp_path, tiny_files, f"data.mode={mode}", "train.max_steps=2", "train.eval_every=2"
    )
    fit(cfg, quiet=True, echo=lines.append)
    # "unigram baseline on validation: ... | 123 tokens", then "step 2 | ... | 123 tokens | ..."
    counts = [
        int(n) for line in lines for n in re.findall(r"\| (\d+) tokens", line.replace(",", ""))
    ]
    baseline, evaluation = counts[0], counts[1]
    valid = tiny_files["valid"].read_text().split()
    lines_in_valid = len([x for x in tiny_files["valid"].read_text().splitlines() if x.strip()])
    expected = len(valid) + lines_in_valid  # words plus one end marker per line
    assert evaluation == (expected if mode == "sentences" else expected - 1)
    assert baseline == evaluation


def test_eval_and_score_cli(tmp_path, tiny_files, cli) -> None:
    cfg = _sentences_config(tmp_path, tiny_files, "train.max_steps=20")
    fit(cfg, quiet=True, echo=lambda _: None)
    run = cfg.run.dir
    figures = []
    for bs in ("1", "3", "64"):
        r = invoke(cli, "eval", run, "--batch-size", bs, "--json")
        assert r.exit_code == 0, r.output
        figures.append(json.loads(r.stdout))
    lines = [line for line in tiny_files["test"].read_text().splitlines() if line.strip()]
    assert figures[0]["tokens"] == sum(len(line.split()) + 1 for line in lines)
    assert figures[1]["nll"] == pytest.approx(figures[0]["nll"], rel=REL)
    assert figures[2]["nll"] == pytest.approx(figures[0]["nll"], rel=REL)
    r = invoke(cli, "eval", run, "--streams", "2")
    assert r.exit_code == 2 and "--streams applies to stream-mode models only" in r.stderr

    sentences = tmp_path / "s.txt"
    sentences.write_text("the cat sat on the mat .\n\n  \na cat\n", encoding="utf-8")
    r = invoke(cli, "score", run, "--file", sentences, "the log", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [o["text"] for o in out] == ["the cat sat on the mat .", "a cat", "the log"]
    assert [o["tokens"] for o in out] == [8, 3, 3]
    for o in out:
        assert o["log2prob"] == pytest.approx(o["logprob"] / math.log(2))
        assert o["ppl"] == pytest.approx(math.exp(-o["logprob"] / o["tokens"]))
    r = invoke(cli, "score", run, "a cat")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[1].split("\t") == [
        f"{out[1]['logprob']:.4f}",
        f"{out[1]['log2prob']:.4f}",
        "3",
        f"{out[1]['ppl']:.2f}",
        "a cat",
    ]


def test_score_works_on_a_stream_mode_checkpoint(tmp_path, tiny_files, cli) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=5")
    fit(cfg, quiet=True, echo=lambda _: None)
    r = invoke(cli, "score", cfg.run.dir, "the cat", "the cat sat", "--json")
    assert r.exit_code == 0, r.output
    assert [o["tokens"] for o in json.loads(r.stdout)] == [3, 4]


def test_score_refuses_empty_input_with_a_clear_message(tmp_path, tiny_files, cli) -> None:
    cfg = _sentences_config(tmp_path, tiny_files, "train.max_steps=2")
    fit(cfg, quiet=True, echo=lambda _: None)
    r = invoke(cli, "score", cfg.run.dir, "the cat", "  ")
    assert r.exit_code == 2 and "sentence argument 2 is empty" in r.stderr
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n", encoding="utf-8")
    r = invoke(cli, "score", cfg.run.dir, "--file", blank)
    assert r.exit_code == 2
    assert "empty or holds only whitespace" in r.stderr
    r = invoke(cli, "score", cfg.run.dir)
    assert r.exit_code == 2 and "nothing to score" in r.stderr
    assert "Traceback" not in r.output


def test_sentence_options_are_checked_with_the_rest_of_the_config() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"documents": True, "max_length": 0}})
    problems = "\n".join(e.value.problems)
    assert "data.documents: only applies to data.mode: sentences" in problems
    assert "data.max_length: must be >= 1 or null" in problems
    cfg = config_from_dict({"data": {"mode": "sentences", "documents": True, "max_length": 50}})
    assert (cfg.data.mode, cfg.data.documents, cfg.data.max_length) == ("sentences", True, 50)
