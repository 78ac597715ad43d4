"""Eval with a tokeniser that does not fit: text mostly unknown to the checkpoint's tokeniser
is refused, a few unknown characters are fine."""

from __future__ import annotations

from conftest import invoke, tiny_config
from lmtrain.training import fit


def test_eval_refuses_text_mostly_unknown_to_the_tokeniser(tmp_path, tiny_files, cli):
    cfg = tiny_config(tmp_path, tiny_files, "data.tokenizer=char", "train.max_steps=2")
    fit(cfg, quiet=True)
    greek = tmp_path / "greek.txt"
    greek.write_text("αβγδε ζηθικ λμνξο πρστυ\n" * 20, encoding="utf-8")
    result = invoke(cli, "eval", tmp_path / "run", "--data", greek)
    assert result.exit_code == 2
    assert (
        f"{greek}: 400 of its 480 tokens (83%) are not in this checkpoint's char" in result.stderr
    )
    english = tmp_path / "english.txt"
    english.write_text("the cat sat on the mat, naïvely.\n", encoding="utf-8")
    result = invoke(cli, "eval", tmp_path / "run", "--data", english, "--json")
    assert result.exit_code == 0, result.output  # a few unknown characters are fine
