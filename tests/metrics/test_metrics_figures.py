"""metrics.jsonl takes whatever figures an evaluation gives (EvalResult.figures, Unit) without a
list of their names of its own, and still refuses a figure that is not a finite number."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtrain.metrics import MetricsError, MetricsFile, read_metrics


def test_a_figure_no_list_names_is_read_and_kept_on_resume(tmp_path: Path) -> None:
    lines = [
        '{"type": "train", "step": 2, "loss": 1.5, "ppl": 4.48, "bpw": 2.5}',
        '{"type": "eval", "step": 2, "loss": 1.25, "bpw": "2.0", "bpc": null}',
        '{"type": "eval", "step": 4, "loss": 1.0, "bpw": 1.5}',
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    records = read_metrics(tmp_path)
    assert records[:2] == [
        {"type": "train", "step": 2, "loss": 1.5, "ppl": 4.48, "bpw": 2.5},
        {"type": "eval", "step": 2, "loss": 1.25, "bpw": 2.0, "bpc": None},
    ]
    assert list(records[1]) == ["type", "step", "loss", "bpw", "bpc"]  # the line's order
    metrics = MetricsFile(tmp_path, resume_step=2, warn=pytest.fail)
    metrics.close()
    assert metrics.kept == records[:2] and read_metrics(tmp_path) == records[:2]


@pytest.mark.parametrize(
    ("figure", "problem"),
    [
        ('"ppl": "many"', "'ppl' should be a number, not str 'many'"),
        ('"bpw": [1]', "'bpw' should be a number, not list [1]"),
        ('"bpw": 1e999', "bpw: must be a finite number, got inf"),
    ],
)
def test_a_damaged_figure_is_refused(tmp_path: Path, figure: str, problem: str) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"type": "eval", "step": 2, ' + figure + "}\n")
    with pytest.raises(MetricsError) as refused:
        read_metrics(tmp_path)
    assert "line 1: not an lmtrain metrics record" in str(refused.value)
    assert problem in str(refused.value) and refused.value.exit_code == 2
