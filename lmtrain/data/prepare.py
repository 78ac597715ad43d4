"""The splits of a config through the prepared-file cache: map them if prepared, else tokenise.

`load_corpus` gives what training needs (vocabulary, training ids, validation ids and their
out-of-vocabulary count) plus the UTF-8 bytes of each split, for bits per byte. A split found in
the cache is mapped without reading its text; otherwise it is read, tokenised piece by piece into
a new cache entry, and mapped. The ids are uint8 / uint16 / uint32 views of the files: code that
feeds them to a model converts a window at a time (`.long()`).

Where is the cache? `data.cache_dir` (`resolve_cache_dir`): `auto`, the default, is
$LMTRAIN_CACHE_DIR when set, else $XDG_CACHE_HOME/lmtrain, else ~/.cache/lmtrain; a path is that
directory; null turns the cache off, and every split is then read and tokenised in memory.

Which vocabulary? A fresh run builds it from the training split, and the entry remembers it
(settings `"vocab": "built"`). A resumed run, eval or a validation split brings its own; the
training entry is used when it was built with exactly that vocabulary, and otherwise the split
is encoded with it under settings `"vocab": SHA256`. Built-in corpora ship with Python and are
small: they are encoded in memory, as before, and never cached.

Under torchrun, rank 0 runs this first (`DistContext.on_main`) while the others wait; then every
rank runs it and finds every split prepared.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmtrain import files
from lmtrain.data.corpus import (
    expand_vars,
    is_builtin,
    read_text,
    split_file_spec,
    text_utf8_bytes,
)
from lmtrain.data.prepared import (
    CacheMiss,
    CacheWriteError,
    PreparedWriter,
    canonical_sha256,
    load_prepared,
    load_vocab,
    save_vocab,
    source_of,
)
from lmtrain.data.tokenizers import Tokenizer, build, from_dict, tokenizer_class
from lmtrain.errors import DataError

if TYPE_CHECKING:
    from lmtrain.data.config import DataConfig

# Part of every cache key: bump it when a tokenizer's build or encode change the ids a text gets,
# so that entries made by the old rules are never mapped by the new code.
ENCODING_VERSION = 1
# Characters tokenised per piece when writing an entry: bounds the int64 ids held at once.
_PIECE_CHARS = 1 << 22
AUTO = "auto"


def resolve_cache_dir(spec: str | None) -> Path | None:
    """The prepared-data cache directory `data.cache_dir` names; None when the cache is off.

    `auto`: $LMTRAIN_CACHE_DIR when set, else $XDG_CACHE_HOME/lmtrain (when it is an absolute
    path, as the XDG specification requires), else ~/.cache/lmtrain. Anything else is a path,
    with `~` and `${VAR}` expanded.
    """
    if spec is None:
        return None
    if spec != AUTO:
        return Path(expand_vars(spec, "data.cache_dir"))
    if env := os.environ.get("LMTRAIN_CACHE_DIR"):
        return Path(expand_vars(env, "$LMTRAIN_CACHE_DIR"))
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "lmtrain"
    return Path.home() / ".cache" / "lmtrain"


@dataclass(frozen=True)
class Split:
    ids: torch.Tensor
    """(N,) token ids: a uint view of a prepared file, or int64 for a built-in corpus."""
    oov: int
    text_bytes: int
    """UTF-8 bytes of the split's text (bits per byte divides by this)."""


@dataclass(frozen=True)
class PreparedCorpus:
    vocab: Tokenizer
    train: Split
    valid: Split | None


def vocab_sha256(vocab: Tokenizer) -> str:
    return canonical_sha256(vocab.to_dict())


def _settings(d: DataConfig, split: str | None, vocab: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "encoding": ENCODING_VERSION,
        "tokenizer": d.tokenizer,
        "decode_errors": d.decode_errors,
        "split": split,
        "vocab": vocab,
    }
    if vocab == "built":
        settings.update(tokenizer_class(d.tokenizer).id_settings(d))
    return settings


def _pieces(text: str, per_line: bool) -> Iterator[str]:
    """Consecutive pieces of `text` whose encodings, joined, are the encoding of `text`.

    For a tokenizer that encodes `per_line` (words, BPE: each line alone, ending with `<eos>`)
    a piece ends at a line end; a piece of characters or bytes may end anywhere.
    """
    start = 0
    while start < len(text):
        end = start + _PIECE_CHARS
        if end < len(text) and per_line:
            newline = text.find("\n", end)
            end = len(text) if newline < 0 else newline + 1
        yield text[start:end]
        start = end


def _source_path(spec: str, key: str) -> tuple[Path, str | None]:
    path, split = split_file_spec(expand_vars(spec, key))
    # An empty file goes on to be read, which refuses it with the message the in-memory path
    # gives for empty and whitespace-only text alike.
    if (why := files.check_readable(Path(path))) not in (None, files.EMPTY_FILE):
        raise DataError(f"{key}: {path}: {why}")
    return Path(path), split


