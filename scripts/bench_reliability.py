"""What the safety features cost: the non-finite step guard and the numbered checkpoints.

    python scripts/bench_reliability.py

1. Guard: one training step (forward, backward, clipping, Adam) of the reference LSTM shape
   (embedding 200, hidden 200, 2 layers, bptt 35, batch 20) on a character vocabulary, with and
   without the finiteness check lmtrain.training.step.Step makes before each optimiser
   step. The two variants alternate (A B A B ...) and medians are compared.
2. Checkpoints: time to save the same model with a WikiText-2-sized vocabulary (33,278) and its
   Adam state, with run.keep_last 0 (last.pt only) and 2 (a numbered checkpoint hard-linked as
   last.pt, then pruning), alternating. Files go to a temporary directory.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmtrain.checkpoint import LAST, Checkpoint, Progress
from lmtrain.config import ModelConfig, config_from_dict
from lmtrain.models import build_model, detach_state
from lmtrain.rundir import open_run


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def guard_cost(repeats: int = 20) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = ModelConfig(cell="lstm", embedding_dim=200, hidden_size=200, num_layers=2)
    model = build_model(cfg, 100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(1, 100, (36, 20))
    state = model.init_state(20)

    def step(check: bool) -> float:
        nonlocal state
        t0 = time.perf_counter()
        hidden, new_state = model(x[:-1], state)
        state = detach_state(new_state)
        nll = model.output.nll(hidden.reshape(-1, 200), x[1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        (nll / x[1:].numel()).backward()
        norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), math.inf)
        if not check or bool(torch.isfinite(nll) & torch.isfinite(norm)):
            opt.step()
        return time.perf_counter() - t0

    for _ in range(3):
        step(True)
    with_guard, without = [], []
    for _ in range(repeats):
        with_guard.append(step(True))
        without.append(step(False))
    return statistics.median(with_guard), statistics.median(without)


def save_cost(repeats: int = 8) -> tuple[float, float, int]:
    """Median seconds of one save with keep_last 0 and 2, through the run directory's own save
    (what Trainer.save calls: one write, hard-linked names, manifest, pruning)."""
    model_cfg = ModelConfig(cell="lstm", embedding_dim=200, hidden_size=200, num_layers=2)
    model = build_model(model_cfg, 33278)
    opt = torch.optim.Adam(model.parameters())
    model.output.nll(torch.randn(4, 200), torch.tensor([1, 2, 3, 4])).backward()
    opt.step()
    times: dict[int, list[float]] = {0: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="lmtrain-bench-") as tmp:
        cfg = config_from_dict({"run": {"dir": str(Path(tmp) / "run")}})
        with open_run(cfg, None, lambda _: None) as (run, _start):
            step = 0
            for _ in range(repeats):
                for keep in (0, 2):
                    step += 1
                    ck = Checkpoint(
                        config=cfg.to_dict(),
                        vocab={"kind": "word", "itos": ["<pad>"]},
                        model=model.state_dict(),
                        optimizer=opt.state_dict(),
                        schedule={"scale": 1.0, "bad_evals": 0},
                        progress=Progress(step=step),
                        rng={"torch": torch.get_rng_state()},
                        run_id=run.run_id,
                    )
                    t0 = time.perf_counter()
                    run.save_checkpoint(ck, best=False, keep_last=keep)
                    times[keep].append(time.perf_counter() - t0)
            size = (run.checkpoints / LAST).stat().st_size
    return statistics.median(times[0]), statistics.median(times[2]), size


def main() -> None:
    print(f"machine: {machine()}")
    guarded, plain = guard_cost()
    print(
        f"train step, reference LSTM shape, char vocabulary: with guard {guarded * 1e3:.1f} ms, "
        f"without {plain * 1e3:.1f} ms; ratio {guarded / plain:.3f} (1.000 = free)"
    )
    last_only, numbered, size = save_cost()
    print(
        f"checkpoint save, vocabulary 33,278 + Adam ({size / 1e6:.0f} MB): keep_last 0 "
        f"{last_only * 1e3:.0f} ms, keep_last 2 {numbered * 1e3:.0f} ms; ratio "
        f"{numbered / last_only:.2f}"
    )


if __name__ == "__main__":
    main()
