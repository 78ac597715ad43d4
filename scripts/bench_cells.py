"""Forward+backward tokens/s of the hand-built cells against torch's layers, same run.

    python scripts/bench_cells.py [--steps 35] [--batch 20] [--size 200] [--layers 2] [--repeats 5] [--rounds 3] [--threads N] [--windows 35 140 512] [--no-step]

The default shape is the reference word_language_model's (bptt 35, batch 20, 2 layers of 200).

1. The layer-norm LSTM against nn.LSTM of the same size; also the custom LSTM with no feature on
   (the cost of the Python step loop alone) and the hand-written BPTT RNN against nn.RNN.
   Ratios are against nn.LSTM (nn.RNN for rnn_manual) measured in the same run.
2. One layer of each cell whose gates read the inputs only (qrnn with windows 2 and 1, mingru,
   minlstm) against nn.LSTM and nn.GRU of the same hidden size and of the same parameter count
   (the hidden size whose layer has the cell's parameters, input size unchanged), at batch and
   size as above and each window of --windows (the first is the reference shape's). Each row
   also gives the share of the fp32 matmul peak (a 1024^3 product timed in this run) that its
   matrix products reach: 6 x rows x columns of its weight matrices per token, forward and
   backward. Goal on a CPU: >= 3x nn.LSTM of the same hidden size.
3. The linear scan those cells run (lmtrain/models/scan.py) alone, forward+backward over the
   state of the reference shape: its sequential loop, its doubling form, and the log-space form
   of Feng et al. 2024 (cumulative sum of log a, logcumsumexp; it needs b > 0), at windows of 35
   to 2,048 steps, which is how the CPU's form was chosen.
4. A whole training step as `lmtrain fit` runs it (Trainer.train_epoch: forward, loss, backward,
   clipping, Adam) on the WikiText-2 CPU recipe (lmtrain/recipes/wikitext2_word_cpu.yaml) with
   model.cell set to each cell, everything else as the recipe says; on $LMTRAIN_DATA's
   wikitext-2 when it is there, else on Zipf-distributed ids over a vocabulary of the same
   size. Goal: >= 2x the LSTM recipe's step. --no-step skips it.

Rows alternate in rounds and each keeps its best block, so that a burst of load on a shared
machine slows every row alike. On a machine whose cores other work shares, --threads 1 gives
steadier figures: a multi-threaded kernel waits for its slowest thread, and with a busy core
that is many times its single-thread time. On a machine with a CUDA GPU table 1 is printed for
the GPU too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (Trainer without a run directory, the interleaved timing)

from lmtrain.config import ModelConfig, load_config  # noqa: E402
from lmtrain.data.tokenizers import Settings, build  # noqa: E402
from lmtrain.models.cells import CustomRecurrent, state_widths  # noqa: E402
from lmtrain.models.lm import TorchRecurrent  # noqa: E402
from lmtrain.models.scan import LinearScan  # noqa: E402
from lmtrain.runtime.threads import describe_machine  # noqa: E402
from lmtrain.training.data import Corpus, prepare_data  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "lmtrain/recipes/wikitext2_word_cpu.yaml"
DATA = Path(os.environ.get("LMTRAIN_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))
PARALLEL = {  # label: the settings of one layer of it
    "qrnn (window 2)": {"cell": "qrnn"},
    "qrnn (window 1)": {"cell": "qrnn", "qrnn_window": 1},
    "mingru": {"cell": "mingru"},
    "minlstm": {"cell": "minlstm"},
}


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


def best_times(
    steps: dict[str, Callable[[], None]], rounds: int, repeats: dict[str, int], sync
) -> dict[str, float]:
    """Seconds per call of each, the best block of `rounds` rounds that alternate the rows."""
    for once in steps.values():
        for _ in range(3):  # warm-up: allocator, oneDNN primitive caches, CUDA kernels
            once()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, once in steps.items():
            best[name] = min(best[name], time_block(once, repeats[name], sync))
    return best


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
    best = best_times(steps, args.rounds, dict.fromkeys(steps, args.repeats), sync)
    speeds = {name: args.steps * args.batch / sec for name, sec in best.items()}
    print(
        f"\n1. {device.type}: input ({args.steps}, {args.batch}, {args.size}), "
        f"{args.layers} layers of {args.size}, forward+backward, best of {args.rounds} rounds"
    )
    for name, _, _, base in rows:
        ratio = speeds[name] / speeds[base]
        print(f"  {name:32s} {speeds[name]:12,.0f} tokens/s   {ratio:5.2f}x {base}")


# -- 2. one layer of each parallel cell ----------------------------------------------------------


def matmul_peak() -> float:
    """GFLOP/s of a 1024^3 fp32 product: the best of 7 blocks of 5, as the rows keep their best
    block (a median taken under a burst of load would put rows above 100% of it)."""
    a, b, c = torch.randn(1024, 1024), torch.randn(1024, 1024), torch.empty(1024, 1024)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b, out=c)
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * 1024**3 / best / 1e9


def matching_hidden(cell: str, inputs: int, parameters: int) -> int:
    """The hidden size of an nn.LSTM / nn.GRU layer with about `parameters` parameters:
    G H (inputs + H + 2) = parameters, solved for H (G = 4 or 3 gate blocks)."""
    gates = 4 if cell == "lstm" else 3
    b = inputs + 2
    return max(1, round((-b + math.sqrt(b * b + 4 * parameters / gates)) / 2))


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matmul_flops(module: torch.nn.Module) -> int:
    """Matrix-product FLOPs per token of a layer, forward and backward: 2 per weight-matrix
    entry for the product and 4 for the two gradient products (input and weights)."""
    return 6 * sum(p.numel() for p in module.parameters() if p.dim() == 2)


def parallel_table(args: argparse.Namespace, peak: float) -> None:
    print(
        f"\n2. cpu: one layer, input size {args.size}, batch {args.batch}, forward+backward; "
        "ratios against nn.LSTM / nn.GRU of the same hidden size (H) and of the same parameter "
        f"count (P); the share of the fp32 matmul peak ({peak:.1f} GFLOP/s) its products reach"
    )
    for window in args.windows:
        parallel_window(args, window, peak)


def one_layer(size: int, **kw: object) -> tuple[torch.nn.Module, ModelConfig]:
    c = ModelConfig(embedding_dim=size, hidden_size=size, num_layers=1, **kw)  # type: ignore[arg-type]
    stack = TorchRecurrent(c) if c.cell in ("lstm", "gru") else CustomRecurrent(c)
    return stack.train(), c


def parallel_window(args: argparse.Namespace, window: int, peak: float) -> None:
    size = args.size
    torch.manual_seed(0)
    x = torch.randn(window, args.batch, size)
    layers = {"nn.LSTM": one_layer(size, cell="lstm"), "nn.GRU": one_layer(size, cell="gru")}
    matched = {}
    for label, kw in PARALLEL.items():
        layers[label] = one_layer(size, **kw)
        for base in ("lstm", "gru"):
            h = matching_hidden(base, size, parameters(layers[label][0]))
            name = f"nn.{base.upper()} {h} (P of {label})"
            matched[label, base] = name
            c = ModelConfig(cell=base, embedding_dim=size, hidden_size=h, num_layers=1)
            layers[name] = (TorchRecurrent(c).train(), c)
    steps = {}
    for name, (module, c) in layers.items():
        state = tuple(torch.zeros(1, args.batch, w) for w in state_widths(c))
        steps[name] = make_step(module, x, state)
    repeats = {n: max(1, round(700 * args.repeats / (window * args.batch))) for n in steps}
    best = best_times(steps, args.rounds, repeats, lambda: None)
    speed = {n: window * args.batch / s for n, s in best.items()}
    print(f"  window {window}:")
    for name, (module, _) in layers.items():
        share = speed[name] * matmul_flops(module) / 1e9 / peak
        line = f"    {name:34s} {speed[name]:10,.0f} tokens/s  {share:5.0%} of peak"
        if name in PARALLEL:
            lstm_p, gru_p = matched[name, "lstm"], matched[name, "gru"]
            line += (
                f"   {speed[name] / speed['nn.LSTM']:5.2f}x nn.LSTM (H)"
                f"  {speed[name] / speed['nn.GRU']:5.2f}x nn.GRU (H)"
                f"  {speed[name] / speed[lstm_p]:5.2f}x nn.LSTM (P)"
                f"  {speed[name] / speed[gru_p]:5.2f}x nn.GRU (P)"
            )
        print(line)


# -- 3. the scan alone ---------------------------------------------------------------------------


def log_space_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Heinsen 2023 / Feng et al. 2024: h_t = A_t (h_0 + sum_s b_s / A_s) in log space, A the
    running product of a (b > 0); its backward is autograd's."""
    log_a = torch.cumsum(a.log(), 0)
    h = torch.exp(log_a + torch.logcumsumexp(b.log() - log_a, 0))
    return h + torch.exp(log_a) * h0


