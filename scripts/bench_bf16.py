"""What bf16 buys and costs: the CPU recipes trained in fp32 and in bf16 for the same steps.

    python scripts/bench_bf16.py [--steps 300] [--device cpu|cuda] [--recipes wikitext2_word_cpu ...]
    (scripts/gpu_check.sh runs it with --device cuda)

For each recipe (the WikiText-2 word model and the Tiny Shakespeare character model by default),
`lmtrain fit` runs twice from the same seed for --steps steps, with the cosine schedule over
those steps (train.schedule_span=steps, no time limit): once with train.precision=fp32, once with
train.precision=bf16. Both validations are fp32 (lmtrain evaluates outside autocast), so the
figures compare the weights each precision trained, not the arithmetic of the evaluation.

It prints each precision's validation loss, the relative difference (goal: within 1%), each
precision's training tokens/s and the ratio. Where bf16 cannot run (a recurrent kernel with no
bf16 version here, such as oneDNN's LSTM on a CPU without AVX-512), lmtrain trains in fp32 and
says so; this script then prints that reason instead of a comparison, and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LMTRAIN_DATA", str(ROOT.parent / "shared/data"))

from lmtrain.config import load_config  # noqa: E402
from lmtrain.runtime.threads import describe_machine  # noqa: E402
from lmtrain.training import fit  # noqa: E402

RECIPES = ("wikitext2_word_cpu", "shakespeare_char_cpu")


def train(recipe: str, precision: str, args: argparse.Namespace) -> tuple[float, float, list[str]]:
    """Best validation loss, training tokens/s and what lmtrain said about the precision."""
    said: list[str] = []
    run_dir = Path(tempfile.mkdtemp(prefix="lmtrain-bench-bf16-")) / "run"
    cfg = load_config(
        ROOT / "configs" / f"{recipe}.yaml",
        [
            f"train.precision={precision}",
            f"train.device={args.device}",
            f"train.max_steps={args.steps}",
            "train.max_minutes=null",
            "train.schedule_span=steps",
            f"train.eval_every={args.steps}",
            f"run.dir={run_dir}",
            "run.tensorboard=false",
            "run.sample_tokens=0",
            "run.keep_last=0",
        ],
    )
    try:
        result = fit(cfg, resume=None, quiet=True, echo=said.append)
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    notes = [line for line in said if "precision" in line]
    return result.progress.best_val_loss, result.tokens_per_sec, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    args = ap.parse_args()
    print(f"machine: {describe_machine()}; device {args.device}; {args.steps} steps per run")
    for recipe in args.recipes:
        bf16_loss, bf16_rate, notes = train(recipe, "bf16", args)
        if any("training in fp32 instead" in n for n in notes):
            print(f"{recipe}: bf16 did not run here: {notes[0]}")
            continue
        fp32_loss, fp32_rate, _ = train(recipe, "fp32", args)
        print(f"{recipe}: fp32 valid loss {fp32_loss:.4f}, {fp32_rate:,.0f} tokens/s")
        diff = bf16_loss / fp32_loss - 1
        print(
            f"    bf16 valid loss {bf16_loss:.4f} ({100 * diff:+.2f}% against fp32; goal within 1%: "
            f"{'met' if abs(diff) <= 0.01 else 'missed'}), {bf16_rate:,.0f} tokens/s "
            f"({bf16_rate / fp32_rate:.2f}x fp32)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
