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

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lmtrain import files
from lmtrain.checkpoint.validate import non_finite
from lmtrain.config import Config, config_from_dict
from lmtrain.data.tokenizers import Tokenizer, from_dict
from lmtrain.errors import CheckpointError
from lmtrain.models import LanguageModel, build_model
from lmtrain.records import RecordError, build_record, joined

WEIGHTS, CONFIG, VOCAB, CARD = "model.safetensors", "config.json", "vocab.json", "README.md"
FILES = (WEIGHTS, CONFIG, VOCAB, CARD)
MANIFEST = ".lmtrain-export.json"
"""What lmtrain export wrote in the folder: the only files a later export may replace."""
FORMAT = "lmtrain-export"
VERSION = 1
STEP_KEY = "step"
"""The weights' metadata key that holds the optimiser step (a string, as safetensors wants)."""
_HEADER_BYTES = 1 << 20
"""Bytes read for the weights' header metadata (a tensor's name is one entry: a MiB is ample)."""
_JSON_MAX_BYTES = 256 << 20
"""config.json and the manifest are small; vocab.json of the largest vocabulary far below."""


class ExportError(CheckpointError):
    """An export that cannot be written, or a folder that is not a readable export."""


def is_export_dir(path: str | Path) -> bool:
    """True for a folder holding an export's weights and config (what load_export reads)."""
    p = Path(path)
    return p.is_dir() and (p / WEIGHTS).is_file() and (p / CONFIG).is_file()


def write_export_files(
    folder: Path,
    model: LanguageModel,
    vocab: Tokenizer,
    config: dict[str, Any],
    card: str,
    lmtrain_version: str,
    step: int | None = None,
) -> dict[str, str]:
    """Write the four files of an export into `folder`, each through files.atomic_write; returns
    the sha256 of each file load_export reads, for the manifest. `config`: config.json's
    content (a Config's to_dict, its paths made shareable by the caller); `step`: the
    optimiser step of the weights, kept in the weights' metadata (export_step reads it)."""
    from safetensors.torch import save

    # A shared tensor (tied weights) is stored once, under its first name; its other names are
    # recorded in the metadata, as safetensors' save_model does, and load_export ties them again.
    meta = {"format": FORMAT, "version": str(VERSION), "lmtrain_version": lmtrain_version}
    if step is not None:
        meta[STEP_KEY] = str(step)
    state, first = {}, {}
    for name, tensor in model.state_dict().items():
        kept = first.setdefault((tensor.data_ptr(), tensor.numel()), name)
        if kept == name or tensor.numel() == 0:
            state[name] = tensor.contiguous()
        else:
            meta[name] = kept
    written = {
        CONFIG: _json_bytes(config, indent=2, ensure_ascii=True),
        WEIGHTS: save(state, metadata=meta),
        VOCAB: _json_bytes(vocab.to_dict(), indent=None, ensure_ascii=False),
    }
    for name, data in written.items():
        files.write_bytes(folder / name, data)
    files.write_text(folder / CARD, card)
    return {name: hashlib.sha256(data).hexdigest() for name, data in written.items()}


def _json_bytes(value: Any, indent: int | None, ensure_ascii: bool) -> bytes:
    text = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)
    return (text + "\n").encode("utf-8")


@dataclass
class _Manifest:
    """.lmtrain-export.json as read back (records.build_record)."""

    format: Literal["lmtrain-export"]
    version: int
    files: list[str]
    complete: bool = True
    sha256: dict[str, str] | None = None
    """Of the files load_export reads; none in an export of an older lmtrain."""


def _manifest(folder: Path) -> _Manifest | None:
    """`folder`'s export manifest; None where there is none readable (an older export)."""
    try:
        return build_record(_Manifest, _read_json(folder / MANIFEST), MANIFEST)
    except (ExportError, RecordError):
        return None


def written_files(folder: Path) -> list[str] | None:
    """The names `folder`'s export manifest says lmtrain export wrote; None without a readable
    manifest. `complete` in it is False while an export is being written."""
    manifest = _manifest(folder)
    return manifest.files if manifest else None


def write_manifest(folder: Path, complete: bool, sha256: dict[str, str] | None = None) -> None:
    """The export manifest: the files lmtrain export writes in `folder`, whether all are, and
    the sha256 of those load_export reads (a damaged or changed file is refused)."""
    manifest = {"format": FORMAT, "version": VERSION, "files": [*FILES, MANIFEST]}
    files.write_json(folder / MANIFEST, {**manifest, "complete": complete, "sha256": sha256})


