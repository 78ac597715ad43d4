"""Training throughput on this CPU: lmtrain against plain PyTorch loops, measured in one run.

    python scripts/bench_train.py     (also run by `make bench`; ~130 s of CPU time, plus (c))
    python scripts/bench_train.py --no-bf16             (a) and (b) only
    python scripts/bench_train.py --rounds 1 --steps 1  (a smoke run: the figures mean nothing)

(a) Loop overhead: lmtrain's Trainer.train_epoch (the path `lmtrain fit` runs) against a plain
    hand-written loop over the same model object and the same batches. Goal: >= 95%.
(b) The reference shape of pytorch/examples word_language_model (embedding 200, hidden 200,
    2 LSTM layers, dropout 0.2, bptt 35, batch 20, WikiText-2 vocabulary, full softmax, SGD lr 20,
    clip 0.25): lmtrain against the classic loop (nn.Embedding -> nn.LSTM -> nn.Linear ->
    F.cross_entropy, SGD, clip_grad_norm_, fresh tensors each step). Goal: >= 1.5x. Also the
    GFLOP/s lmtrain achieves (LSTM and decoder matrix products, forward and backward; the
    embedding lookup is not counted) against a 1024^3 fp32 matmul measured here. Goal: >= 70%.
(c) bf16 against fp32: what `train.precision: auto` picks on this machine and why; the 1024^3
    matmul rate in fp32 and in bf16; on the reference shape, lmtrain with train.precision=bf16
    against lmtrain in fp32 and the classic fp32 loop (goals: >= 1.5x and >= 2.5x), and the
    share of the bf16 matmul peak it reaches. Where `auto` picks fp32 (no bf16 matrix units:
    bf16 is emulated, often many times slower) the bf16 contender is timed over a few one-step
    rounds only, and where the recurrent kernel has no bf16 version at all it is not run and
    the reason is printed. Ratios below 1 mean bf16 is slower here. --no-bf16 skips (c).

The contenders alternate (A B A B ...) so that drift in the machine's load hits both, and the
medians are reported. One script, longer than most, because (b) and (c) share their contenders
and must run in the same process to be compared. Data: $LMTRAIN_DATA (default ../shared/data)
with wikitext-2/train.txt and tinyshakespeare/input.txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmtrain.checkpoint import Progress
from lmtrain.config import Config, config_from_dict
from lmtrain.data import StreamBatches
from lmtrain.models import LanguageModel, detach_state
from lmtrain.runtime.precision import choose_precision
from lmtrain.runtime.signals import StopRequest
from lmtrain.runtime.threads import configure_threads, describe_machine
from lmtrain.training.data import Corpus, prepare_data
from lmtrain.training.loop import Trainer
from lmtrain.training.optim import build_optimizer
from lmtrain.training.setup import build_session
from lmtrain.training.window import StepLosses

ROUNDS = 7
FEW_ROUNDS = 3  # (c): rounds of one step for a bf16 contender that auto would not pick
DATA = Path(os.environ.get("LMTRAIN_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))


def config(
    corpus: str, tokenizer: str, model: dict, train: dict, valid: str | None = None
) -> Config:
    return config_from_dict(
        {
            "data": {"train": str(corpus), "valid": valid, "test": None, "tokenizer": tokenizer},
            "model": model,
            "train": {"device": "cpu", "log_every": 50, **train},
            "run": {"dir": "/nonexistent-bench-run", "tensorboard": False, "sample_tokens": 0},
        }
    )


def make_trainer(cfg: Config, corpus: Corpus) -> Trainer:
    """A Trainer on the Session fit() builds, without a run directory (build_session)."""
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(build_session(cfg, corpus), Progress(), None, StopRequest(), StepLosses(None))
    trainer.model.train()
    return trainer


def run_trainer(trainer: Trainer, steps: int) -> float:
    """Seconds for `steps` optimiser steps through Trainer.train_epoch."""
    p, s = trainer.progress, trainer.session
    if p.batch_in_epoch + steps > len(s.batches):
        p.batch_in_epoch = 0
    train = dataclasses.replace(s.cfg.train, max_steps=p.step + steps)
    trainer.session = dataclasses.replace(s, cfg=dataclasses.replace(s.cfg, train=train))
    start = time.perf_counter()
    trainer.train_epoch()
    return time.perf_counter() - start


def plain_loop(model: LanguageModel, batches: StreamBatches, cfg: Config) -> Callable[[int], float]:
    """The shortest correct loop over lmtrain's model: forward, loss, backward, clip, step."""
    opt = build_optimizer(cfg.train, model)
    it = iter(())
    state = None

    def run(steps: int) -> float:
        nonlocal it, state
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(it, None)
            if batch is None:
                it, state = batches.batches(), None
                batch = next(it)
            if state is None:
                state = model.init_state(batch.inputs.size(1))
            hidden, state = model(batch.inputs, state)
            state = detach_state(state)
            nll = model.output.nll(hidden.reshape(-1, hidden.size(-1)), batch.targets.reshape(-1))
            opt.zero_grad(set_to_none=True)
            (nll / batch.num_tokens).backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
            opt.step()
        return time.perf_counter() - start

    return run


