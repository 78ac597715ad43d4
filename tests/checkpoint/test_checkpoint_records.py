"""A checkpoint and a run manifest read by the record reader: weights with NaN or infinity are
refused before any work, and random damage to either file is a clear refusal (exit 2) or a load
of exactly what was written, never a traceback and never a different number."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.checkpoint import load_checkpoint
from lmtrain.errors import LmtrainError
from lmtrain.rundir.manifest import Manifest
from lmtrain.training import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 8-step run (checkpoints at steps 4 and 8); its config is RUN/../config.yaml."""
    base = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(base, write_tiny_files(base), "train.max_steps=8", "train.eval_every=4")
    (base / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    fit(cfg, quiet=True)
    return base / "run"


def _hashes(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_before_any_work(value, run, tmp_path, cli):
    raw = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    name = sorted(raw["model"])[-1]
    raw["model"][name].view(-1)[1] = value
    bad = tmp_path / "diverged.pt"
    torch.save(raw, bad)
    before = _hashes(run)
    commands = (
        ("eval", bad),
        ("sample", bad),
        ("score", bad, "the cat sat"),
        ("export", bad, "--out", tmp_path / "export"),
        ("fit", run.parent / "config.yaml", "train.max_steps=12", "--resume", bad),
    )
    for args in commands:
        result = invoke(cli, *args)
        assert result.exit_code == 2, (args, result.output)
        message = " ".join(result.stderr.split())
        assert f"{bad}: its weights are not finite: NaN or infinity in 'model[{name}]'" in message
        assert "(1 of " in message and "Resume from an earlier checkpoint" in message, message
        assert "Traceback" not in result.output and "ppl" not in result.stdout
    assert not (tmp_path / "export").exists()
    assert _hashes(run) == before


def _same(a: Any, b: Any) -> bool:
    """Equal down to every tensor's dtype, shape and bits (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b or (a != a and b != b)


def _damage(data: bytes, flips: list[tuple[float, int]], cut: float | None) -> bytes:
    out = bytearray(data)
    for where, bit in flips:
        out[int(where * (len(out) - 1))] ^= 1 << bit
    return bytes(out[: int(cut * len(out))] if cut is not None else out)


_DAMAGE = {
    "flips": st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=3),
    "cut": st.none() | st.floats(0, 1, exclude_max=True),
}
_FEW = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FEW
@given(**_DAMAGE)
def test_random_damage_to_a_checkpoint_is_refused_or_changes_nothing(run, tmp_path, flips, cut):
    original = run / "checkpoints" / "last.pt"
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(_damage(original.read_bytes(), flips, cut))
    try:
        ck = load_checkpoint(damaged)
    except LmtrainError as e:
        assert e.exit_code == 2 and str(e).startswith(f"{damaged}: "), e
        return
    # It loaded: then it must be exactly what was written (the damage hit no byte that counts).
    assert _same(ck.to_dict(), load_checkpoint(original).to_dict())


@_FEW
@given(**_DAMAGE)
def test_random_damage_to_the_manifest_is_refused_or_still_a_manifest(run, tmp_path, flips, cut):
    copy = tmp_path / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    (copy / ".lmtrain").mkdir(parents=True)
    text = (run / ".lmtrain" / "manifest.json").read_bytes()
    (copy / ".lmtrain" / "manifest.json").write_bytes(_damage(text, flips, cut))
    try:
        manifest = Manifest.read(copy)
    except LmtrainError as e:
        assert e.exit_code == 2 and "manifest.json is damaged" in str(e), e
        return
    # It read: every path it names stays inside the run, every step is a count.
    assert manifest is not None
    for rel, entry in manifest.files.items():
        assert not rel.startswith("/") and ".." not in rel.split("/")
        assert all(v is None or (type(v) is int and v >= 0) for v in entry.values())


def test_a_checkpoint_whose_bits_changed_in_a_weight_is_refused(run, tmp_path):
    # torch.load has no checksum: this flip loaded as a different weight before.
    raw = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    data = bytearray((run / "checkpoints" / "last.pt").read_bytes())
    weight = raw["model"]["embedding.weight"]
    offset = bytes(data).find(weight.numpy().tobytes()[:64])
    assert offset > 0
    data[offset + 5] ^= 0x10
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(LmtrainError, match="does not match its checksum"):
        load_checkpoint(bad)


def test_hand_edited_manifest_names_every_problem(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run / ".lmtrain", copy / ".lmtrain")
    manifest = json.loads((copy / ".lmtrain" / "manifest.json").read_text())
    manifest["files"]["checkpoints/last.pt"]["step"] = -1
    manifest["pinned"] = ["../outside.pt"]
    manifest["extra"] = 1
    (copy / ".lmtrain" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LmtrainError) as e:
        Manifest.read(copy)
    message = str(e.value)
    assert (
        "'files['checkpoints/last.pt'].step' should be a whole number >= 0, not int -1" in message
    )
    assert "'pinned[0]': '../outside.pt' is not a path inside the run directory" in message
    assert "'extra': unknown field" in message


def test_a_fifo_where_the_manifest_belongs_is_damage_not_a_hang(run, tmp_path):
    copy = tmp_path / "copy"
    (copy / ".lmtrain").mkdir(parents=True)
    os.mkfifo(copy / ".lmtrain" / "manifest.json")
    with pytest.raises(LmtrainError, match="manifest.json is damaged .*named pipe"):
        Manifest.read(copy)
