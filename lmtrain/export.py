"""Export a trained model as a folder that loads without unpickling anything.

    RUN/export/
      model.safetensors   the weights only (safetensors: a JSON header and raw tensor bytes)
      config.json         the run's full resolved config (JSON is also valid YAML)
      vocab.json          the vocabulary: tokeniser kind and the token of each id
      README.md           a model card: data, metrics, the command that trained it

Reading it back (`load_export`, and `lmtrain eval/sample/score EXPORT_DIR`) parses JSON and
safetensors only, so an export from anyone can be loaded without trusting it to run code.
With `model.tie_weights` the decoder and the embedding share one matrix; safetensors stores a
tensor once, so the file holds it under one name and loading ties the other name to it again
(the model built from config.json already shares the matrix, and loading fills it once).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtrain import __version__
from lmtrain.checkpoint import (
    CHECKPOINT_DIR,
    Progress,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
)
from lmtrain.config import Config, config_from_dict
from lmtrain.data.vocab import Vocab
from lmtrain.errors import CheckpointError
from lmtrain.models import LanguageModel, build_model

WEIGHTS, CONFIG, VOCAB, CARD = "model.safetensors", "config.json", "vocab.json", "README.md"
FILES = (WEIGHTS, CONFIG, VOCAB, CARD)
FORMAT = "lmtrain-export"
VERSION = 1


class ExportError(CheckpointError):
    """An export that cannot be written, or a folder that is not a readable export."""


@dataclass(frozen=True)
class ExportResult:
    out: Path
    """The export folder."""
    checkpoint: Path
    """The checkpoint it was made from."""
    parameters: int


def is_export_dir(path: str | Path) -> bool:
    """True for a folder holding an export's weights and config (what load_export reads)."""
    p = Path(path)
    return p.is_dir() and (p / WEIGHTS).is_file() and (p / CONFIG).is_file()


def default_out(run: Path) -> Path:
    """RUN/export for a run directory or a checkpoint inside RUN/checkpoints/."""
    if run.is_dir():
        return run / "export"
    if run.parent.name == CHECKPOINT_DIR:
        return run.parent.parent / "export"
    raise ExportError(
        f"{run}: this checkpoint is not inside a run directory's {CHECKPOINT_DIR}/; say where "
        "the export goes with --out DIR"
    )


def export_run(run: str | Path, out: Path | None = None) -> ExportResult:
    """Write the export of `run` (a run directory or checkpoint) to `out` (default RUN/export).

    `out` may be absent, empty, or a previous export (replaced whole); anything else is refused.
    The folder is built beside `out` and moved into place, so `out` never holds a mix of two
    exports.
    """
    run = Path(run)
    if is_export_dir(run):
        # An export has no checkpoint to export from; without this the user would be told that
        # the folder has no checkpoints/ and asked whether it is a run directory.
        raise ExportError(
            f"{run}: is already an export (lmtrain export reads a run directory or a "
            "checkpoint); copy the folder to share it, or export the run it came from"
        )
    checkpoint = resolve_checkpoint(run)
    # `--out=~/x` reaches us unexpanded (the shell expands `~` only at the start of a word).
    out = Path(out).expanduser() if out is not None else default_out(run)
    _check_out(out)
    model, vocab, cfg = load_model(checkpoint)
    progress = load_checkpoint(checkpoint).progress
    # Built beside `out` (same file system, so the final rename is atomic); made with mkdir
    # rather than mkdtemp so that the folder gets the usual permissions, not owner-only ones.
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise ExportError(f"{out}: cannot create the export ({e.strerror or e})") from None
    try:
        _write(tmp, model, vocab, cfg, progress, checkpoint)
        _move_into_place(tmp, out)
    except OSError as e:
        raise ExportError(
            f"{out}: could not write the export ({e.strerror or e}); nothing was replaced"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, checkpoint, sum(p.numel() for p in model.parameters()))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_export_dir(out):
        raise ExportError(
            f"{out}: is a folder with other files in it, not a previous export; lmtrain "
            "overwrites only its own exports. Choose another --out, or empty it first."
        )


