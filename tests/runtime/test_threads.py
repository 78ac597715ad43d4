"""train.num_threads: validated, defaulting to one thread per physical core, applied by fit()."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import invoke, tiny_config
from lmtrain.errors import ConfigError
from lmtrain.runtime.threads import configure_threads, describe_machine, physical_cores
from lmtrain.training import fit


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_physical_cores_is_between_one_and_logical_cpus():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_configure_threads_sets_torch_threads(restore_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_threads(1) == 1
    assert torch.get_num_threads() == 1
    assert configure_threads(None) == physical_cores()
    assert torch.get_num_threads() == physical_cores()


def test_default_keeps_the_thread_count_the_environment_chose(restore_threads, monkeypatch):
    # torchrun sets OMP_NUM_THREADS=1 per process; the default must not undo that.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert configure_threads(None) == 1
    assert torch.get_num_threads() == 1
    assert configure_threads(2) == 2  # an explicit train.num_threads still wins


def test_zero_threads_is_refused_by_name(tmp_path: Path, tiny_files):
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, tiny_files, "train.num_threads=0")
    assert "train.num_threads: must be >= 1 or null, got 0" in str(e.value)


def test_fit_applies_num_threads(tmp_path: Path, tiny_files, restore_threads):
    torch.set_num_threads(2)
    cfg = tiny_config(tmp_path, tiny_files, "train.num_threads=1", "train.max_steps=2")
    fit(cfg, quiet=True, echo=lambda _: None)
    assert torch.get_num_threads() == 1


def test_cli_rejects_negative_threads_with_exit_code_2(tmp_path: Path, tiny_files, cli):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train: {tiny_files['train']}\n", encoding="utf-8")
    result = invoke(cli, "fit", config, "train.num_threads=-3", f"run.dir={tmp_path / 'r'}")
    assert result.exit_code == 2
    assert "train.num_threads" in result.output
    assert not (tmp_path / "r").exists()


def test_machine_label_names_cores_torch_and_threads(restore_threads):
    configure_threads(1)
    label = describe_machine()
    assert f"{physical_cores()} physical cores" in label
    assert f"torch {torch.__version__}, 1 threads" in label
