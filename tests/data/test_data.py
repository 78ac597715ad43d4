from __future__ import annotations

import torch

from conftest import shared_data
from lmtrain.data import StreamBatches, read_text
from lmtrain.data.corpus import SPLITS
from lmtrain.data.tokenizers import Settings, build


def test_word_vocab_specials_frequency_and_limits() -> None:
    text = "b a b\nc b a\n"
    v = build("word", text, Settings())
    assert v.itos == ["<pad>", "<unk>", "<eos>", "b", "a", "c"]
    assert build("word", text, Settings(min_freq=2)).itos[3:] == ["b", "a"]
    assert build("word", text, Settings(max_size=1)).itos[3:] == ["b"]
    enc = build("word", text, Settings(min_freq=2)).encode("b c\nzzz\n")
    assert enc.ids.tolist() == [3, 1, 2, 1, 2]  # <eos> ends each line; c and zzz are unknown
    assert enc.oov == 2


def test_char_vocab_round_trips_unicode() -> None:
    text = "héllo wörld — 日本語 🙂\n"
    v = build("char", text, Settings())
    assert v.itos[:2] == ["<pad>", "<unk>"]
    enc = v.encode(text)
    assert v.decode(enc.ids) == text and enc.oov == 0
    other = v.encode("hé?")
    assert other.ids.tolist()[2] == v.unk_id and other.oov == 1


def test_builtin_corpus_splits_are_disjoint_and_cover_the_text() -> None:
    parts = [read_text("builtin:python-docs", split) for split in SPLITS]
    whole = "".join(parts)
    assert len(whole) > 400_000
    assert [round(len(p) / len(whole), 2) for p in parts] == [0.9, 0.05, 0.05]
    assert read_text("builtin:python-docs:test", "train") == parts[2]


def test_stream_batches_layout_matches_the_diagram() -> None:
    ids = torch.arange(18)
    b = StreamBatches(ids, batch_size=3, bptt=2)
    windows = list(b.batches())
    assert len(b) == len(windows) == 3
    assert windows[0].inputs.tolist() == [[0, 6, 12], [1, 7, 13]]
    assert windows[0].targets.tolist() == [[1, 7, 13], [2, 8, 14]]
    assert windows[0].carry is None and windows[1].carry.tolist() == [0, 1, 2]
    assert windows[2].inputs.tolist() == [[4, 10, 16]]
    assert windows[2].targets.tolist() == [[5, 11, 17]]
    assert sum(w.num_tokens for w in windows) == b.tokens_per_epoch == 15
    assert [w.inputs.tolist() for w in b.batches(start=2)] == [windows[2].inputs.tolist()]


def test_wikitext2_tokenises_like_the_reference() -> None:
    train = read_text(str(shared_data("wikitext-2", "train.txt")))
    vocab = build("word", train, Settings())
    # The reference example's counts (shared/data/wikitext-2/README.md) plus our <pad>.
    assert len(vocab) == 33_278 + 1
    assert vocab.encode(train).ids.numel() == 2_088_628
    valid = vocab.encode(read_text(str(shared_data("wikitext-2", "valid.txt"))))
    assert valid.ids.numel() == 217_646 and valid.oov == 0
