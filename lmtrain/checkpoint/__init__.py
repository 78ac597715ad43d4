"""Checkpoints: one file with state_dicts, config, vocabulary and counters; and exports.

This package owns both formats; nothing else opens a checkpoint file or reads an export folder.

    format.py         the typed `Checkpoint` and its `Progress` counters (format version 2)
    validate.py       a file's fields checked one by one on load, every problem named at once
    storage.py        atomic writes, `weights_only` reads of regular files only, which file a
                      run directory names
    resumable.py      what may change on resume (config keys, tensor shapes)
    export_format.py  the export folder: safetensors weights, config.json, vocab.json
    loading.py        a model to evaluate or sample, from a checkpoint, run directory or export
"""

from lmtrain.checkpoint.format import (
    BEST,
    CHECKPOINT_DIR,
    FORMAT,
    LAST,
    VERSION,
    Checkpoint,
    Progress,
)
from lmtrain.checkpoint.loading import config_of, load_model
from lmtrain.checkpoint.resumable import (
    RESUMABLE_CHANGES,
    check_resumable,
    config_changes,
    tensor_misfits,
)
from lmtrain.checkpoint.storage import load_checkpoint, resolve_checkpoint, save_checkpoint
from lmtrain.checkpoint.validate import checkpoint_from_dict

__all__ = [
    "BEST",
    "CHECKPOINT_DIR",
    "FORMAT",
    "LAST",
    "RESUMABLE_CHANGES",
    "VERSION",
    "Checkpoint",
    "Progress",
    "check_resumable",
    "checkpoint_from_dict",
    "config_changes",
    "config_of",
    "load_checkpoint",
    "load_model",
    "resolve_checkpoint",
    "save_checkpoint",
    "tensor_misfits",
]
