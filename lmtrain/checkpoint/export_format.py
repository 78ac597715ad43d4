"""The export format: a folder that loads without unpickling anything.

    EXPORT/
      model.safetensors   the weights only (safetensors: a JSON header and raw tensor bytes)
      config.json         the run's full resolved config (JSON is also valid YAML)
      vocab.json          the vocabulary: tokeniser kind and the token of each id
      README.md           a model card: data, metrics, the command that trained it
      .lmtrain-export.json  the files lmtrain export wrote here (it replaces only those)

This module writes and reads the files; lmtrain/export.py makes an export from a run. Reading
(`load_export`, and `lmtrain eval/sample/score EXPORT_DIR`) parses JSON and safetensors only, so
an export from anyone can be loaded without trusting it to run code. With `model.tie_weights` the
decoder and the embedding share one matrix; safetensors stores a tensor once, so the file holds it
under one name and loading ties the other name to it again (the model built from config.json
already shares the matrix, and loading fills it once).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmtrain import files
from lmtrain.config import Config, config_from_dict
from lmtrain.data.vocab import Vocab
from lmtrain.errors import CheckpointError
from lmtrain.models import LanguageModel, build_model

WEIGHTS, CONFIG, VOCAB, CARD = "model.safetensors", "config.json", "vocab.json", "README.md"
FILES = (WEIGHTS, CONFIG, VOCAB, CARD)
MANIFEST = ".lmtrain-export.json"
"""What lmtrain export wrote in the folder: the only files a later export may replace."""
FORMAT = "lmtrain-export"
VERSION = 1


class ExportError(CheckpointError):
    """An export that cannot be written, or a folder that is not a readable export."""


def is_export_dir(path: str | Path) -> bool:
    """True for a folder holding an export's weights and config (what load_export reads)."""
    p = Path(path)
    return p.is_dir() and (p / WEIGHTS).is_file() and (p / CONFIG).is_file()


def write_export_files(
    folder: Path, model: LanguageModel, vocab: Vocab, cfg: Config, card: str, lmtrain_version: str
) -> None:
    """Write the four files of an export into `folder`, each through files.atomic_write."""
    from safetensors.torch import save

    files.write_json(folder / CONFIG, cfg.to_dict())
    # A shared tensor (tied weights) is stored once, under its first name; its other names are
    # recorded in the metadata, as safetensors' save_model does, and load_export ties them again.
    meta = {"format": FORMAT, "version": str(VERSION), "lmtrain_version": lmtrain_version}
    state, first = {}, {}
    for name, tensor in model.state_dict().items():
        kept = first.setdefault((tensor.data_ptr(), tensor.numel()), name)
        if kept == name or tensor.numel() == 0:
            state[name] = tensor.contiguous()
        else:
            meta[name] = kept
    files.write_bytes(folder / WEIGHTS, save(state, metadata=meta))
    files.write_json(folder / VOCAB, vocab.to_dict(), indent=None, ensure_ascii=False)
    files.write_text(folder / CARD, card)


def written_files(folder: Path) -> list[str] | None:
    """The names `folder`'s export manifest says lmtrain export wrote; None without a readable
    manifest. `complete` in it is False while an export is being written."""
    try:
        raw = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = raw.get("files") if isinstance(raw, dict) and raw.get("format") == FORMAT else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def write_manifest(folder: Path, complete: bool) -> None:
    """The export manifest: the files lmtrain export writes in `folder`, and whether all are."""
    files.write_json(
        folder / MANIFEST,
        {"format": FORMAT, "version": VERSION, "files": [*FILES, MANIFEST], "complete": complete},
    )


def load_export(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[LanguageModel, Vocab, Config]:
    """Model (in eval mode), vocabulary and config of an export folder; JSON and safetensors
    only, never a pickle."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model as load_weights

    path = Path(path)
    for name in (WEIGHTS, CONFIG, VOCAB):
        if not (path / name).is_file():
            raise ExportError(f"{path}: not an lmtrain export ({name} is missing)")
    if written_files(path) is not None and _read_json(path / MANIFEST).get("complete") is False:
        raise ExportError(
            f"{path}: an export that was interrupted while it was written (its files may come "
            "from two exports); run `lmtrain export` again to finish it"
        )
    cfg = config_from_dict(_read_json(path / CONFIG), source=str(path / CONFIG))
    raw_vocab = _read_json(path / VOCAB)
    try:
        vocab = Vocab.from_dict(raw_vocab)
    except (KeyError, TypeError, ValueError, AssertionError, IndexError):
        raise ExportError(f"{path / VOCAB}: not a vocabulary (expected kind and itos)") from None
    weights = path / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ExportError(f"{weights}: not written by lmtrain export (no format mark)")
        model = build_model(cfg.model, len(vocab))
        load_weights(model, str(weights), strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        detail = " ".join(str(e).split())[:500]
        raise ExportError(
            f"{path}: the weights do not load ({detail}); the export is damaged or its files "
            "come from different models"
        ) from None
    return model.to(device).eval(), vocab, cfg


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(value, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
