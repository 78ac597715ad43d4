"""Forward+backward tokens/s of the layer-norm LSTM against nn.LSTM of the same size, same run.

    python scripts/bench_cells.py [--steps 35] [--batch 20] [--size 200] [--layers 2] [--repeats 5] [--rounds 3] [--threads N]

The default shape is the reference word_language_model's (bptt 35, batch 20, 2 layers of 200).
Also times the custom LSTM with no feature on (the cost of the Python step loop alone) and the
hand-written BPTT RNN against nn.RNN. On a machine with a CUDA GPU the same table is printed for
the GPU as well. Ratios are against nn.LSTM (nn.RNN for rnn_manual) measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch

from lmtrain.config import ModelConfig
from lmtrain.models.cells import CustomRecurrent
from lmtrain.models.lm import TorchRecurrent


def make_step(module: torch.nn.Module, x: torch.Tensor, state: tuple) -> Callable[[], None]:
    def once() -> None:
        out, final = module(x, state)
        (out.sum() + sum(f.sum() for f in final)).backward()

    return once


def time_block(once: Callable[[], None], repeats: int, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    sync()
    return (time.perf_counter() - t0) / repeats


def table(device: torch.device, args: argparse.Namespace) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x = torch.randn(args.steps, args.batch, args.size, device=device)

    def cfg(**kw: object) -> ModelConfig:
        return ModelConfig(
            embedding_dim=args.size, hidden_size=args.size, num_layers=args.layers, **kw
        )  # type: ignore[arg-type]

    def state(parts: int) -> tuple:
        return tuple(
            torch.zeros(args.layers, args.batch, args.size, device=device) for _ in range(parts)
        )

    rows = [
        ("nn.LSTM", TorchRecurrent(cfg(cell="lstm")), 2, "nn.LSTM"),
        ("custom LSTM, no feature", CustomRecurrent(cfg(cell="lstm")), 2, "nn.LSTM"),
        (
            "LN-LSTM (model.layer_norm)",
            CustomRecurrent(cfg(cell="lstm", layer_norm=True)),
            2,
            "nn.LSTM",
        ),
        ("nn.RNN tanh", TorchRecurrent(cfg(cell="rnn_tanh")), 1, "nn.RNN tanh"),
        (
            "rnn_manual (hand-written BPTT)",
            CustomRecurrent(cfg(cell="rnn_manual")),
            1,
            "nn.RNN tanh",
        ),
    ]
    steps = {}
    for name, module, parts, _ in rows:
        module.to(device).train()
        steps[name] = make_step(module, x, state(parts))
        for _ in range(3):  # warm-up: allocator, oneDNN primitive caches, CUDA kernels
            steps[name]()
    # Rounds interleave the rows, and each keeps its best block: on a shared machine a burst of
    # load then slows every row alike instead of whichever happened to run during it.
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.rounds):
        for name, once in steps.items():
            best[name] = min(best[name], time_block(once, args.repeats, sync))
    speeds = {name: args.steps * args.batch / sec for name, sec in best.items()}
    print(
        f"\n{device.type}: input ({args.steps}, {args.batch}, {args.size}), "
        f"{args.layers} layers of {args.size}, forward+backward, best of {args.rounds} rounds"
    )
    for name, _, _, base in rows:
        ratio = speeds[name] / speeds[base]
        print(f"  {name:32s} {speeds[name]:12,.0f} tokens/s   {ratio:5.2f}x {base}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    table(torch.device("cpu"), args)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
        table(torch.device("cuda"), args)


if __name__ == "__main__":
    main()
