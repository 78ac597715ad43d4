"""Features from different issues together: every recurrent option and the adaptive softmax in
sentences mode (packed batches, chunked TBPTT), through fit, eval and score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cells import OPTIONS

from conftest import invoke, tiny_config

SENTENCES = ["the cat sat on the mat .", "a dog sat .", "the mat was red and the log was brown ."]
CASES = {**OPTIONS, "adaptive_softmax": ["model.adaptive_softmax.cutoffs=[6]"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_option_in_sentences_mode_scores_exactly(
    name: str, tiny_files, tmp_path: Path, cli
) -> None:
    # bptt 4 cuts most sentences into chunks, so the carried state of the custom stacks is used.
    cfg = tiny_config(
        tmp_path, tiny_files, "data.mode=sentences", "train.epochs=1", "train.bptt=4",
        "train.lr=0.03", *CASES[name],
    )  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    trained = invoke(cli, "fit", path)
    assert trained.exit_code == 0, trained.stderr
    evaluated = invoke(cli, "eval", tmp_path / "run", "--json", "--batch-size", "2")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["loss"] > 0

    def scores(batch_size: int) -> list[dict]:
        out = invoke(
            cli, "score", tmp_path / "run", *SENTENCES, "--json", "--batch-size", str(batch_size)
        )
        assert out.exit_code == 0, out.stderr
        return json.loads(out.stdout)

    alone, together = scores(1), scores(3)
    assert [s["text"] for s in alone] == SENTENCES
    assert [s["tokens"] for s in alone] == [len(s.split()) + 1 for s in SENTENCES]
    for a, b in zip(alone, together, strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], rel=1e-5)
        assert a["logprob"] < 0
