"""`lmtrain export`: a run's checkpoint as a folder that loads without unpickling anything.

The folder's files and how they are read back are lmtrain/checkpoint/export_format.py; this
module picks the checkpoint, writes the model card, and owns the folder: it writes into a new or
empty one, or one whose manifest says lmtrain export wrote there, and replaces only its own files.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from lmtrain import __version__, files
from lmtrain.checkpoint import (
    CHECKPOINT_DIR,
    Progress,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
)
from lmtrain.checkpoint.export_format import (
    CARD,
    CONFIG,
    FILES,
    FORMAT,
    MANIFEST,
    VERSION,
    VOCAB,
    WEIGHTS,
    ExportError,
    is_export_dir,
    load_export,
    weights_metadata,
    write_export_files,
    write_manifest,
    written_files,
)
from lmtrain.config import Config
from lmtrain.data.tokenizers import Tokenizer
from lmtrain.models import LanguageModel


@dataclass(frozen=True)
class ExportResult:
    out: Path
    """The export folder."""
    checkpoint: Path
    """The checkpoint it was made from."""
    parameters: int


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

    `out` may be absent, empty, or a folder lmtrain exported to before (its manifest lists the
    files export wrote); anything else is refused. Only the export's own files are written,
    each atomically, and the manifest marks the export incomplete until all of them are, so a
    user's other files in `out` are never touched and a half-written export is never loaded.
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
    # What an export killed mid-write left; only its own names, in a folder others may share.
    files.sweep_temps(out, (*FILES, MANIFEST))
    _check_out(out)
    model, vocab, cfg = load_model(checkpoint)
    progress = load_checkpoint(checkpoint).progress
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{out}: cannot create the export ({e.strerror or e})") from None
    try:
        write_manifest(out, complete=False)
        card = model_card(model, vocab, cfg, progress, checkpoint)
        sums = write_export_files(out, model, vocab, cfg, card, __version__, progress.step)
        write_manifest(out, complete=True, sha256=sums)
    except OSError as e:
        raise ExportError(
            f"{out}: could not write the export ({e.strerror or e}); the folder may hold an "
            "incomplete export, which will not load until `lmtrain export` completes it, and "
            "no other file in it was changed. Free some space, then export again."
        ) from None
    return ExportResult(out, checkpoint, sum(p.numel() for p in model.parameters()))


def _check_out(out: Path) -> None:
    """Refuse an `out` where the export would replace a file lmtrain export did not write."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; choose another --out")
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir())
    ours = written_files(out)
    if ours is None and set(names) <= set(FILES) and _marked(out / WEIGHTS):
        ours = list(FILES)  # an export of an lmtrain that wrote no manifest
    foreign = [n for n in names if n not in (ours or ())]
    if ours is None and foreign:
        raise ExportError(
            f"{out}: is a folder with other files in it ({_some(foreign)}), not a previous "
            "export; lmtrain export writes only into a new or empty folder, or one it exported "
            "to before, and never replaces a file it did not write. Choose another --out, or "
            "move those files away."
        )
    clash = [n for n in foreign if n in (*FILES, MANIFEST)]
    if clash:
        raise ExportError(
            f"{out}: holds {_some(clash)}, which lmtrain export did not write and would have "
            "to replace; nothing was changed. Move it away, or choose another --out."
        )


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _marked(weights: Path) -> bool:
    """Whether `weights` carries lmtrain export's format mark (in its header's first MiB)."""
    try:
        return weights_metadata(files.read_bounded(weights, 1 << 20)[0]).get("format") == FORMAT
    except (OSError, ValueError, RecursionError):  # anything unreadable is not ours
        return False


def model_card(
    model: LanguageModel, vocab: Tokenizer, cfg: Config, progress: Progress, checkpoint: Path
) -> str:
    """A short README.md: what the model is, what it was trained on, how well it did."""
    m, d = cfg.model, cfg.data
    n_params = sum(p.numel() for p in model.parameters())
    unit = f"nats/{vocab.unit}"
    if math.isfinite(progress.best_val_loss):
        loss = progress.best_val_loss
        metric = f"best validation loss {loss:.4f} {unit}, perplexity {math.exp(loss):.2f}"
        if vocab.unit == "char":
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


__all__ = [
    "CARD",
    "CONFIG",
    "FILES",
    "FORMAT",
    "VERSION",
    "VOCAB",
    "WEIGHTS",
    "ExportError",
    "ExportResult",
    "default_out",
    "export_run",
    "is_export_dir",
    "load_export",
    "model_card",
    "retrain_dir",
]