SCANS: dict[str, Callable[..., torch.Tensor]] = {
    "sequential": lambda a, b, h: LinearScan.apply(a, b, h, "sequential"),
    "doubling": lambda a, b, h: LinearScan.apply(a, b, h, "doubling"),
    "log-space": log_space_scan,
}


def scan_table(args: argparse.Namespace) -> None:
    print(
        f"\n3. cpu: the linear scan h_t = a_t h_(t-1) + b_t alone, state ({args.batch}, "
        f"{args.size}), forward+backward, tokens/s (ratio to the sequential loop)"
    )
    for window in (35, 140, 512, 2048):
        torch.manual_seed(0)
        shape = (window, args.batch, args.size)
        a = (0.5 + 0.5 * torch.rand(shape)).requires_grad_()
        b = (0.1 + torch.rand(shape)).requires_grad_()  # positive: the log-space form needs it
        h0 = torch.rand(args.batch, args.size).requires_grad_()
        steps = {name: scan_step(scan, a, b, h0) for name, scan in SCANS.items()}
        repeats = dict.fromkeys(steps, max(1, round(1400 / window)))
        best = best_times(steps, args.rounds, repeats, lambda: None)
        seq = best["sequential"]
        print(
            f"  window {window:5d}: "
            + "   ".join(
                f"{n} {window * args.batch / t:10,.0f} ({seq / t:4.2f}x)" for n, t in best.items()
            )
        )


