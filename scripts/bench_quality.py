"""Time to quality: how soon the WikiText-2 CPU recipe reaches the classic loop's one-epoch result.

    python scripts/bench_quality.py --record-classic   # once per machine: ~20-40 min
    python scripts/bench_quality.py                    # the recipe against the record: ~5 min
    (make bench-quality runs the second form)

The classic loop is the one `scripts/bench_train.py` (b) times: pytorch/examples
word_language_model's default model written the classic way (embedding 200, 2x200 LSTM,
dropout 0.2, full softmax, SGD lr 20, clip 0.25, bptt 35, batch 20). `--record-classic` trains it
for one full epoch of WikiText-2, measures its validation perplexity exactly (the whole text as
one stream, state carried, as `lmtrain eval` does), and writes the result, the date and the
machine to scripts/classic_epoch.json, which is kept with this script.

The second form runs `lmtrain fit configs/wikitext2_word_cpu_quick.yaml`, evaluating every
EVAL_EVERY steps, until its validation perplexity is at or below the recorded one, and prints
the training time that took against the classic epoch's training time (evaluation excluded on
both sides). Goal: at most one tenth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (the classic loop and its model)

from lmtrain.config import load_config  # noqa: E402
from lmtrain.data import StreamBatches  # noqa: E402
from lmtrain.runtime.threads import configure_threads, describe_machine  # noqa: E402
from lmtrain.training import fit  # noqa: E402
from lmtrain.training.data import prepare_data  # noqa: E402

RECORD = Path(__file__).with_name("classic_epoch.json")
RECIPE = Path(__file__).resolve().parents[1] / "configs/wikitext2_word_cpu_quick.yaml"
EVAL_EVERY = 25


def classic_valid_loss(model: bench_train.ClassicLM, ids: torch.Tensor, bptt: int = 35) -> float:
    """Mean NLL of every token after the first, one stream, state carried (dropout off)."""
    model.eval()
    total, count = 0.0, 0
    hidden = (torch.zeros(2, 1, 200),) * 2
    with torch.no_grad():
        for i in range(0, ids.numel() - 1, bptt):
            x = ids[i : i + bptt].unsqueeze(1)
            y = ids[i + 1 : i + 1 + bptt]
            x = x[: y.numel()]
            logits, hidden = model(x, hidden)
            total += float(F.cross_entropy(logits.view(-1, logits.size(-1)), y, reduction="sum"))
            count += y.numel()
    model.train()
    return total / count


def record_classic() -> int:
    wt2 = bench_train.DATA / "wikitext-2"
    cfg = bench_train.config(
        wt2 / "train.txt", "word",
        {"embedding_dim": 200, "hidden_size": 200, "num_layers": 2, "dropout": 0.2},
        {"batch_size": 20, "bptt": 35, "optimizer": "sgd", "lr": 20.0, "clip_grad_norm": 0.25},
        valid=str(wt2 / "valid.txt"),
    )  # fmt: skip
    corpus = prepare_data(cfg)
    batches = StreamBatches(corpus.train, 20, 35)
    run = bench_train.classic_loop(batches, len(corpus.vocab), 20.0, 0.25)
    start = time.perf_counter()
    train_seconds = 0.0
    done = 0
    while done < len(batches):
        n = min(100, len(batches) - done)
        train_seconds += run(n)
        done += n
        print(f"  {done}/{len(batches)} steps, {train_seconds / 60:.1f} min", flush=True)
    loss = classic_valid_loss(run.model, corpus.valid)
    record = {
        "what": "classic loop (scripts/bench_train.py (b)), one epoch of WikiText-2",
        "date": datetime.date.today().isoformat(),
        "machine": describe_machine(),
        "steps": len(batches),
        "train_minutes": round(train_seconds / 60, 2),
        "epoch_minutes_with_validation": round((time.perf_counter() - start) / 60, 2),
        "valid_loss": round(loss, 4),
        "valid_ppl": round(math.exp(loss), 2),
    }
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


EVAL_LINE = re.compile(r"step (\d+) \| epoch \d+ \| ([\d.]+) min \| val loss ([\d.]+)")


def recipe_against_record() -> int:
    if not RECORD.exists():
        print(f"no {RECORD.name}: run with --record-classic first")
        return 2
    record = json.loads(RECORD.read_text())
    target = record["valid_loss"]
    print(f"machine: {describe_machine()}")
    print(
        f"classic loop, one epoch ({record['date']}, {record['machine']}): valid ppl "
        f"{record['valid_ppl']} after {record['train_minutes']} min of training"
    )
    budget = record["train_minutes"] / 10
    points: list[tuple[int, float, float]] = []

    def echo(line: str) -> None:
        m = EVAL_LINE.search(line)
        if m:
            points.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
            print(f"    {line}", flush=True)

    run_dir = Path(tempfile.mkdtemp(prefix="lmtrain-bench-quality-")) / "run"
    cfg = load_config(
        RECIPE,
        [
            f"train.eval_every={EVAL_EVERY}",
            # Past twice the goal's budget the answer is "missed"; no need to train on.
            f"train.max_minutes={2 * budget:.2f}",
            f"run.dir={run_dir}",
            "run.tensorboard=false",
            "run.sample_tokens=0",
            "run.keep_last=0",
        ],
    )
    try:
        fit(cfg, resume=None, quiet=True, echo=echo)
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    reached = next((p for p in points if p[2] <= target), None)
    print(f"recipe: {RECIPE.name}, evaluating every {EVAL_EVERY} steps")
    if reached is None:
        best = min(points, key=lambda p: p[2])
        print(
            f"    did not reach valid ppl {record['valid_ppl']} within {2 * budget:.1f} min of "
            f"training (best {math.exp(best[2]):.2f} at {best[1]:.1f} min): goal missed"
        )
        return 1
    step, minutes, loss = reached
    before = [p for p in points if p[0] < step]
    print(
        f"    valid ppl {math.exp(loss):.2f} <= {record['valid_ppl']} at step {step}, "
        f"{minutes:.1f} min of training"
        + (
            f" (previous evaluation: ppl {math.exp(before[-1][2]):.2f} at {before[-1][1]:.1f} min)"
            if before
            else ""
        )
    )
    ratio = minutes / record["train_minutes"]
    print(
        f"    time to quality = {ratio:.3f} of the classic epoch = 1/{1 / ratio:.1f}   "
        f"(goal <= 1/10: {'met' if ratio <= 0.1 else 'missed'})"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record-classic", action="store_true")
    args = parser.parse_args()
    wt2 = bench_train.DATA / "wikitext-2"
    if not (wt2 / "train.txt").exists() or not (wt2 / "valid.txt").exists():
        print(
            f"missing {wt2}/train.txt or valid.txt: set LMTRAIN_DATA to the folder of shared corpora"
        )
        return 2
    os.environ.setdefault("LMTRAIN_DATA", str(bench_train.DATA))
    configure_threads(None)
    return record_classic() if args.record_classic else recipe_against_record()


if __name__ == "__main__":
    sys.exit(main())
