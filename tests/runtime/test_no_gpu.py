"""A GPU asked for where none exists: fit and eval stop with a clear message. Runs on a
machine without a CUDA GPU; the GPU path itself is in tests/runtime/test_gpu.py."""

from __future__ import annotations

import pytest
import torch

from conftest import invoke, tiny_config, write_config
from lmtrain.training import fit


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_asked_for_where_none_exists(tmp_path, tiny_files, cli):
    config = write_config(tmp_path, tiny_files)
    result = invoke(cli, "fit", config, "train.device=cuda")
    assert result.exit_code == 2
    assert "train.device is 'cuda' but no CUDA GPU is available here" in result.stderr
    assert not (tmp_path / "run").exists()
    fit(tiny_config(tmp_path, tiny_files, "train.max_steps=1"), quiet=True)
    result = invoke(cli, "eval", tmp_path / "run", "--device", "cuda:1")
    assert result.exit_code == 2 and "no CUDA GPU" in result.stderr
