"""`lmtrain diagnose gradient-flow`: the measurement, its table, PNG and TensorBoard output."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch

from lmtrain.diagnose import gradient_flow
from lmtrain.models import build_model
from tests.conftest import invoke, tiny_config


def read_png(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, checking the signature and every chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and b"IDAT" in kinds and kinds[-1] == b"IEND"
    return size


def test_gradient_flow_without_recurrence_stops_after_one_step(tiny_files, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "model.cell=rnn_tanh", "model.num_layers=1")
    torch.manual_seed(0)
    model = build_model(cfg.model, 30)
    inputs = torch.randint(1, 30, (6, 3))
    targets = torch.randint(1, 30, (6, 3))
    norms = gradient_flow(model, inputs, targets)
    assert len(norms) == 6 and norms[0] > 0 and norms[1] > 0
    with torch.no_grad():
        model.rnn.rnn.weight_hh_l0.zero_()  # h_t no longer depends on h_{t-1}
    norms = gradient_flow(model, inputs, targets)
    assert norms[0] > 0 and norms[1:] == [0.0] * 5
    assert model.training  # the mode is restored


def test_gradient_flow_restores_the_mode_when_it_fails(tiny_files, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "model.cell=rnn_tanh", "model.num_layers=1")
    model = build_model(cfg.model, 30)
    model.train()
    with pytest.raises(IndexError):  # an input id outside the 30-token vocabulary
        gradient_flow(model, torch.full((4, 2), 99), torch.randint(1, 30, (4, 2)))
    assert model.training


def test_gradient_flow_with_identity_linear_recurrence_is_flat(tiny_files, tmp_path: Path) -> None:
    # IRNN at init (the exact identity, gain 1), with inputs that keep the ReLU in its linear
    # part: dL/dh_t is the same at every distance, the property Le et al. 2015 designed it for.
    cfg = tiny_config(
        tmp_path,
        tiny_files,
        "model.cell=rnn_relu",
        "model.init=identity",
        "model.init_gain=1.0",
        "model.num_layers=1",
    )
    model = build_model(cfg.model, 30)
    with torch.no_grad():
        model.embedding.weight.abs_()
        model.rnn.rnn.weight_ih_l0.abs_()
    norms = gradient_flow(model, torch.randint(1, 30, (8, 2)), torch.randint(1, 30, (8, 2)))
    torch.testing.assert_close(torch.tensor(norms), torch.full((8,), norms[0]))


def test_cli_writes_png_and_tensorboard_for_several_cells(tiny_files, tmp_path: Path, cli) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files).to_yaml())
    out = tmp_path / "flow" / "gf.png"
    args = ("--cell", "rnn_tanh", "--cell", "lstm", "--cell", "rnn_manual", "--steps", "12")
    result = invoke(cli, "diagnose", "gradient-flow", path, *args, "--out", out)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["steps", "back", "rnn_tanh", "lstm", "rnn_manual"]
    rows = {int(line.split()[0]): [float(v) for v in line.split()[1:]] for line in lines[1:6]}
    assert sorted(rows) == [0, 1, 2, 5, 10]
    # rnn_manual and rnn_tanh start from the same seeded weights: the same curve.
    assert all(r[0] == r[2] for r in rows.values())
    assert rows[10][0] < rows[0][0]  # the tanh RNN's gradient fades with distance
    width, height = read_png(out)
    assert 600 <= width <= 1600 and 400 <= height <= 1200
    events = list((tmp_path / "flow" / "gf-tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_cli_on_a_trained_run_and_its_errors(tiny_files, tmp_path: Path, cli) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files, "train.max_steps=3").to_yaml())
    assert invoke(cli, "fit", path).exit_code == 0
    run = tmp_path / "run"
    result = invoke(
        cli, "diagnose", "gradient-flow", run, "--steps", "5", "--out", tmp_path / "g.png"
    )
    assert result.exit_code == 0, result.stderr
    assert "lstm (trained)" in result.stdout and (tmp_path / "g.png").exists()
    bad = invoke(cli, "diagnose", "gradient-flow", run, "--cell", "gru")
    assert bad.exit_code == 2
    assert "--cell and overrides apply to a config file" in bad.stderr
    long = invoke(cli, "diagnose", "gradient-flow", run, "--steps", "100000")
    assert long.exit_code == 2 and "lower --steps" in long.stderr
    assert "Traceback" not in bad.stderr + long.stderr


def test_cli_refuses_an_unknown_cell_by_name(tiny_files, tmp_path: Path, cli) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files).to_yaml())
    result = invoke(
        cli, "diagnose", "gradient-flow", path, "--cell", "lstn", "--out", tmp_path / "g.png"
    )
    assert result.exit_code == 2
    assert (
        "model.cell: expected one of" in result.stderr and "did you mean 'lstm'?" in result.stderr
    )
    assert not (tmp_path / "g.png").exists()


def test_tensorboard_onto_an_existing_file_is_a_clear_error(
    tiny_files, tmp_path: Path, cli
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files).to_yaml())
    taken = tmp_path / "scalars"
    taken.write_text("my file\n")
    out = tmp_path / "g.png"
    args = ("--cell", "lstm", "--steps", "4", "--out", out)
    result = invoke(cli, "diagnose", "gradient-flow", path, *args, "--tensorboard", taken)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{taken}: exists and is not a folder" in result.stderr
    assert "Give --tensorboard a new or existing folder" in result.stderr
    assert taken.read_text() == "my file\n" and not out.exists()  # refused before any work
    (tmp_path / "g-tb").write_text("a file where the default folder goes\n")
    result = invoke(cli, "diagnose", "gradient-flow", path, *args)
    assert (
        result.exit_code == 2
        and f"{tmp_path / 'g-tb'}: exists and is not a folder" in result.stderr
    )