def load_export(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[LanguageModel, Tokenizer, Config]:
    """Model (in eval mode), vocabulary and config of an export folder; JSON and safetensors
    only, never a pickle. Weights with NaN or infinity are refused, as a checkpoint's are."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    for name in (WEIGHTS, CONFIG, VOCAB):
        if not (path / name).is_file():
            raise ExportError(f"{path}: not an lmtrain export ({name} is missing)")
    manifest = _manifest(path)
    if manifest and not manifest.complete:
        raise ExportError(
            f"{path}: an export that was interrupted while it was written (its files may come "
            "from two exports); run `lmtrain export` again to finish it"
        )
    sums = (manifest and manifest.sha256) or {}
    read: dict[Path, str] = {}  # sha256 of each file, checked against `sums` once all loads:
    # damage that the other checks name (bad JSON, weights of another shape) is reported as such
    cfg = config_from_dict(_read_json(path / CONFIG, read), source=str(path / CONFIG))
    raw_vocab = _read_json(path / VOCAB, read)
    try:
        vocab = from_dict(raw_vocab)
    except (KeyError, TypeError, ValueError, AssertionError, IndexError):
        raise ExportError(f"{path / VOCAB}: not a vocabulary (expected kind and itos)") from None
    weights = path / WEIGHTS
    try:
        with files.open_regular(weights) as f:
            data = f.read()
        read[weights] = hashlib.sha256(data).hexdigest()
        if weights_metadata(data).get("format") != FORMAT:
            raise ExportError(f"{weights}: not written by lmtrain export (no format mark)")
        state = load(data)
        del data  # `state` holds copies: one copy fewer of the weights while the model is built
        _refuse_non_finite(state, weights)
        model = build_model(cfg.model, len(vocab))
        _load_tied(model, state)
    except (SafetensorError, OSError, RuntimeError, ValueError, RecursionError) as e:
        detail = " ".join(str(e).split())[:500]
        raise ExportError(
            f"{path}: the weights do not load ({detail}); the export is damaged or its files "
            "come from different models"
        ) from None
    for file, digest in read.items():
        _check_sum(file, digest, sums)
    return model.to(device).eval(), vocab, cfg


def export_step(folder: str | Path) -> int | None:
    """The optimiser step an export's weights were saved at; None where it is not recorded (an
    export of an older lmtrain) or not readable (load_export says what is wrong)."""
    try:
        header = files.read_bounded(Path(folder) / WEIGHTS, _HEADER_BYTES)[0]
        step = int(weights_metadata(header).get(STEP_KEY, ""))
    except (OSError, ValueError, RecursionError):
        return None
    return step if step >= 0 else None


def weights_metadata(data: bytes) -> dict[str, Any]:
    """The metadata in the header of safetensors bytes `data` (the header may be all it holds);
    ValueError where there is no readable header."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _refuse_non_finite(state: dict[str, torch.Tensor], weights: Path) -> None:
    bad = non_finite(state)
    if bad:
        raise ExportError(
            f"{weights}: its weights are not finite: NaN or infinity in {joined(bad, 3)}. The "
            "run had diverged when the model was exported, so it cannot be evaluated, sampled "
            "or scored. Export an earlier checkpoint of the run: lmtrain export "
            "RUN/checkpoints/step-N.pt --out DIR"
        )


def _load_tied(model: LanguageModel, state: dict[str, torch.Tensor]) -> None:
    """Load `state` strictly, where a name the file lacks is one the model ties to a name it
    holds (the writer stores a shared matrix once); RuntimeError otherwise."""
    own = model.state_dict()
    loaded = {(own[n].data_ptr(), own[n].numel()) for n in state if n in own}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [n for n in missing if (own[n].data_ptr(), own[n].numel()) not in loaded]
    if missing or unexpected:
        raise RuntimeError(f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def _read_json(path: Path, read: dict[Path, str] | None = None) -> dict:
    """The JSON object in `path`; the sha256 of its bytes is kept in `read` when given."""
    try:
        data, more = files.read_bounded(path, _JSON_MAX_BYTES)
        if more:
            raise ValueError(f"larger than {_JSON_MAX_BYTES >> 20} MiB")
        if read is not None:
            read[path] = hashlib.sha256(data).hexdigest()
        value = json.loads(data)
    except (OSError, ValueError, RecursionError) as e:  # UTF-8 and JSON errors included
        raise ExportError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(value, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _check_sum(path: Path, digest: str, sums: dict[str, str]) -> None:
    want = sums.get(path.name)
    if want is not None and digest != want:
        raise ExportError(
            f"{path}: damaged or changed since it was exported (its sha256 is not the one "
            f"{MANIFEST} records); nothing was loaded. Export the run again (lmtrain export "
            "RUN --out DIR), or restore the file from where the export came from."
        )