def scan_step(
    scan: Callable[..., torch.Tensor], a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor
) -> Callable[[], None]:
    return lambda: scan(a, b, h0).sum().backward()


# -- 4. a whole training step ----------------------------------------------------------------------


def zipf_corpus(vocab_size: int, tokens: int) -> Corpus:
    """A word vocabulary of `vocab_size` entries and ids drawn as 1 / rank, the frequency law
    of text, so that the adaptive softmax's clusters see the shares real words give them."""
    words = " ".join(f"w{i}" for i in range(vocab_size - 3))  # the specials make up the rest
    vocab = build("word", words, Settings())
    weights = 1.0 / torch.arange(1, len(vocab), dtype=torch.float64)
    ids = 1 + torch.multinomial(weights, tokens, replacement=True, generator=torch.Generator())
    return Corpus(vocab, ids, None)


def step_table(args: argparse.Namespace) -> None:
    train = DATA / "wikitext-2/train.txt"
    overrides = [f"data.train={train}", "data.valid=null", "data.test=null", "train.device=cpu"]
    cfg = load_config(RECIPE, overrides)
    if train.exists():
        corpus, source = prepare_data(cfg), f"WikiText-2 ({train})"
    else:
        corpus = zipf_corpus(33278, 300_000)
        source = "Zipf-distributed ids (no wikitext-2 under $LMTRAIN_DATA)"
    m, t = cfg.model, cfg.train
    print(
        f"\n4. cpu: a training step of the WikiText-2 recipe ({m.num_layers}x{m.hidden_size}, "
        f"embedding {m.embedding_dim}, batch {t.batch_size}, bptt {t.bptt}, adaptive softmax "
        f"{m.adaptive_softmax.cutoffs}, {t.optimizer}) on {source}, vocabulary "
        f"{len(corpus.vocab):,}; Trainer.train_epoch, best of {args.rounds} rounds of "
        f"{args.train_steps} steps"
    )
    cells = {"lstm": {}, **{label: kw for label, kw in PARALLEL.items()}}
    runs = {}
    for label, kw in cells.items():
        model = dataclasses.replace(m, **kw) if kw else m
        trainer = bench_train.make_trainer(dataclasses.replace(cfg, model=model), corpus)
        runs[label] = lambda n, trainer=trainer: bench_train.run_trainer(trainer, n)
    for run in runs.values():
        run(1)  # warm-up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for label, run in runs.items():
            best[label] = min(best[label], run(args.train_steps) / args.train_steps)
    tokens = t.batch_size * t.bptt
    for label, sec in best.items():
        print(f"  {label:20s} {tokens / sec:10,.0f} tokens/s   {best['lstm'] / sec:5.2f}x lstm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default")
    parser.add_argument("--windows", type=int, nargs="+", default=[35, 140, 512])
    parser.add_argument("--train-steps", type=int, default=3, help="steps per round in table 4")
    parser.add_argument("--no-step", action="store_true", help="skip table 4")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine()}")
    print(
        f"load average at start: {os.getloadavg()[0]:.1f} (above the core count: a shared machine)"
    )
    peak = matmul_peak()
    table(torch.device("cpu"), args)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
        table(torch.device("cuda"), args)
    parallel_table(args, peak)
    scan_table(args)
    if not args.no_step:
        step_table(args)
    print(
        f"\nfp32 matmul peak (1024^3, best block): {peak:.1f} GFLOP/s at the start, "
        f"{matmul_peak():.1f} at the end"
    )


if __name__ == "__main__":
    main()