class ClassicLM(nn.Module):
    """The model of pytorch/examples word_language_model, written the usual way."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, h: tuple[torch.Tensor, torch.Tensor]):
        out, h = self.rnn(self.drop(self.encoder(x)), h)
        return self.decoder(self.drop(out)), h


def classic_loop(batches: StreamBatches, vocab: int, lr: float, clip: float):
    torch.manual_seed(0)
    model = ClassicLM(vocab, 200, 200, 2, 0.2)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    it = iter(())
    hidden = None

    def run(steps: int) -> float:
        nonlocal it, hidden
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(it, None)
            if batch is None:
                it, hidden = batches.batches(), None
                batch = next(it)
            if hidden is None:
                hidden = (torch.zeros(2, batch.inputs.size(1), 200),) * 2
            hidden = tuple(h.detach() for h in hidden)
            model.zero_grad()
            logits, hidden = model(batch.inputs, hidden)  # (T, B, V), fresh every step
            loss = F.cross_entropy(logits.view(-1, vocab), batch.targets.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        return time.perf_counter() - start

    run.model = model  # type: ignore[attr-defined]  # for scripts/bench_quality.py's evaluation
    return run


def alternate(
    contenders: dict[str, Callable[[int], float]],
    steps: int | dict[str, int],
    tokens: int,
    rounds: int | None = None,
    warmup: int = 2,
):
    """Per contender: median tokens/s over rounds run A B A B ..., after one warm-up each.

    Also tokens per second of this process's CPU time: on a machine shared with other work the
    wall-clock rate depends on everyone else's load, the CPU-time rate much less so.
    `steps` per round: one number for all, or one per contender.
    """
    per = steps if isinstance(steps, dict) else dict.fromkeys(contenders, steps)
    for run in contenders.values():
        run(warmup)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS if rounds is None else rounds):
        for name, run in contenders.items():
            cpu = time.process_time()
            rates[name].append(per[name] * tokens / run(per[name]))
            cpu_rates[name].append(per[name] * tokens / (time.process_time() - cpu))
    med = {name: statistics.median(r) for name, r in rates.items()}
    cpu_med = {name: statistics.median(r) for name, r in cpu_rates.items()}
    return med, rates, cpu_med


def rounds(r: list[float]) -> str:
    return "rounds " + ", ".join(f"{x:,.0f}" for x in r)


def matmul_peak() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    c = torch.empty(1024, 1024)
    for _ in range(3):
        torch.mm(a, b, out=c)
    rates = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b, out=c)
        rates.append(5 * 2 * 1024**3 / (time.perf_counter() - start))
    return statistics.median(rates) / 1e9


def matmul_rate(dtype: torch.dtype, budget_s: float = 3.0) -> float:
    """GFLOP/s of a 1024^3 product in `dtype`: the median of single products, timed until
    `budget_s` is spent (at least one, at most 35), so that an emulated bf16 stays affordable."""
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    c = torch.empty(1024, 1024, dtype=dtype)
    torch.mm(a, b, out=c)
    rates: list[float] = []
    spent = 0.0
    while len(rates) < 35 and (not rates or spent < budget_s):
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        took = time.perf_counter() - start
        rates.append(2 * 1024**3 / took)
        spent += took
    return statistics.median(rates) / 1e9


def flops_per_token(emb: int, hidden: int, layers: int, vocab: int) -> float:
    """Matrix-product FLOPs per token, forward + backward (backward = 2x forward)."""
    lstm = sum(2 * 4 * hidden * ((emb if i == 0 else hidden) + hidden) for i in range(layers))
    return 3 * (lstm + 2 * hidden * vocab)


def bf16_section(
    cfg: Config, corpus, trainer: Trainer, classic, steps: int, n_rounds: int, vocab: int
) -> None:
    """(c): bf16 against fp32 on the reference shape, after (b) and with its contenders."""
    cpu = torch.device("cpu")
    choice = choose_precision(cpu)
    print(f"\n(c) bf16 against fp32 on the reference shape; {choice.describe()}")
    fp32_peak, bf16_peak = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    print(
        f"    matmul peak (1024^3): fp32 {fp32_peak:.1f} GFLOP/s, bf16 {bf16_peak:.1f} GFLOP/s"
        f" = {bf16_peak / fp32_peak:.2f}x fp32"
        + ("   (bf16 is slower than fp32 on this CPU)" if bf16_peak < fp32_peak else "")
    )
    bf16 = make_trainer(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="bf16")), corpus
    )
    amp = bf16.session.amp
    if amp.dtype is None:
        reason = amp.notes[0].split("; training in fp32 instead")[0]
        print(f"    lmtrain bf16: not run; {reason}")
        return
    few = choice.precision != "bf16"
    bf16_steps, n_rounds = (1, min(n_rounds, FEW_ROUNDS)) if few else (steps, n_rounds)
    tokens = cfg.train.batch_size * cfg.train.bptt
    contenders = {
        "bf16": lambda n: run_trainer(bf16, n),
        "fp32": lambda n: run_trainer(trainer, n),
        "classic": classic,
    }
    per = {"bf16": bf16_steps, "fp32": steps, "classic": steps}
    med, rates, cpu_rates = alternate(contenders, per, tokens, n_rounds, warmup=1)
    gflops = med["bf16"] * flops_per_token(200, 200, 2, vocab) / 1e9
    if few:
        print(
            f"    (few steps: auto picks fp32 here, so bf16 is timed over {n_rounds} rounds of "
            "1 step)"
        )
    for name, label in (("bf16", "lmtrain bf16"), ("fp32", "lmtrain fp32"), ("classic", "classic")):
        print(
            f"    {label:<12} {med[name]:7,.0f} tokens/s  {1e3 * tokens / med[name]:6.0f} ms/step"
            f"  ({rounds(rates[name])})"
        )
    slower = "   (bf16 is slower here)" if med["bf16"] < med["fp32"] else ""
    print(
        f"    lmtrain bf16 / classic = {med['bf16'] / med['classic']:.2f}x   (goal >= 2.5x); "
        f"bf16 / lmtrain fp32 = {med['bf16'] / med['fp32']:.2f}x   (goal >= 1.5x){slower}; "
        f"per CPU-second: {cpu_rates['bf16'] / cpu_rates['fp32']:.2f}x\n"
        f"    lmtrain bf16 {gflops:.1f} GFLOP/s = {gflops / bf16_peak:.0%} of the bf16 peak"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-bf16", action="store_true", help="skip (c), bf16 against fp32")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds (7)")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per round (default: 10 in (a), 3 in (b))"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    wt2, shakespeare = DATA / "wikitext-2/train.txt", DATA / "tinyshakespeare/input.txt"
    for path in (wt2, shakespeare):
        if not path.exists():
            print(f"missing {path}: set LMTRAIN_DATA to the folder of shared corpora")
            return 2
    configure_threads(None)
    print(f"machine: {describe_machine()}")
    load = os.getloadavg()[0]
    print(
        f"load average at start: {load:.1f} (a value above the core count means a shared machine)"
    )
    peak0 = matmul_peak()

    # (a) loop overhead, on a small character model where per-step overhead shows most.
    cfg = config(
        shakespeare, "char",
        {"embedding_dim": 64, "hidden_size": 256, "num_layers": 1},
        {"batch_size": 32, "bptt": 64, "optimizer": "adam", "lr": 0.003},
    )  # fmt: skip
    corpus = prepare_data(cfg)
    trainer = make_trainer(cfg, corpus)
    hand = plain_loop(trainer.model, trainer.session.batches, cfg)
    tokens = cfg.train.batch_size * cfg.train.bptt
    med, rates, cpu = alternate(
        {"lmtrain": lambda n: run_trainer(trainer, n), "plain": hand},
        args.steps or 10, tokens, args.rounds,
    )  # fmt: skip
    print(
        "\n(a) loop overhead: char LSTM 1x256, embedding 64, batch 32, bptt 64, Adam, "
        f"vocabulary {len(corpus.vocab)}\n"
        f"    lmtrain Trainer.train_epoch {med['lmtrain']:9,.0f} tokens/s  ({rounds(rates['lmtrain'])})\n"
        f"    plain hand-written loop     {med['plain']:9,.0f} tokens/s  ({rounds(rates['plain'])})\n"
        f"    lmtrain / plain = {med['lmtrain'] / med['plain']:.1%}   (goal >= 95%); per CPU-second: "
        f"{cpu['lmtrain'] / cpu['plain']:.1%}"
    )

    # (b) the reference shape.
    cfg = config(
        wt2, "word",
        {"embedding_dim": 200, "hidden_size": 200, "num_layers": 2, "dropout": 0.2},
        {"batch_size": 20, "bptt": 35, "optimizer": "sgd", "lr": 20.0, "clip_grad_norm": 0.25},
    )  # fmt: skip
    corpus = prepare_data(cfg)
    vocab = len(corpus.vocab)
    trainer = make_trainer(cfg, corpus)
    classic = classic_loop(trainer.session.batches, vocab, 20.0, 0.25)
    tokens = cfg.train.batch_size * cfg.train.bptt
    med, rates, cpu = alternate(
        {"lmtrain": lambda n: run_trainer(trainer, n), "classic": classic},
        args.steps or 3, tokens, args.rounds,
    )  # fmt: skip
    peak = statistics.median([peak0, matmul_peak()])
    gflops = med["lmtrain"] * flops_per_token(200, 200, 2, vocab) / 1e9
    gflops_classic = med["classic"] * flops_per_token(200, 200, 2, vocab) / 1e9
    print(
        "\n(b) reference shape: LSTM 2x200, embedding 200, dropout 0.2, batch 20, bptt 35, "
        f"SGD lr 20, clip 0.25, WikiText-2 vocabulary {vocab:,}, full softmax\n"
        f"    lmtrain      {med['lmtrain']:7,.0f} tokens/s  {1e3 * tokens / med['lmtrain']:6.0f} ms/step"
        f"  ({rounds(rates['lmtrain'])})\n"
        f"    classic loop {med['classic']:7,.0f} tokens/s  {1e3 * tokens / med['classic']:6.0f} ms/step"
        f"  ({rounds(rates['classic'])})\n"
        f"    lmtrain / classic = {med['lmtrain'] / med['classic']:.2f}x   (goal >= 1.5x); "
        f"per CPU-second: {cpu['lmtrain'] / cpu['classic']:.2f}x\n"
        f"    matmul peak (1024^3 fp32, median of start and end) {peak:.1f} GFLOP/s\n"
        f"    lmtrain {gflops:.1f} GFLOP/s = {gflops / peak:.0%} of peak   (goal >= 70%); "
        f"classic {gflops_classic:.1f} GFLOP/s = {gflops_classic / peak:.0%}"
    )
    if args.no_bf16:
        auto = choose_precision(torch.device("cpu")).describe()
        print(f"\n(c) bf16 against fp32: skipped (--no-bf16); {auto}")
    else:
        bf16_section(cfg, corpus, trainer, classic, args.steps or 3, args.rounds, vocab)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
