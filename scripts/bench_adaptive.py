"""Adaptive softmax against the full softmax on the WikiText-2 vocabulary, on CPU, in one run.

    python scripts/bench_adaptive.py [--steps 8] [--cutoffs 2000,10000]

Both models are lmtrain's LanguageModel (embedding 200, 2x200 LSTM, the word_language_model
reference shape), trained with the same loss path as `lmtrain fit` (embedding -> LSTM ->
output.nll -> backward -> clip -> SGD) on the same WikiText-2 windows (bptt 35, batch 20).
Only the output layer differs. Prints training tokens/s of each and their ratio (the full
softmax, measured first in the same run, is the baseline).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmtrain.config import AdaptiveSoftmaxConfig, ModelConfig  # noqa: E402
from lmtrain.data import StreamBatches, read_text  # noqa: E402
from lmtrain.data.tokenizers import Settings, Tokenizer, build  # noqa: E402
from lmtrain.models import build_model, detach_state  # noqa: E402
from lmtrain.runtime.forward import LossForward  # noqa: E402

DATA = Path(os.environ.get("LMTRAIN_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def train_tokens_per_sec(
    cfg: ModelConfig, vocab: Tokenizer, ids: torch.Tensor, steps: int, warmup: int = 2
) -> float:
    torch.manual_seed(0)
    model = build_model(cfg, len(vocab))
    loss_fn = LossForward(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = StreamBatches(ids, 20, 35)
    state = model.init_state(20)
    tokens, start = 0, 0.0
    for k, batch in enumerate(batches.batches()):
        if k == warmup:
            tokens, start = 0, time.perf_counter()
        if k == warmup + steps:
            break
        nll, state, *_ = loss_fn(batch.inputs, batch.targets, state)
        state = detach_state(state)
        opt.zero_grad(set_to_none=True)
        (nll / batch.num_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        tokens += batch.num_tokens
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per model")
    ap.add_argument("--cutoffs", default="2000,10000", help="adaptive softmax cutoffs")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians reported)")
    args = ap.parse_args()
    path = DATA / "wikitext-2/train.txt"
    if not path.exists():
        sys.exit(f"{path} not found; set LMTRAIN_DATA to the folder holding wikitext-2/")
    text = read_text(str(path))
    vocab = build("word", text, Settings())
    ids = vocab.encode(text).ids
    cutoffs = [int(c) for c in args.cutoffs.split(",")]
    base = ModelConfig(cell="lstm", embedding_dim=200, hidden_size=200, num_layers=2)
    adaptive = dataclasses.replace(base, adaptive_softmax=AdaptiveSoftmaxConfig(cutoffs=cutoffs))

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"WikiText-2 vocabulary {len(vocab):,}; LSTM 2x200, bptt 35, batch 20, {args.steps} steps"
    )
    # A B A B ...: drift in the machine's load hits both; medians are reported.
    fulls, asms = [], []
    for _ in range(args.rounds):
        fulls.append(train_tokens_per_sec(base, vocab, ids, args.steps))
        asms.append(train_tokens_per_sec(adaptive, vocab, ids, args.steps))
    full, asm = statistics.median(fulls), statistics.median(asms)
    print(
        f"full softmax:                     {full:8,.0f} tokens/s (baseline, median of {args.rounds})"
    )
    print(f"adaptive softmax (cutoffs {cutoffs}): {asm:8,.0f} tokens/s = {asm / full:.2f}x")


if __name__ == "__main__":
    main()
