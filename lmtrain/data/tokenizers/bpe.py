"""The BPE tokeniser (`data.tokenizer: bpe`), through Hugging Face `tokenizers`.

Either trained on the training split (`data.vocab_size`) or read from a `tokenizer.json`
(`data.tokenizer_file`; read from disk, nothing is downloaded). A trained tokeniser is
byte-level: its first pieces are the 256 bytes, so no text is ever out of vocabulary and
decode(encode(text)) == text for any valid Unicode text.

Ids follow the rules every lmtrain vocabulary keeps: `<pad>` = 0, `<unk>` = 1, `<eos>` = 2, then
the tokeniser's own pieces (piece p has id p + 3). Lines are tokenised separately and each
newline of the text is `<eos>`, exactly as at word level, so sentences mode, an empty prompt and
`<eos>`-framed scoring work unchanged; the tokeniser itself never sees a newline, and no text
spells the `<eos>` id any other way. A tokenizer.json whose model has an unknown token (a
non-byte-level one) maps it to `<unk>` and counts it as out of vocabulary.

The tokeniser's JSON travels inside `to_dict()` (the checkpoint, the prepared-data cache), so
sample, score and eval encode and decode with the very tokeniser the model was trained with.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmtrain.data.corpus import expand_vars
from lmtrain.data.prepared import hash_file
from lmtrain.data.tokenizers.base import EOS, LITERAL, PAD, UNK, Encoded, Settings, Tokenizer
from lmtrain.errors import DataError
from lmtrain.files import NotRegularFileError, read_bounded

_SPECIALS = (PAD, UNK, EOS)
OFFSET = len(_SPECIALS)
# The smallest trained vocabulary: the specials and the 256 byte pieces.
MIN_VOCAB_SIZE = OFFSET + 256
# The largest tokenizer.json read: 8 times that of the largest released vocabulary (262,144
# pieces, 33 MB); more is surely not a tokenizer file, and is refused before it fills the memory.
TOKENIZER_MAX_BYTES = 256 * 1024 * 1024
# Lines handed to the tokeniser per call while training: bounds the Python lists held at once.
_TRAIN_BATCH_LINES = 10_000


def _lines(text: str) -> Iterator[list[str]]:
    lines = text.split("\n")
    for start in range(0, len(lines), _TRAIN_BATCH_LINES):
        yield lines[start : start + _TRAIN_BATCH_LINES]


def train_tokenizer(text: str, vocab_size: int) -> str:
    """A byte-level BPE tokeniser of `text` with `vocab_size` entries counting the specials, as
    JSON. Deterministic: the same text and size give the same JSON on every machine."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"data.vocab_size: a byte-level BPE vocabulary needs at least {MIN_VOCAB_SIZE} "
            f"entries (3 specials and 256 bytes), not {vocab_size}"
        )
    tokenizer = HfTokenizer(models.BPE())
    # No prefix space: a leading space would be added to every line and break exact round trips.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - OFFSET,
        min_frequency=0,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_lines(text), trainer, length=text.count("\n") + 1)
    return tokenizer.to_str()


def read_tokenizer_file(path: Path) -> BpeVocab:
    """The vocabulary of a tokenizer.json file; DataError naming the file if it does not load."""
    path = Path(expand_vars(str(path), "data.tokenizer_file"))
    try:
        data, more = read_bounded(path, TOKENIZER_MAX_BYTES)
        text = data.decode("utf-8")
    except NotRegularFileError as e:  # a FIFO would hang, /dev/zero fill the memory
        raise DataError(f"data.tokenizer_file: {path}: {e.advice}") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise DataError(f"data.tokenizer_file: {path}: cannot read it ({reason})") from None
    if more:
        raise DataError(
            f"data.tokenizer_file: {path}: larger than {TOKENIZER_MAX_BYTES >> 20} MB, which no "
            "tokenizer.json is; check the path"
        )
    try:
        return BpeVocab(text)
    except DataError as e:
        raise DataError(f"data.tokenizer_file: {path}: {e}") from None
    except Exception as e:  # the library raises plain Exception for a malformed file
        raise DataError(
            f"data.tokenizer_file: {path} is not a tokenizer.json that Hugging Face tokenizers "
            f"can load ({e})"
        ) from None


