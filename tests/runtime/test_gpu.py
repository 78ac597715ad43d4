"""The GPU path: precisions, contiguous cuDNN weights, resume, eval parity, NCCL. Skipped on CPU.

Run on a machine with a GPU with `scripts/gpu_check.sh` (these tests, then the GPU benchmark).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from conftest import fit_with_losses
from lmtrain.checkpoint import load_model
from lmtrain.data import read_text
from lmtrain.evaluation.stream import evaluate_ids
from tests.conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _fit(tmp_path: Path, tiny_files: dict, *overrides: str, resume: str | None = None):
    cfg = tiny_config(tmp_path, tiny_files, "train.device=cuda", "train.max_steps=12", *overrides)
    with warnings.catch_warnings():
        # "RNN module weights are not part of single contiguous chunk of memory": must not happen.
        warnings.filterwarnings("error", message=".*contiguous chunk.*")
        return fit_with_losses(cfg, resume=resume, quiet=True, echo=lambda _: None)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_trains_on_the_gpu(
    tmp_path: Path, tiny_files: dict, precision: str
) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    notes: list[str] = []
    cfg = tiny_config(
        tmp_path,
        tiny_files,
        "train.device=cuda",
        "train.max_steps=12",
        f"train.precision={precision}",
    )
    result = fit_with_losses(cfg, quiet=True, echo=notes.append)
    assert not any("instead" in n for n in notes), notes  # cuDNN has every precision: no fallback
    assert len(result.losses) == 12 and all(math.isfinite(v) for v in result.losses.values())
    assert result.losses[12] < result.losses[1]
    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert ("grad_scaler" in ckpt) == (precision == "fp16")


def test_gpu_losses_match_cpu_in_fp32(tmp_path: Path, tiny_files: dict) -> None:
    gpu = _fit(tmp_path / "gpu", tiny_files).losses
    cpu = fit_with_losses(
        tiny_config(tmp_path / "cpu", tiny_files, "train.device=cpu", "train.max_steps=12"),
        quiet=True,
        echo=lambda _: None,
    ).losses
    for step in cpu:
        assert gpu[step] == pytest.approx(cpu[step], rel=1e-3), step


def test_resume_on_the_gpu_continues_exactly_without_weight_warnings(
    tmp_path: Path, tiny_files: dict
) -> None:
    straight = _fit(tmp_path / "a", tiny_files, "train.eval_every=6").losses
    _fit(tmp_path / "b", tiny_files, "train.eval_every=6", "train.max_steps=6")
    resumed = _fit(tmp_path / "b", tiny_files, "train.eval_every=6", resume="auto").losses
    for step in range(7, 13):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-4), step


def test_adaptive_softmax_eval_on_gpu_equals_cpu(tmp_path: Path, tiny_files: dict) -> None:
    _fit(tmp_path, tiny_files, "model.adaptive_softmax.cutoffs=[6,12]", "train.precision=bf16")
    results = {}
    for device in ("cpu", "cuda"):
        model, vocab, cfg = load_model(tmp_path / "run", device)
        ids = vocab.encode(read_text(str(tiny_files["test"]))).ids
        results[device] = evaluate_ids(model, ids, vocab.kind).loss
    assert results["cuda"] == pytest.approx(results["cpu"], rel=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL test needs 2 GPUs")
def test_two_gpus_with_nccl_match_one_gpu(tmp_path: Path, tiny_files: dict) -> None:
    from tests.runtime.test_distributed import _launch, _raw

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text(tiny_files["train"].read_text())
    (data / "valid.txt").write_text(tiny_files["valid"].read_text())
    raw = _raw(data, device="cuda")
    procs = _launch(raw, tmp_path / "ddp")
    assert [p.returncode for p in procs] == [0, 0], procs[0].stderr + procs[1].stderr
    ddp = json.loads((tmp_path / "ddp/losses-rank0.json").read_text())["losses"]
    from lmtrain.config import config_from_dict

    single_raw = {**raw, "run": {**raw["run"], "dir": str(tmp_path / "single")}}
    single = fit_with_losses(config_from_dict(single_raw), quiet=True, echo=lambda _: None)
    for step, loss in single.losses.items():
        assert ddp[str(step)] == pytest.approx(loss, rel=1e-4), step
