"""The figures' names are written once (lmtrain/evaluation/config.py): what an evaluation gives,
what `lmtrain plot --metric` takes and what the plots label, and reading them imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmtrain.config import PlotOptions
from lmtrain.evaluation import EvalResult
from lmtrain.evaluation.config import FIGURES
from lmtrain.records import RecordError, build_record, choices


def test_an_evaluation_gives_exactly_the_named_figures() -> None:
    full = EvalResult(nll=12.0, tokens=10, kind="char", text_bytes=11)
    assert list(full.figures()) == list(FIGURES)
    assert set(EvalResult(nll=12.0, tokens=10, kind="word").figures()) < set(FIGURES)


def test_plot_takes_the_figures_by_their_names() -> None:
    import typing

    hints = typing.get_type_hints(PlotOptions, include_extras=True)
    assert choices(hints["metric"]) == tuple(FIGURES)
    with pytest.raises(RecordError, match="expected one of 'loss', 'ppl', 'bpc', 'bpb', got 'bbp'"):
        build_record(PlotOptions, {"metric": "bbp"}, "plot")


def test_reading_the_names_imports_no_torch() -> None:
    code = "import sys, lmtrain.evaluation.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
