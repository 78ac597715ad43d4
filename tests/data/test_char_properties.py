"""Property tests: character tokenisation round-trips any text and drops only unknowns."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmtrain.data.tokenizers import Settings, build

# Every code point, surrogates and control characters included.
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None))


@settings(max_examples=300, deadline=None)
@given(any_text)
@example("")
@example("a\r\nb\u2028c\x00\ud800\U0010ffff")
def test_char_tokenisation_round_trips_any_text(text):
    vocab = build("char", text, Settings())
    enc = vocab.encode(text)
    assert enc.ids.numel() == len(text) and enc.oov == 0
    assert vocab.decode(enc.ids) == text
    assert vocab.tokenize(text) == list(text)


@settings(max_examples=200, deadline=None)
@given(any_text, any_text)
def test_char_unknowns_are_counted_and_dropped_on_decode(train, text):
    vocab = build("char", train, Settings())
    enc = vocab.encode(text)
    known = [c for c in text if c in vocab.stoi]
    assert enc.oov == len(text) - len(known)
    assert vocab.decode(enc.ids) == "".join(known)
