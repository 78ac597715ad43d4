"""Quick reproduction check: rerun the CPU recipes on a short budget and compare with the record.

    python scripts/reproduce.py            # compare; exit 1 if any recipe got worse
    python scripts/reproduce.py --record   # measure and write the expectation file
    python scripts/reproduce.py --only quickstart

Each recipe in scripts/reproduce_expected.json is trained from its YAML with the recorded
shortened-budget overrides (a few hundred thousand tokens), and its final validation loss
(nats per token) is compared with the recorded one. Training on a CPU with a fixed seed is
deterministic, so on the recording machine the figure repeats exactly; the relative tolerance
covers other CPUs and BLAS builds. A loss above recorded * (1 + tolerance) is a regression: the
script prints the difference and exits 1, so a change that hurts quality fails loudly instead of
surprising users. The shared corpora are read from $LMTRAIN_DATA (the Makefile sets it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmtrain.config import load_config
from lmtrain.errors import LmtrainError
from lmtrain.training import fit

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "scripts" / "reproduce_expected.json"
# Settings that only save time and never change the trained weights.
QUIET = ["run.tensorboard=false", "run.sample_tokens=0"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def run_recipe(name: str, entry: dict, work: Path) -> tuple[float, float]:
    """(final validation loss, wall seconds) of one recipe on its short budget."""
    overrides = [*entry["overrides"], *QUIET, f"run.dir={work / name}"]
    cfg = load_config(ROOT / entry["config"], overrides)
    t0 = time.perf_counter()
    result = fit(cfg, quiet=True, echo=lambda s: None)
    return result.progress.last_val_loss, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help="write the measured losses as expected")
    ap.add_argument("--only", action="append", help="recipe name (repeatable); default all")
    ap.add_argument("--expected", type=Path, default=EXPECTED)
    args = ap.parse_args()
    spec = json.loads(args.expected.read_text())
    names = args.only or list(spec["recipes"])
    unknown = [n for n in names if n not in spec["recipes"]]
    if unknown:
        print(
            f"error: unknown recipe(s) {unknown}; known: {list(spec['recipes'])}", file=sys.stderr
        )
        return 2
    print(f"machine: {machine()}")
    print(f"recorded on: {spec.get('machine', 'unknown')}")
    failures = []
    with tempfile.TemporaryDirectory(prefix="lmtrain-reproduce-") as tmp:
        for name in names:
            entry = spec["recipes"][name]
            try:
                loss, seconds = run_recipe(name, entry, Path(tmp))
            except LmtrainError as e:
                print(f"error: {name}: {e}", file=sys.stderr)
                return 2
            want = entry.get("valid_loss")
            tol = float(entry.get("tolerance", spec.get("tolerance", 0.02)))
            line = f"{name:24s} valid loss {loss:.4f} in {seconds:6.1f}s"
            if args.record:
                entry["valid_loss"] = round(loss, 4)
                print(line + "  (recorded)")
            elif want is None:
                failures.append(name)
                print(line + "  NO RECORD: run with --record")
            else:
                ratio = loss / want
                verdict = "ok" if ratio <= 1 + tol else "REGRESSION"
                if verdict != "ok":
                    failures.append(name)
                print(
                    f"{line}  expected {want:.4f} (ratio {ratio:.4f}, tolerance +{tol:.0%}) {verdict}"
                )
    if args.record:
        spec["machine"] = machine()
        args.expected.write_text(json.dumps(spec, indent=2) + "\n")
        print(f"wrote {args.expected}")
        return 0
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("all recipes within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
