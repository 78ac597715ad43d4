"""GPU training throughput of `lmtrain fit` against a bare cuDNN loop of the same shape.

    python scripts/bench_gpu.py [--steps 200] [--batch-size 64] [--precisions fp32,bf16,fp16]

A 2x650 LSTM (embedding 650, the "medium" model of Zaremba et al. 2014) on WikiText-2 words,
bptt 35, SGD with norm clipping. For each precision the bare loop (nn.Embedding -> nn.LSTM ->
nn.Linear -> cross_entropy, autocast and GradScaler written out by hand) and `lmtrain fit` run
the same number of steps on the same data; both timings cover every step including the first
and end with the device synchronised. The goal is that the trainer keeps >= 95% of the bare
loop's tokens/s. Without a GPU it prints "no GPU" and exits 0 (`--device cpu` runs a tiny
dry run of the same code, to check the script itself, not to measure anything).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmtrain.config import config_from_dict  # noqa: E402
from lmtrain.data import StreamBatches, read_text  # noqa: E402
from lmtrain.data.tokenizers import Settings, build  # noqa: E402
from lmtrain.training import fit  # noqa: E402

DATA = Path(os.environ.get("LMTRAIN_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Bare(nn.Module):
    def __init__(self, vocab: int, size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, size)
        self.rnn = nn.LSTM(size, size, 2)
        self.decoder = nn.Linear(size, vocab)


def bare_tokens_per_sec(
    ids: torch.Tensor, vocab: int, args: argparse.Namespace, precision: str, device: torch.device
) -> float:
    torch.manual_seed(0)
    model = Bare(vocab, args.size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batches = StreamBatches(ids, args.batch_size, 35)
    b = args.batch_size
    state = (
        torch.zeros(2, b, args.size, device=device),
        torch.zeros(2, b, args.size, device=device),
    )
    tokens = 0
    _sync(device)
    start = time.perf_counter()
    for k, batch in enumerate(batches.batches()):
        if k == args.steps:
            break
        x = batch.inputs.to(device, non_blocking=True)
        y = batch.targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out, state = model.rnn(model.embedding(x), state)
            logits = model.decoder(out.reshape(-1, args.size))
            loss = F.cross_entropy(logits.float(), y.reshape(-1))
        state = tuple(s.detach() for s in state)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        scaler.step(opt)
        scaler.update()
        tokens += batch.num_tokens
    float(loss.detach())  # the one host sync, as the trainer has at its last logging point
    _sync(device)
    return tokens / (time.perf_counter() - start)


def lmtrain_tokens_per_sec(args: argparse.Namespace, precision: str, device: torch.device) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as run_dir:
        raw = {
            "data": {
                "train": str(DATA / "wikitext-2/train.txt"),
                "valid": None,
                "test": None,
                "tokenizer": "word",
            },
            "model": {
                "cell": "lstm",
                "embedding_dim": args.size,
                "hidden_size": args.size,
                "num_layers": 2,
            },
            "train": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "bptt": 35,
                "optimizer": "sgd",
                "lr": 1.0,
                "clip_grad_norm": 0.25,
                "log_every": args.steps,
                "device": str(device),
                "precision": precision,
            },
            "run": {"dir": run_dir, "tensorboard": False, "sample_tokens": 0},
        }
        notes: list[str] = []
        result = fit(config_from_dict(raw), quiet=True, echo=notes.append)
        for note in notes:
            if "instead" in note:  # a precision fallback would make the comparison meaningless
                print(f"  note: {note}")
        return result.tokens_per_sec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps per measurement")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=650, help="embedding and hidden size")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False here; nothing measured (exit 0).")
        return 0
    device = torch.device(args.device)
    path = DATA / "wikitext-2/train.txt"
    if not path.exists():
        print(f"{path} not found; set LMTRAIN_DATA to the folder holding wikitext-2/")
        return 2
    text = read_text(str(path))
    vocab = build("word", text, Settings())
    ids = vocab.encode(text).ids
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(
        f"device: {name}; torch {torch.__version__}, cuDNN "
        f"{torch.backends.cudnn.version() if device.type == 'cuda' else '-'}; host "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(
        f"LSTM 2x{args.size}, WikiText-2 vocabulary {len(vocab):,}, bptt 35, "
        f"batch {args.batch_size}, {args.steps} steps per measurement"
    )
    # Pay CUDA context creation and cuDNN plan selection before anything is timed.
    warm = argparse.Namespace(**{**vars(args), "steps": 3})
    bare_tokens_per_sec(ids, len(vocab), warm, "fp32", device)
    print(f"{'precision':<10}{'bare tok/s':>14}{'lmtrain tok/s':>16}{'lmtrain/bare':>14}")
    for precision in args.precisions.split(","):
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            print(f"{precision:<10}{'(not supported on this GPU)':>44}")
            continue
        bare = bare_tokens_per_sec(ids, len(vocab), args, precision, device)
        ours = lmtrain_tokens_per_sec(args, precision, device)
        print(f"{precision:<10}{bare:>14,.0f}{ours:>16,.0f}{ours / bare:>14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
