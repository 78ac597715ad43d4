"""`lmtrain export`: a run's checkpoint as a folder that loads without unpickling anything.

The folder's files and how they are read back are lmtrain/checkpoint/export_format.py; this
module picks the checkpoint, writes the model card, and owns the folder: it writes into a new or
empty one, or one whose manifest says lmtrain export wrote there, and replaces only its own files.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from lmtrain.data.corpus import is_builtin, split_file_spec
from lmtrain.data.tokenizers import Tokenizer
from lmtrain.evaluation import Unit
from lmtrain.models import LanguageModel

_LICENSE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")
"""A licence identifier: what model hubs accept (mit, apache-2.0, cc-by-sa-4.0, other)."""


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


def export_run(
    run: str | Path, out: Path | None = None, license: str | None = None
) -> ExportResult:
    """Write the export of `run` (a run directory or checkpoint) to `out` (default RUN/export).

    `license`: the licence identifier the card's header gives (as model hubs name them: mit,
    apache-2.0, cc-by-sa-4.0, ...); None: the card says none was given.

    `out` may be absent, empty, or a folder lmtrain exported to before (its manifest lists the
    files export wrote); anything else is refused. Only the export's own files are written,
    each atomically, and the manifest marks the export incomplete until all of them are, so a
    user's other files in `out` are never touched and a half-written export is never loaded.
    """
    run = Path(run)
    if license is not None and not _LICENSE.fullmatch(license):
        raise ExportError(
            f"--license {license!r}: expected a licence identifier such as mit, apache-2.0 or "
            "cc-by-sa-4.0 (letters, digits, '.', '-' and '+')"
        )
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
        card = model_card(model, vocab, cfg, progress, checkpoint, license)
        sums = write_export_files(
            out, model, vocab, shareable_config(cfg), card, __version__, progress.step
        )
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


PATH_KEYS = (
    ("data", "train"),
    ("data", "valid"),
    ("data", "test"),
    ("data", "tokenizer_file"),
    ("data", "cache_dir"),
    ("model", "pretrained_embeddings"),
    ("run", "dir"),
)
"""The config keys that hold paths of the machine that trained, rewritten by shareable_config."""


def shareable_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as config.json holds it: every path key in a form that names no
    folder of this machine (portable_path); every other key as it is."""
    out = cfg.to_dict()
    for section, key in PATH_KEYS:
        value = out.get(section, {}).get(key)
        if isinstance(value, str):
            out[section][key] = portable_path(value)
    return out


def portable_path(spec: str) -> str:
    """`spec` without this machine's folders: an absolute path inside $LMTRAIN_DATA becomes
    `${LMTRAIN_DATA}/...` (as the recipes write it), one inside the home folder `~/...`, any
    other absolute path its file name alone. A built-in corpus, a relative path, `${VAR}` and
    `~` forms, and a `:SPLIT` suffix stay as they are."""
    if is_builtin(spec) or spec == "auto":
        return spec
    path, split = split_file_spec(spec)
    if not Path(path).is_absolute():
        return spec
    tail = f":{split}" if split is not None else ""
    target = Path(os.path.normpath(path))
    for prefix, root in (("${LMTRAIN_DATA}", os.environ.get("LMTRAIN_DATA")), ("~", "~")):
        if not root:
            continue
        try:
            base = Path(os.path.normpath(Path(root).expanduser().resolve()))
            inside = target.relative_to(base)
        except (ValueError, RuntimeError, OSError):
            continue
        if inside.parts:
            return f"{prefix}/{inside.as_posix()}{tail}"
    return f"{target.name or path}{tail}"


LIBRARY = "lmtrain"


def card_metadata(
    vocab: Tokenizer, cfg: Config, progress: Progress, license: str | None = None
) -> dict[str, Any]:
    """The model card's metadata header, as model hubs read it: library, licence (when given),
    tags, pipeline, and the best validation figures as metrics and an evaluation result."""
    name = Path(cfg.run.dir).name or LIBRARY
    tags = [LIBRARY, "pytorch", "safetensors", "rnn", cfg.model.cell, f"{vocab.kind}-level"]
    meta: dict[str, Any] = {
        "library_name": LIBRARY,
        **({"license": license} if license else {}),
        "tags": list(dict.fromkeys(tags)),
        "pipeline_tag": "text-generation",
        "model_name": name,
    }
    figures = _best_figures(vocab, progress)
    if figures:
        meta["metrics"] = list(figures)
        valid = cfg.data.valid or ""
        meta["eval"] = {
            "dataset": _dataset_name(valid),
            "split": "validation",
            "figures": figures,
        }
    return meta