def prepare_split(
    d: DataConfig,
    spec: str,
    role: str,
    cache_dir: Path | None,
    vocab: Tokenizer | None,
    echo: Callable[[str], None],
    verify: bool = False,
) -> tuple[Tokenizer, Split]:
    """(vocabulary, split) of the text `spec` for `role` (train / valid / test).

    `vocab` None builds it from this text (a fresh run's training split); otherwise the ids
    are in that vocabulary. `cache_dir` None (or a built-in corpus) encodes in memory. `verify`
    hashes the text and the prepared ids in full instead of trusting their stamps.
    """
    if cache_dir is None or is_builtin(spec):
        text = read_text(spec, role, d.decode_errors)
        if vocab is None:
            vocab = build(d.tokenizer, text, d)
        enc = vocab.encode(text)
        return vocab, Split(enc.ids, enc.oov, text_utf8_bytes(text))

    path, split = _source_path(spec, f"data.{role}")
    source = source_of(path, cache_dir, verify)
    settings = _settings(d, split, "built")
    wanted = None if vocab is None else vocab_sha256(vocab)
    try:
        hit = load_prepared(cache_dir, source, settings, wanted, verify)
        if vocab is None:
            vocab = from_dict(load_vocab(cache_dir, hit.vocab_sha256))
        return vocab, Split(hit.ids, hit.oov, hit.text_bytes)
    except CacheMiss as miss:
        reason = miss.reason
    if wanted is not None:
        # The text in a vocabulary it was not built with (a validation split, a resumed run).
        settings = _settings(d, split, wanted)
        try:
            hit = load_prepared(cache_dir, source, settings, verify=verify)
            assert vocab is not None
            return vocab, Split(hit.ids, hit.oov, hit.text_bytes)
        except CacheMiss as miss:
            reason = miss.reason

    if reason.endswith(".json not found"):  # no header: the usual first use, not damage
        reason = "edited since it was last prepared" if source.edited else "not prepared yet"
    echo(f"data.{role}: tokenising {path} into {cache_dir} ({reason})")
    text = read_text(spec, role, d.decode_errors)
    # The same hash before and after reading: the text read is the version the key names.
    if source_of(path, cache_dir, verify=True).sha256 != source.sha256:
        raise DataError(f"{path}: the file changed while it was read; run again once it is written")
    if vocab is None:
        vocab = build(d.tokenizer, text, d)
    sha = save_vocab(cache_dir, vocab.to_dict())
    oov = 0
    with PreparedWriter(cache_dir, source, settings, len(vocab)) as w:
        for piece in _pieces(text, vocab.per_line):
            enc = vocab.encode(piece)
            w.write(enc.ids)
            oov += enc.oov
        written = w.finish(oov=oov, text_bytes=text_utf8_bytes(text), vocab_sha256=sha)
    return vocab, Split(written.ids, written.oov, written.text_bytes)


def load_corpus(
    d: DataConfig,
    vocab: Tokenizer | None = None,
    echo: Callable[[str], None] = lambda _: None,
) -> PreparedCorpus:
    """The training and validation splits of `d`, through the cache `data.cache_dir` names (in
    memory when it is null); the vocabulary is built from the training split when not given.

    A cache the user named must work (its failure is an error); the automatic one (`auto`, the
    default) is a convenience, so when it cannot be written (a read-only home, a full disk) the
    splits are read into memory instead, with one line saying why.
    """
    cache_dir = resolve_cache_dir(d.cache_dir)
    if d.cache_dir != AUTO:
        return prepare_corpus(d, cache_dir, vocab, echo)
    try:
        return prepare_corpus(d, cache_dir, vocab, echo)
    except CacheWriteError as e:
        echo(
            f"warning: {e}. Reading the text into memory instead; set data.cache_dir (or "
            "$LMTRAIN_CACHE_DIR) to a writable directory, or data.cache_dir: null to skip the "
            "cache without this line"
        )
        return prepare_corpus(d, None, vocab, echo)


def prepare_corpus(
    d: DataConfig,
    cache_dir: Path | None,
    vocab: Tokenizer | None = None,
    echo: Callable[[str], None] = lambda _: None,
    verify: bool = False,
) -> PreparedCorpus:
    """The training and validation splits of `d`; the vocabulary is built when not given.

    `cache_dir` None reads and encodes every split in memory, as without a cache. `verify`:
    see prepare_split. The temporaries of a writer that was killed are removed first.
    """
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        # Said once, here: otherwise every entry would read as "damaged" before the write fails.
        raise CacheWriteError(
            f"data.cache_dir {cache_dir} exists and is not a directory; point data.cache_dir at "
            "a directory (it is created if missing)"
        )
    if cache_dir is not None:
        files.sweep_temps(cache_dir)
        files.sweep_temps(cache_dir / "sources")
    vocab, train = prepare_split(d, d.train, "train", cache_dir, vocab, echo, verify)
    valid = None
    if d.valid is not None:
        _, valid = prepare_split(d, d.valid, "valid", cache_dir, vocab, echo, verify)
        if valid.ids.numel() < 2:
            raise DataError(f"{d.valid}: validation text needs at least 2 tokens")
    return PreparedCorpus(vocab, train, valid)


def text_hashes(d: DataConfig) -> dict[str, str]:
    """The sha256 of the training and validation text files of `d`, by key (`data.train`): what
    a run records so that a file edited between its sessions is found. The cache remembers
    them, so with the cache on this costs a stat of each file; built-in corpora have none."""
    cache_dir = resolve_cache_dir(d.cache_dir)
    hashes: dict[str, str] = {}
    for key, spec in (("data.train", d.train), ("data.valid", d.valid)):
        if spec is not None and not is_builtin(spec):
            hashes[key] = source_of(_source_path(spec, key)[0], cache_dir).sha256
    return hashes
