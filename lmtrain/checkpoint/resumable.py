"""What may change when a run is resumed: the config keys that may differ from the checkpoint's,
and the tensor shapes that must fit the model the new config builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmtrain.checkpoint.format import Checkpoint
from lmtrain.checkpoint.loading import config_of
from lmtrain.config import Config, expand_path_if_set
from lmtrain.data.tokenizers import from_dict
from lmtrain.errors import CheckpointError
from lmtrain.models import build_model

# Settings that may differ between a checkpoint's config and the config a run is resumed with.
# Each takes effect from the resume step on; the steps already taken are what they were. Every
# other setting is refused by name, because continuing with it changed would silently give a
# run that no single config describes (or would fail later with a shape error).
RESUMABLE_CHANGES: dict[str, str] = {
    "train.epochs": "the plan: a cosine schedule is stretched to the new length from here on",
    "train.max_steps": "the plan: a cosine schedule is stretched to the new length from here on",
    "train.max_minutes": "the time budget",
    "train.eval_every": "when evaluations and checkpoints happen",
    "train.log_every": "how often progress is logged",
    "train.max_nonfinite_steps": "the NaN guard's limit",
    "train.num_threads": "CPU threads (results agree up to floating-point rounding)",
    "train.dist_timeout": "the torchrun timeout",
    "train.device": "the device (results agree up to floating-point rounding, and dropout "
    "masks come from that device's generator)",
    "train.lr": "the learning rate",
    "train.min_lr": "the learning rate",
    "train.warmup_steps": "the learning rate",
    "train.schedule": "the learning-rate schedule (the plateau state carries over)",
    "train.plateau_factor": "the plateau schedule",
    "train.plateau_patience": "the plateau schedule",
    "train.momentum": "the optimiser's momentum",
    "train.weight_decay": "the optimiser's weight decay",
    "train.clip_grad_norm": "gradient clipping",
    "train.clip_grad_value": "gradient clipping",
    "train.ar_alpha": "the activation penalty",
    "train.tar_beta": "the activation penalty",
    "train.nonmono": "when NT-ASGD starts averaging",
    "train.early_stopping": "when the run stops for stalled validation (the count carries over)",
    "train.schedule_span": "the learning rate",
    "data.test": "the default text of `lmtrain eval` (training never reads it)",
    "data.cache_dir": "where tokenised splits are cached (the ids are the same either way)",
    "model.pretrained_embeddings": "nothing: only a new run is initialised from vectors",
    "model.pretrained_format": "nothing: only a new run is initialised from vectors",
    "run.dir": "where the run is written",
    "run.keep_last": "how many numbered checkpoints are kept",
    "run.tensorboard": "whether TensorBoard events are written",
    "run.sample_tokens": "the samples logged at evaluations",
    "run.sample_prompt": "the samples logged at evaluations",
}
# Any other run.* setting says only what is written where, never what is computed.
_RUN_SECTION = "run."

# Why a setting cannot change, by the longest matching prefix.
_REFUSED_BECAUSE = {
    "model": "the weights' shapes and meaning depend on it",
    "data": "the vocabulary and the token stream depend on it",
    "data.valid": "best.pt, the plateau schedule and NT-ASGD compare losses on the same text",
    "train.batch_size": "the batches, the carried state and the position in the epoch use it",
    "train.bptt": "the batches and the position in the epoch depend on it",
    "train.variable_bptt": "the batches and the position in the epoch depend on it",
    "train.seed": "the batch order and dropout masks continue from the saved random state",
    "train.optimizer": "the saved optimiser state belongs to the other optimiser",
    "train.precision": "the numbers and the saved gradient-scaler state depend on it",
    "": "lmtrain cannot continue a run exactly with it changed",
}


def check_resumable(cfg: Config, ck: Checkpoint, path: Path) -> list[str]:
    """Refuse, naming every key, a resume whose config changes what cannot change.

    Returns one line per setting that did change and may (see RESUMABLE_CHANGES), for the
    caller to show: the resumed run then differs from the original from this step on, on
    purpose.
    """
    notes = config_changes(cfg, config_of(ck, path), path, ck.progress.step)
    problems = tensor_misfits(cfg, ck)
    if problems:
        raise CheckpointError(
            f"cannot resume from {path}: its tensors do not fit the model this config builds: "
            + "; ".join(problems)
            + ". Resume with the settings it was trained with, or start a new run.dir."
        )
    return notes


def tensor_misfits(cfg: Config, ck: Checkpoint) -> list[str]:
    """Shape problems between `ck` and the model `cfg` builds, found before anything is written.

    The model is built on the meta device (shapes only, no memory), so this costs nothing next
    to loading the checkpoint.
    """
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, len(from_dict(ck.vocab)))
            expected_state = model.init_state(1)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked in restore
        return []
    problems: list[str] = []
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in ck.model]
    extra = [k for k in ck.model if k not in wanted]
    if missing:
        problems.append(f"weights missing from the checkpoint: {', '.join(missing[:5])}")
    if extra:
        problems.append(f"weights this model does not have: {', '.join(extra[:5])}")
    problems += [
        f"{k}: {tuple(ck.model[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
        for k, v in wanted.items()
        if k in ck.model and ck.model[k].shape != v.shape
    ]
    params = [p for p in model.parameters() if p.requires_grad]  # as build_optimizer takes them
    saved = [i for g in ck.optimizer.get("param_groups", []) for i in g.get("params", [])]
    if len(saved) != len(params):
        problems.append(
            f"the optimiser state is for {len(saved)} parameter tensors, the model has "
            f"{len(params)}"
        )
    else:
        state = ck.optimizer.get("state", {})
        problems += [
            f"optimizer state {name!r} has shape {tuple(value.shape)} for a parameter of shape "
            f"{tuple(param.shape)}"
            for index, param in zip(saved, params, strict=True)
            for name, value in state.get(index, {}).items()
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape
        ]
    # An older lmtrain saved the state without recurrent dropout's masks; restore adds them.
    carried = None if ck.carried_state is None else model.with_masks(tuple(ck.carried_state))
    if carried is not None and (
        len(carried) != len(expected_state)
        or any(
            c.shape[0] != e.shape[0] or c.shape[2:] != e.shape[2:]
            for c, e in zip(carried, expected_state, strict=False)
        )
    ):
        got = ", ".join(str(tuple(c.shape)) for c in carried)
        want = ", ".join(f"({e.shape[0]}, rows, {e.shape[2]})" for e in expected_state)
        problems.append(f"the carried recurrent state has shape(s) {got}; this model's is {want}")
    elif carried is not None:
        # Stream mode carries every one of the batch_size streams into the next window;
        # sentences mode carries the rows of the batch still running, at most batch_size.
        rows, batch = carried[0].size(1), cfg.train.batch_size
        if rows > batch or (cfg.data.mode == "stream" and rows != batch):
            problems.append(
                f"the carried recurrent state has {rows} rows; train.batch_size is {batch}"
                + (" and stream mode carries every stream" if cfg.data.mode == "stream" else "")
            )
    return problems


def config_changes(cfg: Config, saved: Config, path: Path, step: int | None = None) -> list[str]:
    """check_resumable's rule for two parsed configs."""
    new, old = _flatten(cfg.to_dict()), _flatten(saved.to_dict())
    # Checkpoints of earlier releases saved data paths with their ${VAR}s unexpanded; the
    # same file named both ways is no change.
    for k in _PATH_KEYS:
        if isinstance(old.get(k), str):
            old[k] = expand_path_if_set(old[k])
    changed = [k for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k)]
    refused = [k for k in changed if not _may_change(k)]
    if refused:
        lines = [
            f"  - {k} (checkpoint: {old.get(k)!r}, now: {new.get(k)!r}): {_reason(k)}"
            for k in refused
        ]
        raise CheckpointError(
            f"cannot resume from {path}: {len(refused)} setting(s) differ from the checkpoint's "
            "and cannot change on resume:\n"
            + "\n".join(lines)
            + "\nResume with the checkpoint's values (its config is saved in it), or start a "
            "new run.dir."
        )
    where = f" from step {step} on" if step is not None else ""
    return [
        f"resume: {k} changed from {old.get(k)!r} to {new.get(k)!r}; this changes "
        f"{RESUMABLE_CHANGES.get(k, 'what the run writes')}{where}"
        for k in changed
    ]


_PATH_KEYS = ("data.train", "data.valid", "data.test", "model.pretrained_embeddings")


def _may_change(key: str) -> bool:
    return key in RESUMABLE_CHANGES or key.startswith(_RUN_SECTION)


def _reason(key: str) -> str:
    prefix = max(
        (p for p in _REFUSED_BECAUSE if p == "" or key == p or key.startswith(p + ".")), key=len
    )
    return _REFUSED_BECAUSE[prefix]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
