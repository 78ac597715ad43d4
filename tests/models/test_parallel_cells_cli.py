"""qrnn, mingru and minlstm through the command line with every option they take: fit learns,
eval, sample and score read the run, an export rebuilds the same model from its config.json,
and sentences mode scores a sentence alike alone and in a padded batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import invoke, tiny_config
from lmtrain.data import read_text
from lmtrain.data.tokenizers import Settings, build
from lmtrain.evaluation.stream import evaluate_ids
from lmtrain.models import build_model

CELLS = {
    "qrnn": ["model.cell=qrnn", "model.zoneout=0.1"],
    "qrnn_window1": ["model.cell=qrnn", "model.qrnn_window=1"],
    "mingru": ["model.cell=mingru", "model.pre_norm=true", "model.residual=true"],
    "minlstm": ["model.cell=minlstm", "model.dense=true"],
}
REGULARISED = [  # every dropout kind, tied weights and a learned start
    "model.dropout=0.1",
    "model.locked_dropout=0.1",
    "model.embedding_dropout=0.05",
    "model.weight_drop=0.2",
    "model.tie_weights=true",
    "model.learn_initial_state=true",
]
SENTENCES = ["the cat sat on the mat .", "a dog sat .", "the mat was red and the log was brown ."]


@pytest.mark.parametrize("name", list(CELLS))
def test_fit_eval_sample_and_export(name: str, tiny_files, tmp_path: Path, cli) -> None:
    cfg = tiny_config(
        tmp_path, tiny_files, "train.epochs=1", "train.lr=0.03", *REGULARISED, *CELLS[name]
    )
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    text = read_text(str(tiny_files["train"]), "train")
    vocab = build("word", text, Settings())
    torch.manual_seed(cfg.train.seed)  # the untrained model as fit seeds it
    valid = vocab.encode(read_text(str(tiny_files["valid"]), "valid")).ids
    start = evaluate_ids(build_model(cfg.model, len(vocab)), valid, "word").loss

    trained = invoke(cli, "fit", path)
    assert trained.exit_code == 0, trained.stderr
    best = float(trained.stdout.split("best val loss ")[1].split(";")[0])
    assert best < start - 0.3, (start, best)
    run = tmp_path / "run"
    evaluated = invoke(cli, "eval", run, "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    sampled = invoke(cli, "sample", run, "--max-tokens", "6", "--seed", "0")
    # six tokens, one token at a time from the carried state (an end of line is one of them)
    assert sampled.exit_code == 0 and len(sampled.stdout.split()) >= 3, sampled.output

    assert invoke(cli, "export", run).exit_code == 0
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["model"]["cell"] == cfg.model.cell
    assert config["model"]["qrnn_window"] == cfg.model.qrnn_window
    assert config["model"]["dense"] == cfg.model.dense
    from_export = invoke(cli, "eval", run / "export", "--json", "--data", tiny_files["test"])
    assert from_export.exit_code == 0, from_export.stderr
    a, b = json.loads(evaluated.stdout), json.loads(from_export.stdout)
    assert a["loss"] == b["loss"] and a["tokens"] == b["tokens"]


@pytest.mark.parametrize("name", list(CELLS))
def test_sentences_mode_scores_alone_as_in_a_padded_batch(
    name: str, tiny_files, tmp_path: Path, cli
) -> None:
    # bptt 4 cuts most sentences into chunks, so the carried state (and QRNN's last input) is
    # used within a sentence, and rows of a batch end at different steps.
    cfg = tiny_config(
        tmp_path, tiny_files, "data.mode=sentences", "train.epochs=1", "train.bptt=4",
        "train.lr=0.03", *CELLS[name],
    )  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    trained = invoke(cli, "fit", path)
    assert trained.exit_code == 0, trained.stderr

    def scores(batch_size: int) -> list[dict]:
        out = invoke(
            cli, "score", tmp_path / "run", *SENTENCES, "--json", "--batch-size", str(batch_size)
        )
        assert out.exit_code == 0, out.stderr
        return json.loads(out.stdout)

    alone, together = scores(1), scores(3)
    assert [s["tokens"] for s in alone] == [len(s.split()) + 1 for s in SENTENCES]
    for a, b in zip(alone, together, strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], rel=1e-5)
        assert a["logprob"] < 0
