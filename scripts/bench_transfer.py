"""Does the WikiText-2 CPU recipe transfer? The recipe on corpora it was not tuned for.

    python scripts/bench_transfer.py                   # ~1 hour: 3 corpora x 3 settings, 2 at once
    python scripts/bench_transfer.py --minutes 4 --corpora synthetic   # a quick look
    (make bench-transfer runs the first form)

A user points `configs/wikitext2_word_cpu.yaml` at another corpus and changes nothing but the
data paths. This benchmark builds three such corpora and trains, on each:

- `recipe`: the recipe with only data.train/valid/test changed (and the budget, below);
- two hand-tuned alternatives, the usual first things to try on a new corpus:
  `heavier-reg` (dropout 0.5, embedding dropout 0.1, weight drop 0.3) and
  `light-reg` (dropout 0.1).

The gap is the recipe's test perplexity over that of the best of the three (best on
validation, as a tuner would choose). It also reports, from metrics.jsonl, where each run's
best validation came and whether its validation loss then rose
(a run that spends most of its budget overfitting).

The corpora (written under --out, built from LMTRAIN_DATA, default ../shared/data):

- `wt2-slice`: the first tenth of WikiText-2's training lines (same valid/test files);
- `shakespeare-words`: Tiny Shakespeare split into words (another domain, a vocabulary of
  tens of thousands, most words rare);
- `synthetic`: text drawn from a hidden Markov model (16 states, 400 words, sentences ending
  in a newline). Its true per-token perplexity on the test text is computed exactly with the
  forward algorithm, so the table shows how far each run is from the best any model can do.

Every run trains for --minutes (default 10) instead of the recipe's 30, with
train.num_threads = cores / --jobs, so the corpora are sized to give the recipe a comparable
number of epochs (about 5-10) to a 30-minute run on a corpus half the size of WikiText-2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/wikitext2_word_cpu.yaml"
VARIANTS = {
    "recipe": [],
    "heavier-reg": ["model.dropout=0.5", "model.embedding_dropout=0.1", "model.weight_drop=0.3"],
    "light-reg": ["model.dropout=0.1"],
}
CORPORA = ("wt2-slice", "shakespeare-words", "synthetic")


# ---------------------------------------------------------------------------------- corpora --


def build_wt2_slice(data: Path, out: Path) -> dict[str, str]:
    lines = (data / "wikitext-2/train.txt").read_text(encoding="utf-8").splitlines(True)
    (out / "train.txt").write_text("".join(lines[: len(lines) // 10]), encoding="utf-8")
    return {
        "train": str(out / "train.txt"),
        "valid": str(data / "wikitext-2/valid.txt"),
        "test": str(data / "wikitext-2/test.txt"),
    }


def build_shakespeare_words(data: Path, out: Path) -> dict[str, str]:
    src = data / "tinyshakespeare/input.txt"
    return {split: f"{src}:{split}" for split in ("train", "valid", "test")}


class HiddenMarkovSource:
    """A hidden Markov model over words; state END emits the newline (lmtrain's `<eos>`)."""

    def __init__(self, seed: int = 0, states: int = 16, words: int = 400, per_state: int = 40):
        rng = np.random.default_rng(seed)
        self.k = states + 1  # the last state is END
        self.vocab = [f"w{i:03d}" for i in range(words)] + ["\n"]
        self.emit = np.zeros((self.k, words + 1))
        zipf = 1.0 / np.arange(1, per_state + 1) ** 1.1
        for s in range(states):
            chosen = rng.choice(words, per_state, replace=False)
            self.emit[s, chosen] = zipf / zipf.sum()
        self.emit[states, words] = 1.0
        self.trans = np.zeros((self.k, self.k))
        for s in range(states):
            nxt = rng.choice(states, 3, replace=False)
            self.trans[s, nxt] = rng.dirichlet(np.ones(3)) * 0.92
            self.trans[s, states] = 0.08  # sentences of about 12 words
        self.trans[states, :states] = rng.dirichlet(np.ones(states))

    def sample(self, n: int, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        state, out = self.k - 1, []
        cum_t, cum_e = self.trans.cumsum(1), self.emit.cumsum(1)
        while len(out) < n or out[-1] != len(self.vocab) - 1:
            state = int(np.searchsorted(cum_t[state], rng.random(), side="right"))
            out.append(int(np.searchsorted(cum_e[state], rng.random(), side="right")))
        return out

    def nll_after_first(self, tokens: list[int]) -> tuple[float, int]:
        """Total NLL (nats) of tokens[1:] given everything before, and their count (forward
        algorithm, starting just after a newline, as the text does)."""
        belief = self.trans[self.k - 1].copy()
        total = 0.0
        for i, tok in enumerate(tokens):
            joint = belief * self.emit[:, tok]
            p = joint.sum()
            if i > 0:
                total -= math.log(p)
            belief = (joint / p) @ self.trans
        return total, len(tokens) - 1

    def text(self, tokens: list[int]) -> str:
        return " ".join(self.vocab[t] for t in tokens).replace(" \n ", "\n").replace(" \n", "\n")


def build_synthetic(out: Path) -> tuple[dict[str, str], float]:
    """Writes train/valid/test text; returns the paths and the true test perplexity."""
    src = HiddenMarkovSource()
    paths = {}
    for split, n, seed in (("train", 400_000, 1), ("valid", 40_000, 2), ("test", 40_000, 3)):
        tokens = src.sample(n, seed)
        (out / f"{split}.txt").write_text(src.text(tokens), encoding="utf-8")
        paths[split] = str(out / f"{split}.txt")
        if split == "test":
            nll, count = src.nll_after_first(tokens)
    return paths, math.exp(nll / count)


# ------------------------------------------------------------------------------------- runs --


def overrides(paths: dict[str, str], run_dir: Path, minutes: float, threads: int) -> list[str]:
    return [
        f"data.train={paths['train']}",
        f"data.valid={paths['valid']}",
        f"data.test={paths['test']}",
        f"run.dir={run_dir}",
        f"train.max_minutes={minutes}",
        f"train.num_threads={threads}",
    ]


def lmtrain(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmtrain", *args]


def finished(run_dir: Path) -> bool:
    try:
        status = json.loads((run_dir / "results.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return False
    return status in ("completed", "time_limit")


def summarise(run_dir: Path) -> dict[str, object]:
    """Test perplexity, the best validation's step, and how much validation rose after it."""
    saved = run_dir / "test_eval.json"  # kept, so that --report-only need not evaluate again
    if not saved.exists():
        ev = subprocess.run(lmtrain("eval", str(run_dir), "--json"), capture_output=True, text=True)
        if ev.returncode != 0:
            raise SystemExit(f"lmtrain eval {run_dir} failed:\n{ev.stderr}")
        saved.write_text(ev.stdout)
    test = json.loads(saved.read_text())
    evals = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "eval" and rec.get("split") == "valid":
            evals.append((rec["step"], rec["loss"]))
    steps = [s for s, _ in evals]
    best_i = min(range(len(evals)), key=lambda i: evals[i][1])
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "test_ppl": test["ppl"],
        "train_minutes": results["train_seconds"] / 60,
        "best_step": steps[best_i],
        "last_step": steps[-1],
        "best_valid_ppl": math.exp(evals[best_i][1]),
        "last_valid_ppl": math.exp(evals[-1][1]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=ROOT / "runs/bench_transfer")
    ap.add_argument(
        "--report-only", action="store_true", help="print the table of the runs already in --out"
    )
    args = ap.parse_args()
    data = Path(os.environ.get("LMTRAIN_DATA", ROOT.parent / "shared/data"))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    paths, floor = {}, {}
    for name in args.corpora:
        where = args.out / "corpora" / name
        where.mkdir(parents=True, exist_ok=True)
        if name == "wt2-slice":
            paths[name] = build_wt2_slice(data, where)
        elif name == "shakespeare-words":
            paths[name] = build_shakespeare_words(data, where)
        else:
            paths[name], floor[name] = build_synthetic(where)

    todo = [(c, v) for c in args.corpora for v in args.variants]
    if args.report_only:
        todo = []
        results = {
            (c, v): summarise(args.out / "runs" / f"{c}-{v}")
            for c in args.corpora
            for v in args.variants
        }
    else:
        results = {}
    running: list[tuple[subprocess.Popen[bytes], str, str, float]] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            corpus, variant = todo.pop(0)
            run_dir = args.out / "runs" / f"{corpus}-{variant}"
            if finished(run_dir):  # from an earlier invocation with the same --out
                results[corpus, variant] = summarise(run_dir)
                print(f"kept {corpus} / {variant} from {run_dir}", flush=True)
                continue
            cmd = lmtrain(
                "fit", str(RECIPE), *overrides(paths[corpus], run_dir, args.minutes, threads),
                *VARIANTS[variant], "--quiet",
            )  # fmt: skip
            log = open(args.out / f"{corpus}-{variant}.log", "wb")  # noqa: SIM115
            running.append(
                (subprocess.Popen(cmd, stdout=log, stderr=log), corpus, variant, time.time())
            )
            print(f"started {corpus} / {variant}: {' '.join(cmd[3:])}", flush=True)
        time.sleep(2)
        for item in list(running):
            proc, corpus, variant, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                for other, *_ in running:
                    other.terminate()
                raise SystemExit(f"{corpus} / {variant} exited {proc.returncode}; see its .log")
            results[corpus, variant] = summarise(args.out / "runs" / f"{corpus}-{variant}")
            print(
                f"done {corpus} / {variant} in {time.time() - t0:.0f} s: {results[corpus, variant]}"
            )

    print(f"\nWikiText-2 CPU recipe on other corpora: {args.minutes:g} minutes each, "
          f"{threads} thread(s), {args.jobs} runs at once")  # fmt: skip
    print(
        "| corpus | setting | test ppl | best valid ppl (step) | last valid ppl (step) | minutes |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for corpus in args.corpora:
        for variant in args.variants:
            r = results[corpus, variant]
            print(f"| {corpus} | {variant} | {r['test_ppl']:.2f} | {r['best_valid_ppl']:.2f} "
                  f"({r['best_step']}) | {r['last_valid_ppl']:.2f} ({r['last_step']}) "
                  f"| {r['train_minutes']:.1f} |")  # fmt: skip
        # The best setting is chosen on validation, as a tuner would; the gap is on test.
        best = min(args.variants, key=lambda v: results[corpus, v]["best_valid_ppl"])
        if "recipe" in args.variants:
            gap = results[corpus, "recipe"]["test_ppl"] / results[corpus, best]["test_ppl"] - 1
            print(f"| {corpus} | gap: recipe vs best ({best}) | {100 * gap:+.1f}% | | | |")
        if corpus in floor:
            print(f"| {corpus} | true source (forward algorithm) | {floor[corpus]:.2f} | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