def _best_figures(vocab: Tokenizer, progress: Progress) -> dict[str, float]:
    if not math.isfinite(progress.best_val_loss):
        return {}
    loss = progress.best_val_loss
    # The evaluation's own figures of a loss, under the names model hubs use.
    unit = Unit.of(vocab.kind).figures(loss)
    figures = {"perplexity": unit.pop("ppl"), **unit, "loss": loss}
    return figures


def _dataset_name(spec: str) -> str:
    """A short name of the data a spec reads: the built-in corpus's, or the file's folder."""
    if is_builtin(spec):
        return spec.removeprefix("builtin:").partition(":")[0]
    path = Path(split_file_spec(spec)[0])
    return path.parent.name or path.stem or "text"


def card_header(meta: dict[str, Any]) -> str:
    """The YAML block between `---` lines that opens the card. huggingface_hub's ModelCardData
    writes it when the package is there (it comes with `tokenizers`), with the figures as its
    `model-index`; without it, the same keys are written with PyYAML and the figures as
    `metrics` only."""
    plain = {k: v for k, v in meta.items() if k != "eval"}
    try:
        body = _hub_yaml(plain, meta.get("eval"))
    except (ImportError, ValueError):  # not installed, or it refused these values
        import yaml

        body = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
    return f"---\n{body.strip()}\n---\n"


def _hub_yaml(plain: dict[str, Any], evaluated: dict[str, Any] | None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=evaluated["dataset"],
            dataset_name=evaluated["dataset"],
            dataset_split=evaluated["split"],
            metric_type=metric,
            metric_value=round(value, 4),
        )
        for metric, value in (evaluated or {}).get("figures", {}).items()
    ]
    return ModelCardData(**plain, eval_results=results or None).to_yaml()


def model_card(
    model: LanguageModel,
    vocab: Tokenizer,
    cfg: Config,
    progress: Progress,
    checkpoint: Path,
    license: str | None = None,
) -> str:
    """A short README.md, opening with a metadata header model hubs read: what the model is,
    what it was trained on, how well it did. No path of this machine appears in it."""
    m, d = cfg.model, cfg.data
    n_params = sum(p.numel() for p in model.parameters())
    unit = f"nats/{vocab.unit}"
    if figures := _best_figures(vocab, progress):
        metric = (
            f"best validation loss {figures['loss']:.4f} {unit}, "
            f"perplexity {figures['perplexity']:.2f}"
        )
        if "bpc" in figures:
            metric += f", {figures['bpc']:.4f} bits/char"
    else:
        metric = "no validation figure (the run had no data.valid or never evaluated)"
    # The checkpoint as the run directory names it (checkpoints/best.pt), never its full path.
    source = (
        f"{CHECKPOINT_DIR}/{checkpoint.name}"
        if checkpoint.parent.name == CHECKPOINT_DIR
        else checkpoint.name
    )
    licence = (
        f"Licence: {license}." if license else "No licence was given (lmtrain export --license)."
    )
    lines = [
        card_header(card_metadata(vocab, cfg, progress, license)),
        f"# {Path(cfg.run.dir).name}: {m.cell} {vocab.kind}-level language model",
        "",
        f"A {m.num_layers}x{m.hidden_size} {m.cell} {vocab.kind}-level language model "
        f"({n_params:,} parameters, vocabulary of {len(vocab):,} {vocab.kind}s), trained with "
        f"lmtrain {__version__} and exported from its `{source}` at step {progress.step:,}. "
        f"{licence}",
        "",
        "## Data",
        "",
        f"- train: `{portable_path(d.train)}`",
        f"- valid: `{portable_path(d.valid) if d.valid is not None else None}`",
        f"- test: `{portable_path(d.test) if d.test is not None else None}`",
        f"- tokenizer: {d.tokenizer}, mode: {d.mode}",
        "",
        "## Training and metrics",
        "",
        f"- {metric}",
        f"- {progress.step:,} optimiser steps, {progress.tokens:,} training tokens, "
        f"{_duration(progress.train_seconds)} of training",
        "",
        "To train it again (config.json is the full resolved config, and JSON is valid YAML; "
        "its run.dir is the original run's, so name a new one; a data path is written as "
        "`${LMTRAIN_DATA}/...` or `~/...`, or by its file name alone when it lay elsewhere: "
        "point them at your copy of the data):",
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
    "card_header",
    "card_metadata",
    "portable_path",
    "retrain_dir",
    "shareable_config",
]