def _write(
    folder: Path,
    model: LanguageModel,
    vocab: Vocab,
    cfg: Config,
    progress: Progress,
    checkpoint: Path,
) -> None:
    from safetensors.torch import save_model

    # save_model drops the second name of a shared tensor (tied weights) and records it in the
    # metadata; load_model below accepts exactly that.
    (folder / CONFIG).write_text(
        json.dumps(cfg.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    meta = {"format": FORMAT, "version": str(VERSION), "lmtrain_version": __version__}
    save_model(model, str(folder / WEIGHTS), metadata=meta)
    # safetensors creates its file owner-only; an export is made to be shared, so the weights
    # get the permissions the umask gives every other file.
    (folder / WEIGHTS).chmod((folder / CONFIG).stat().st_mode & 0o777)
    (folder / VOCAB).write_text(
        json.dumps(vocab.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (folder / CARD).write_text(model_card(model, vocab, cfg, progress, checkpoint), "utf-8")
    for name in FILES:
        with (folder / name).open("rb") as f:
            os.fsync(f.fileno())


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    # A directory cannot be replaced by a rename while it has files: move the old export aside
    # first, so that `out` is either the old export or the new one, then delete the old one.
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def model_card(
    model: LanguageModel, vocab: Vocab, cfg: Config, progress: Progress, checkpoint: Path
) -> str:
    """A short README.md: what the model is, what it was trained on, how well it did."""
    m, d = cfg.model, cfg.data
    n_params = sum(p.numel() for p in model.parameters())
    unit = "nats/char" if vocab.kind == "char" else "nats/token"
    if math.isfinite(progress.best_val_loss):
        loss = progress.best_val_loss
        metric = f"best validation loss {loss:.4f} {unit}, perplexity {math.exp(loss):.2f}"
        if vocab.kind == "char":
            metric += f", {loss / math.log(2):.4f} bits/char"
    else:
        metric = "no validation figure (the run had no data.valid or never evaluated)"
    lines = [
        f"# {Path(cfg.run.dir).name}: {m.cell} {vocab.kind}-level language model",
        "",
        f"A {m.num_layers}x{m.hidden_size} {m.cell} {vocab.kind}-level language model "
        f"({n_params:,} parameters, vocabulary of {len(vocab):,} {vocab.kind}s), trained with "
        f"lmtrain {__version__} and exported from `{checkpoint}`.",
        "",
        "## Data",
        "",
        f"- train: `{d.train}`",
        f"- valid: `{d.valid}`",
        f"- test: `{d.test}`",
        f"- tokenizer: {d.tokenizer}, mode: {d.mode}",
        "",
        "## Training and metrics",
        "",
        f"- {metric}",
        f"- {progress.step:,} optimiser steps, {progress.tokens:,} training tokens, "
        f"{_duration(progress.train_seconds)} of training",
        "",
        "To train it again (config.json is the full resolved config, and JSON is valid YAML; "
        "its run.dir is the original run's, which already holds this run, so name a new one; "
        "data paths are as the original run read them):",
        "",
        f"    lmtrain fit config.json run.dir={shlex.quote(retrain_dir(cfg))}",
        "",
        "## Use",
        "",
        "    lmtrain sample THIS_FOLDER --prompt 'The '",
        "    lmtrain eval THIS_FOLDER --data TEXT_FILE",
        "    lmtrain score THIS_FOLDER 'a sentence to score'",
        "",
        "or in Python: `lmtrain.load('THIS_FOLDER').generate('The ')`.",
        "",
        f"Files: `{WEIGHTS}` (weights only), `{CONFIG}`, `{VOCAB}`; loading them never "
        "unpickles anything.",
        "",
    ]
    return "\n".join(lines)


def retrain_dir(cfg: Config) -> str:
    """A new run.dir, named after the original, for training the exported model again."""
    return f"runs/{Path(cfg.run.dir).name}-again"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


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
