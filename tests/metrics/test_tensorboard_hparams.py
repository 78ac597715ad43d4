"""TensorBoard's HParams table holds the run's hyperparameters, readably, and nothing else."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_config
from lmtrain.training import fit


def _session_hparams(tb: Path) -> dict[str, object]:
    """The hparams of the run's session, as TensorBoard's event reader gives them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tb), size_guidance={"tensors": 0}).Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    out: dict[str, object] = {}
    for key, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


def test_hparams_are_the_hyperparameters_with_readable_values(tmp_path: Path, tiny_files) -> None:
    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_steps=4", "run.tensorboard=true",
        "model.tie_weights=false", f"data.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    fit(cfg, quiet=True)
    hp = _session_hparams(Path(cfg.run.dir) / "tb")
    # Where files are and how the machine runs are no hyperparameters.
    for gone in ("data.cache_dir", "data.decode_errors", "data.train", "data.test",
                 "train.device", "train.log_every", "run.dir", "run.tensorboard"):  # fmt: skip
        assert gone not in hp, gone
    assert not [k for k in hp if k.startswith("run.")]
    # What was trained is, each value as it reads.
    assert hp["model.hidden_size"] == 16 and hp["train.lr"] == 0.01
    assert hp["model.cell"] == "lstm" and hp["data.tokenizer"] == "word"
    assert hp["model.tie_weights"] == "false" and hp["train.variable_bptt"] == "false"
    assert hp["train.max_minutes"] == "null"


def test_the_table_keeps_the_best_figures_it_is_read_against(tmp_path: Path, tiny_files) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=4", "run.tensorboard=true")
    fit(cfg, quiet=True)
    acc = EventAccumulator(str(Path(cfg.run.dir) / "tb")).Reload()
    assert b"best/loss" in acc.PluginTagToContent("hparams")["_hparams_/experiment"]