class BpeVocab(Tokenizer):
    """A `tokenizers` tokeniser behind lmtrain's vocabulary interface (see the module docstring)."""

    kind = "bpe"
    per_line = True
    dict_keys = ("kind", "itos", "tokenizer")

    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json = tokenizer_json
        self._tok = HfTokenizer.from_str(tokenizer_json)
        pieces = self._tok.get_vocab(with_added_tokens=True)
        size = self._tok.get_vocab_size(with_added_tokens=True)
        if len(pieces) != size or set(pieces.values()) != set(range(size)) or "" in pieces:
            raise DataError("the tokenizer's ids are not 0 .. size-1 without gaps")
        by_id = [""] * size
        for piece, i in pieces.items():
            by_id[i] = piece
        # A piece spelled like a special (a tokenizer.json with its own `<unk>`) is listed as a
        # literal, so that every entry names one id.
        self.itos = [*_SPECIALS, *(p + LITERAL if p in _SPECIALS else p for p in by_id)]
        if len(set(self.itos)) != len(self.itos):
            raise DataError("the tokenizer lists a piece twice once its specials are renamed")
        # Entry -> id for prompts (`tokenize` yields entries); padding is never text.
        self.stoi = {s: i for i, s in enumerate(self.itos) if i != self.pad_id}
        unk = json.loads(tokenizer_json).get("model", {}).get("unk_token")
        self._model_unk = self._tok.token_to_id(unk) if isinstance(unk, str) else None
        encode_batch = getattr(self._tok, "encode_batch_fast", None)  # tokenizers >= 0.20
        self._encode_batch = encode_batch or self._tok.encode_batch

    @property
    def eos_id(self) -> int:
        return 2

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BpeVocab:
        return cls(train_tokenizer(text, vocab_size))

    @classmethod
    def build(cls, text: str, settings: Settings) -> BpeVocab:
        """Read from `tokenizer_file` when given, else trained on `text` with `vocab_size`."""
        if settings.tokenizer_file is not None:
            return read_tokenizer_file(Path(settings.tokenizer_file))
        if settings.vocab_size is None:
            raise DataError("data.tokenizer: bpe needs data.vocab_size or data.tokenizer_file")
        return cls.train(text, settings.vocab_size)

    @classmethod
    def id_settings(cls, settings: Settings) -> dict[str, Any]:
        if settings.tokenizer_file is None:
            return {"vocab_size": settings.vocab_size}
        # The file's contents, not its name, decide the ids.
        path = Path(expand_vars(str(settings.tokenizer_file), "data.tokenizer_file"))
        try:
            return {"tokenizer_sha256": hash_file(path)}
        except OSError as e:
            raise DataError(f"data.tokenizer_file: {path}: cannot read it ({e.strerror})") from None

    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        """Ids of `text`: each line's pieces, and `<eos>` for each newline of the text.

        `add_eos` is accepted for the common interface: newlines are part of the text here (as
        for bytes), so the ids always hold them and decode gives the text back.
        """
        try:
            encodings = self._encode_batch(text.split("\n"), add_special_tokens=False)
        except TypeError:
            raise DataError(
                "the text holds a lone surrogate, which is not Unicode text; the BPE tokeniser "
                "reads only valid Unicode"
            ) from None
        ids = array("q")
        for i, enc in enumerate(encodings):
            if i:
                ids.append(self.eos_id - OFFSET)  # shifted with the pieces below
            ids.extend(enc.ids)
        if not ids:
            return Encoded(torch.zeros(0, dtype=torch.long), 0)
        t = torch.frombuffer(ids, dtype=torch.long) + OFFSET
        oov = 0
        if self._model_unk is not None:
            unknown = t == self._model_unk + OFFSET
            oov = int(unknown.sum())
            t[unknown] = self.unk_id
        return Encoded(t, oov)

    def tokenize(self, text: str) -> list[str]:
        """The entries of the ids of `text` (a newline is the `<eos>` entry)."""
        return [self.itos[i] for i in self.encode(text).ids.tolist()]

    def space_ids(self) -> torch.Tensor:
        # A piece's entry is its byte-level spelling (a space is "Ġ"): ask what text it is.
        return torch.tensor(
            [i != self.eos_id and self.decode([i]).isspace() for i in range(len(self))],
            dtype=torch.bool,
        )

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of ids: `<eos>` is a newline, `<pad>` and `<unk>` are dropped, and byte pieces
        that are not UTF-8 (a sampled model can produce them) become U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        lines: list[list[int]] = [[]]
        for i in ids:
            if i == self.eos_id:
                lines.append([])
            elif OFFSET <= i < len(self.itos):
                lines[-1].append(i - OFFSET)
        return "\n".join(self._tok.decode_batch(lines, skip_special_tokens=False))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "itos": self.itos, "tokenizer": self.tokenizer_json}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BpeVocab:
        tokenizer_json = d.get("tokenizer")
        if d.get("kind") != cls.kind or not isinstance(tokenizer_json, str):
            raise ValueError("not a BPE vocabulary (no tokenizer JSON)")
        try:
            vocab = cls(tokenizer_json)
        except Exception as e:  # the library raises plain Exception for malformed JSON
            raise ValueError(f"its tokenizer JSON does not load ({e})") from None
        if d.get("itos") != vocab.itos:
            raise ValueError("its entries are not those of its tokenizer")
        return vocab
