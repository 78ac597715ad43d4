"""Figures: the gradient-flow PNG and TensorBoard image, `lmtrain plot`, and life without matplotlib."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmtrain import plot
from lmtrain.diagnose import FlowCurve
from tests.conftest import invoke, tiny_config
from tests.test_diagnose import read_png

try:
    import matplotlib  # noqa: F401
except ImportError:
    # The dev extra installs it; a CI job without it is a broken setup, not a skip.
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("matplotlib is not installed: pip install 'lmtrain[plot]'", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


def write_run(directory: Path, evals: list[tuple[int, float, float]], bpc: bool = False) -> Path:
    """A run directory whose metrics.jsonl (the agreed schema) holds training lines every 10
    steps (640 tokens a step) and one evaluation line per (step, loss, train_seconds)."""
    directory.mkdir(parents=True)
    last = max(step for step, _, _ in evals)
    lines = []
    for step in range(10, last + 1, 10):
        line = {"type": "train", "step": step, "epoch": 0, "loss": 3.0, "ppl": math.exp(3.0)}
        line |= {"lr": 0.01, "grad_norm": 1.0, "grad_norm_max": 1.5, "tokens_per_sec": 900.0}
        line |= {"tokens": 640 * step, "train_seconds": step * 0.7}
        lines.append(line)
    for step, loss, seconds in evals:
        line = {"type": "eval", "step": step, "epoch": 0, "split": "valid", "loss": loss}
        line |= {"ppl": math.exp(loss), "tokens": 4000, "best": True, "train_seconds": seconds}
        line["train_tokens"] = 640 * step
        if bpc:
            line["bpc"] = loss / math.log(2)
        lines.append(line)
    lines.sort(key=lambda r: (r["step"], r["type"] == "eval"))
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return directory


def test_gradient_flow_figure_has_labelled_log_axes_and_a_legend_per_cell() -> None:
    curves = [FlowCurve("rnn_tanh", [1.0, 0.1, 0.01, 0.0]), FlowCurve("lstm", [1.0, 0.5, 0.3, 0.2])]
    fig = plot.gradient_flow_figure(curves, "window T = 4")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "steps back, $T - t$"
    assert "partial L_T" in ax.get_ylabel() and "partial h_t" in ax.get_ylabel()
    assert ax.get_yscale() == "log" and ax.get_title() == "window T = 4"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["rnn_tanh", "lstm"]
    # The zero norm (no gradient at all) is left out rather than drawn at some tiny value.
    assert math.isnan(ax.lines[0].get_ydata()[3]) and ax.lines[1].get_ydata()[3] == 0.2


def test_gradient_flow_cli_writes_a_png_and_the_figure_into_tensorboard(
    tiny_files, tmp_path: Path, cli
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = tmp_path / "c.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files).to_yaml())
    out = tmp_path / "figs" / "gf.png"
    args = ("--cell", "rnn_tanh", "--cell", "gru", "--steps", "10", "--out", out)
    result = invoke(cli, "diagnose", "gradient-flow", path, *args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"wrote {out} and TensorBoard scalars and figure in {tmp_path / 'figs' / 'gf-tb'}"
    )
    width, height = read_png(out)
    assert 600 <= width <= 1600 and 400 <= height <= 1200
    assert [p.name for p in out.parent.iterdir() if p.is_file()] == ["gf.png"]  # no temp file left
    events = EventAccumulator(str(tmp_path / "figs" / "gf-tb"))
    events.Reload()
    tags = events.Tags()
    assert tags["images"] == ["gradient_flow/figure"]
    assert sorted(tags["scalars"]) == ["gradient_flow/gru", "gradient_flow/rnn_tanh"]
    (image,) = events.Images("gradient_flow/figure")
    assert (image.width, image.height) == (width, height)
    assert [e.step for e in events.Scalars("gradient_flow/gru")] == list(range(10))


def test_plot_draws_one_line_per_run_labelled_by_its_directory(tmp_path: Path, cli) -> None:
    a = write_run(tmp_path / "runs" / "lstm-small", [(50, 3.0, 30.0), (100, 2.5, 60.0)])
    b = write_run(tmp_path / "runs" / "gru-small", [(50, 3.2, 24.0), (100, 2.7, 48.0)])
    out = tmp_path / "curves.png"
    result = invoke(cli, "plot", a, b, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"wrote {out}\n"
    width, height = read_png(out)
    assert 600 <= width <= 1600 and 400 <= height <= 1200
    fig = plot.runs_figure(plot.run_curves([a, b], "ppl", "step"), "ppl", "step")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lstm-small", "gru-small"]
    assert list(ax.lines[1].get_xdata()) == [50.0, 100.0]
    assert list(ax.lines[1].get_ydata()) == pytest.approx([math.exp(3.2), math.exp(2.7)])
    assert ax.get_ylabel() == "validation perplexity" and ax.get_yscale() == "log"


def test_plot_x_axes_and_metrics(tmp_path: Path) -> None:
    run = write_run(tmp_path / "char", [(50, 1.0, 30.0), (95, 0.9, 57.0)], bpc=True)
    (minutes,) = plot.run_curves([run], "loss", "minutes")
    assert minutes.x == [0.5, 0.95] and minutes.y == [1.0, 0.9]
    (tokens,) = plot.run_curves([run], "bpc", "tokens")
    assert tokens.x == [32000.0, 60800.0]
    assert tokens.y == pytest.approx([1 / math.log(2), 0.9 / math.log(2)])


def test_plot_leaves_a_gap_for_a_diverged_evaluation_and_tells_same_names_apart(
    tmp_path: Path, cli
) -> None:
    first = write_run(tmp_path / "a" / "run", [(50, 3.0, 30.0), (100, 2.5, 60.0)])
    second = write_run(tmp_path / "b" / "run", [(50, 3.0, 30.0), (100, 2.5, 60.0)])
    # The metrics file writes a figure that was not finite as null.
    metrics = second / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    lines[-1] |= {"loss": None, "ppl": None}
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    curves = plot.run_curves([first, second], "ppl", "step")
    assert [c.label for c in curves] == [str(first), str(second)]
    assert curves[1].y[0] == pytest.approx(math.exp(3.0)) and math.isnan(curves[1].y[1])
    result = invoke(cli, "plot", first, second, "--out", tmp_path / "c.png")
    assert result.exit_code == 0, result.stderr


def test_plot_refuses_runs_without_curves_by_name(tmp_path: Path, cli) -> None:
    good = write_run(tmp_path / "good", [(50, 3.0, 30.0)])
    empty = tmp_path / "empty"
    empty.mkdir()
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    # Training lines only: the run stopped before its first evaluation.
    (untrained / "metrics.jsonl").write_text(
        (good / "metrics.jsonl").read_text().splitlines(keepends=True)[0]
    )
    out = tmp_path / "c.png"
    cases = [
        # The metrics module's own message, which names the file.
        ((good, empty), str(empty / "metrics.jsonl")),
        ((untrained,), f"{untrained}: metrics.jsonl holds no validation evaluation"),
        ((good, tmp_path / "missing"), f"{tmp_path / 'missing'}: not a run directory"),
        ((good, "--metric", "bpc"), f"{good}: its evaluations have no bpc"),
        ((good, "--metric", "acc"), "--metric must be one of loss, ppl, bpc, bpb, got 'acc'"),
        ((good, "--x", "hours"), "--x must be one of step, minutes, tokens, got 'hours'"),
    ]
    for args, message in cases:
        result = invoke(cli, "plot", *args, "--out", out)
        assert result.exit_code == 2, (args, result.stdout)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not out.exists()


def test_plot_of_a_run_that_lmtrain_fit_wrote(tiny_files, tmp_path: Path, cli) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files, "train.max_steps=6").to_yaml())
    assert invoke(cli, "fit", path).exit_code == 0
    result = invoke(cli, "plot", tmp_path / "run", "--x", "tokens", "--out", tmp_path / "c.png")
    assert result.exit_code == 0, result.stderr
    (curve,) = plot.run_curves([tmp_path / "run"], "loss", "tokens")
    # 4 rows of 8 tokens a step, and the run's last evaluation is at its last step.
    assert curve.label == "run" and curve.x[-1] == 6 * 4 * 8


def _run_without_matplotlib(*args: str) -> subprocess.CompletedProcess[str]:
    # None in sys.modules makes every `import matplotlib...` raise ImportError, as when the
    # package is not installed.
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "import lmtrain, lmtrain.plot, lmtrain.diagnose; from lmtrain.cli import main; "
        "sys.argv = ['lmtrain', *sys.argv[1:]]; main()"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


@pytest.mark.slow
def test_without_matplotlib_lmtrain_works_and_drawing_says_what_to_install(
    tiny_files, tmp_path: Path
) -> None:
    helped = _run_without_matplotlib("--help")
    assert helped.returncode == 0 and "plot" in helped.stdout, helped.stderr
    run = write_run(tmp_path / "r", [(50, 3.0, 30.0)])
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config(tmp_path, tiny_files).to_yaml())
    for args in (
        ("plot", str(run), "--out", str(tmp_path / "p.png")),
        ("diagnose", "gradient-flow", str(config), "--out", str(tmp_path / "g.png")),
    ):
        result = _run_without_matplotlib(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            "error: drawing figures needs matplotlib, which is not installed: "
            "pip install 'lmtrain[plot]'\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.yaml",
        "r",
        "test.txt",
        "train.txt",
        "valid.txt",
    ]
