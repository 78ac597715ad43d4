"""An export folder read by eval, sample and score is checked as a checkpoint is: weights with
NaN or infinity are refused naming the tensor, a file changed since the export (its sha256 is in
the manifest) is refused, a special file is never waited on, and random damage to any of its
files is a clear refusal (exit 2) or a load of exactly what was exported."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.errors import LmtrainError
from lmtrain.export import export_run, load_export
from lmtrain.training import fit


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export of a tiny trained word model with tied weights."""
    tmp = tmp_path_factory.mktemp("export-trust")
    cfg = tiny_config(tmp, write_tiny_files(tmp), "model.tie_weights=true", "train.max_steps=4")
    return export_run(fit(cfg, quiet=True, echo=lambda _: None).run_dir, tmp / "export").out


def _copy(exported: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(exported, out)
    return out


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_non_finite_export_weights_are_refused_naming_the_tensor(exported, tmp_path, cli, value):
    out = _copy(exported, tmp_path)
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    meta = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    state = load(data)
    name = sorted(state)[-1]
    state[name].view(-1)[2] = value
    weights.write_bytes(save(state, metadata=meta))
    before = _hashes(out)
    for args in (("eval",), ("sample", "--max-tokens", "5"), ("score", "the cat sat")):
        r = invoke(cli, args[0], out, *args[1:])
        assert r.exit_code == 2, (args, r.output)
        message = " ".join(r.stderr.split())
        assert f"{weights}: its weights are not finite: NaN or infinity in '{name}'" in message
        assert "(1 of " in message and "Export an earlier checkpoint" in message
        assert "Traceback" not in r.output and "ppl" not in r.stdout
    assert _hashes(out) == before


def test_a_weight_changed_since_the_export_is_refused(exported, tmp_path, cli) -> None:
    out = _copy(exported, tmp_path)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # a low bit of the last weight: still finite, still loads, another number
    weights.write_bytes(bytes(data))
    r = invoke(cli, "eval", out)
    assert r.exit_code == 2, r.output
    assert "model.safetensors: damaged or changed since it was exported" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("name", [".lmtrain-export.json", "config.json", "vocab.json"])
def test_a_fifo_in_an_export_is_refused_or_skipped_never_waited_on(
    exported, tmp_path, name
) -> None:
    out = _copy(exported, tmp_path)
    (out / name).unlink()
    os.mkfifo(out / name)

    def hung(*_: object) -> None:
        pytest.fail(f"reading {name} waited for a writer")  # not an OSError: nothing catches it

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        if name == ".lmtrain-export.json":
            load_export(out)  # no readable manifest: an export of an older lmtrain, unchecked
        else:
            with pytest.raises(LmtrainError, match=f"{name} is missing"):
                load_export(out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _damage(data: bytes, flips: list[tuple[float, int]], cut: float | None) -> bytes:
    out = bytearray(data)
    for where, bit in flips:
        out[int(where * (len(out) - 1))] ^= 1 << bit
    return bytes(out[: int(cut * len(out))] if cut is not None else out)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(
        ["model.safetensors", "config.json", "vocab.json", ".lmtrain-export.json", "README.md"]
    ),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=3),
    cut=st.none() | st.floats(0, 1, exclude_max=True),
)
def test_random_damage_to_an_export_is_refused_or_loads_exactly_the_export(
    exported, tmp_path, name, flips, cut
) -> None:
    out = _copy(exported, tmp_path)
    (out / name).write_bytes(_damage((exported / name).read_bytes(), flips, cut))
    before = _hashes(out)
    try:
        model, vocab, cfg = load_export(out)
    except LmtrainError as e:
        assert e.exit_code == 2 and str(e).startswith(str(out)), e
    else:
        ref_model, ref_vocab, ref_cfg = load_export(exported)
        assert cfg == ref_cfg and vocab.itos == ref_vocab.itos
        ref = ref_model.state_dict()
        assert all(torch.equal(t, ref[k]) for k, t in model.state_dict().items())
    assert _hashes(out) == before  # loading never changes a file


def test_a_damaged_export_manifest_loads_unchecked_and_is_never_exported_over(
    exported, tmp_path, cli
) -> None:
    out = _copy(exported, tmp_path)
    (out / ".lmtrain-export.json").write_text("{not json")
    model, vocab, _ = load_export(out)  # as an export of an lmtrain that kept no manifest
    ref, ref_vocab, _ = load_export(exported)
    assert vocab.itos == ref_vocab.itos
    assert all(torch.equal(t, ref.state_dict()[k]) for k, t in model.state_dict().items())
    before = _hashes(out)
    run = exported.parent / "run"
    r = invoke(cli, "export", run, "--out", out)
    assert r.exit_code == 2, r.output
    assert "not a previous export" in r.stderr and ".lmtrain-export.json" in r.stderr
    assert _hashes(out) == before
