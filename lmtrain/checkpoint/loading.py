"""A model to evaluate or sample: from a checkpoint file, a run directory or an export folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmtrain.checkpoint.export_format import export_step, is_export_dir, load_export
from lmtrain.checkpoint.format import Checkpoint
from lmtrain.checkpoint.storage import load_checkpoint, resolve_checkpoint
from lmtrain.config import Config, config_from_dict
from lmtrain.data.tokenizers import Tokenizer, from_dict
from lmtrain.errors import CheckpointError, ConfigError, LmtrainError
from lmtrain.models import LanguageModel, build_model


def config_of(ck: Checkpoint, path: Path) -> Config:
    """The checkpoint's config, parsed and validated as a config file would be."""
    try:
        return config_from_dict(ck.config, source=f"{path} (saved config)")
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config cannot be read ({e})") from None


@dataclass(frozen=True)
class Trained:
    """A model to evaluate or sample, and where it came from (what `lmtrain eval` reports)."""

    model: LanguageModel
    vocab: Tokenizer
    config: Config
    path: Path
    """The checkpoint file read (a run directory's best.pt, say), or the export folder."""
    step: int | None
    """The optimiser step of those weights; None for an export that does not record it."""


def load_model(
    spec: str | Path, device: torch.device | str = "cpu"
) -> tuple[LanguageModel, Tokenizer, Config]:
    """Model (in eval mode), vocabulary and config of a checkpoint, run directory or export."""
    t = load_trained(spec, device)
    return t.model, t.vocab, t.config


def load_trained(spec: str | Path, device: torch.device | str = "cpu") -> Trained:
    """load_model's model, vocabulary and config, with the file they came from and its step."""
    if is_export_dir(spec):
        return Trained(*load_export(spec, device), Path(spec), export_step(spec))
    path = resolve_checkpoint(spec)
    ck = load_checkpoint(path)
    cfg = config_of(ck, path)
    try:
        vocab = from_dict(ck.vocab)
        model = build_model(cfg.model, len(vocab))
        model.load_state_dict(ck.model)
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        detail = " ".join(str(e).split())[:500]
        raise CheckpointError(
            f"{path}: checkpoint contents do not fit together ({detail})"
        ) from None
    except LmtrainError:
        raise
    return Trained(model.to(device).eval(), vocab, cfg, path, ck.progress.step)
