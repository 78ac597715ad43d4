"""Prepared token files against reading the text at every start, on a corpus of ~100 M tokens.

    python scripts/bench_data.py [--tokens 100000000] [--tokenizer word] [--ranks 4]
                                 [--steps 20] [--no-dist] [--no-dist-baseline] [--keep DIR]

Builds a synthetic corpus of about --tokens word tokens (WikiText-2's training text repeated,
written under a temporary directory and removed afterwards unless --keep), then measures, in
this one run, the prepared-file path against today's path (`data.cache_dir: null`: every start
reads the whole text and tokenises it):

1. Preparation: `lmtrain prepare` into an empty cache; seconds and MB of text per second.
2. Start-up: seconds from launching `lmtrain fit` (a tiny model, `train.max_steps=1`, no
   validation) until it exits, on the warm cache and with the cache off; a tiny corpus gives
   the floor every start pays (interpreter, imports, model, one step, checkpoint).
3. Peak RSS of each of those processes (ru_maxrss from wait4); the part attributable to data
   is the peak minus the floor's.
4. `torchrun --nproc_per_node=RANKS` on CPU (`train.max_steps=--steps`): the total PSS and USS
   of all ranks, from /proc/PID/smaps_rollup, sampled every 0.1 s while they run; the largest
   total counts. In PSS a page mapped by several ranks is shared out among them, so a file all
   ranks map counts once. Again minus the floor (the same job on the tiny corpus).

Prints absolute figures labelled with the machine, and ratios against today's path measured in
the same run. Reads $LMTRAIN_DATA/wikitext-2 (default ../shared/data next to the repository).
The in-memory torchrun job holds RANKS copies of the text; --no-dist-baseline skips it where
memory is short.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OLD = 1_000_000_000  # corpus mtime: an old file, whose hash the cache remembers by (size, mtime)
MB = 1e6


def data_dir() -> Path:
    return Path(os.environ.get("LMTRAIN_DATA", ROOT.parent / "shared" / "data")) / "wikitext-2"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{mem:.0f} GiB, Python {platform.python_version()}"
    )


def build_corpus(tokens: int, out: Path) -> tuple[int, int]:
    """WikiText-2's training text repeated to about `tokens` word tokens (line ends included).

    Returns (word tokens, bytes) of the file written.
    """
    text = (data_dir() / "train.txt").read_text(encoding="utf-8")
    per_copy = sum(len(line.split()) + 1 for line in text.splitlines())
    copies = max(1, round(tokens / per_copy))
    with out.open("w", encoding="utf-8") as f:
        for _ in range(copies):
            f.write(text)
    os.utime(out, (OLD, OLD))
    return copies * per_copy, out.stat().st_size


def write_config(
    path: Path, train: Path, run_dir: Path, cache: Path | None, a: argparse.Namespace, steps: int
) -> Path:
    raw = {
        "data": {
            "train": str(train),
            "valid": None,
            "test": None,
            "tokenizer": a.tokenizer,
            "cache_dir": None if cache is None else str(cache),
        },
        "model": {"embedding_dim": 16, "hidden_size": 16, "num_layers": 1},
        "train": {"batch_size": 8, "bptt": 16, "max_steps": steps, "log_every": 1000},
        "run": {"dir": str(run_dir), "tensorboard": False, "sample_tokens": 0},
    }
    if a.tokenizer == "bpe":
        raw["data"]["vocab_size"] = a.vocab_size
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float


def run_measured(args: list[str]) -> Measured:
    """Run a command to its end: wall seconds and its peak RSS (wait4, this child only)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return Measured(seconds, usage.ru_maxrss * 1024 / MB)  # Linux: ru_maxrss in KiB


def lmtrain(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmtrain", *args]


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc/*/stat (no third-party process library)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        out += kids
        frontier += kids
    return out


def _rollup(pid: int) -> dict[str, int]:
    """Rss / Pss / Private_* of a process in kB, from /proc/PID/smaps_rollup."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                values[key] = int(rest.split()[0])
    return values


@dataclass
class DistMemory:
    seconds: float
    pss_mb: float
    uss_mb: float
    rss_mb: float


def run_torchrun(config: Path, ranks: int, timeout: float) -> DistMemory | str:
    """A torchrun job on CPU; the largest total PSS / USS / RSS of its ranks while it runs, or
    why it gave no figure (it failed or hung)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={ranks}", "-m", "lmtrain", "fit", str(config), "--quiet",
    ]  # fmt: skip
    start = time.perf_counter()
    # Its own session, so that a job that hangs can be stopped with every rank.
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    best = DistMemory(0.0, 0.0, 0.0, 0.0)
    while proc.poll() is None:
        if time.perf_counter() - start > timeout:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            return f"did not finish in {timeout:.0f} s (stopped)"
        # The ranks are the python processes below the launcher (the launcher itself excluded).
        totals = {"Pss": 0, "uss": 0, "Rss": 0}
        for pid in _children(proc.pid):
            r = _rollup(pid)
            totals["Pss"] += r.get("Pss", 0)
            totals["uss"] += r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
            totals["Rss"] += r.get("Rss", 0)
        best.pss_mb = max(best.pss_mb, totals["Pss"] * 1024 / MB)
        best.uss_mb = max(best.uss_mb, totals["uss"] * 1024 / MB)
        best.rss_mb = max(best.rss_mb, totals["Rss"] * 1024 / MB)
        time.sleep(0.1)
    best.seconds = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        return f"failed with exit code {proc.returncode}: {err.strip()[-500:]}"
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=100_000_000, help="corpus size in word tokens")
    p.add_argument("--tokenizer", choices=["word", "char", "byte", "bpe"], default="word")
    p.add_argument("--vocab-size", type=int, default=16000, help="with --tokenizer bpe")
    p.add_argument("--ranks", type=int, default=4, help="torchrun --nproc_per_node")
    p.add_argument("--steps", type=int, default=20, help="training steps of the torchrun jobs")
    p.add_argument("--no-dist", action="store_true", help="skip the torchrun measurements")
    p.add_argument(
        "--no-dist-baseline",
        action="store_true",
        help="skip the torchrun job with the cache off (it holds one copy of the text per rank)",
    )
    p.add_argument(
        "--dist-timeout", type=float, default=1800, help="seconds before a torchrun job is stopped"
    )
    p.add_argument("--keep", type=Path, help="build the corpus and cache here and keep them")
    a = p.parse_args()
    if not (data_dir() / "train.txt").is_file():
        raise SystemExit(f"{data_dir() / 'train.txt'} not found: set LMTRAIN_DATA")

    with contextlib.ExitStack() as stack:
        if a.keep is not None:
            work = a.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-data-")))
        report(a, work)


def report(a: argparse.Namespace, work: Path) -> None:
    corpus, tiny = work / "corpus.txt", work / "tiny.txt"
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # preparation is measured from an empty cache
    for d in work.glob("run-*"):
        shutil.rmtree(d)
    t0 = time.perf_counter()
    tokens, size = build_corpus(a.tokens, corpus)
    shutil.copyfile(data_dir() / "valid.txt", tiny)  # the floor's corpus: 217 K tokens
    os.utime(tiny, (OLD, OLD))
    print(f"machine: {machine()}")
    print(
        f"corpus: {tokens:,} word tokens, {size / MB:,.0f} MB (WikiText-2 train repeated; "
        f"built in {time.perf_counter() - t0:.1f} s), tokenizer {a.tokenizer}"
    )

    def config(name: str, train: Path, cached: bool, steps: int = 1) -> Path:
        return write_config(
            work / f"{name}.yaml", train, work / f"run-{name}", cache if cached else None, a, steps
        )

    prep = run_measured(lmtrain("prepare", str(config("prepare", corpus, True))))
    ids_bytes = sum(f.stat().st_size for f in cache.glob("*.ids"))
    print(
        f"\n1. preparation (lmtrain prepare, empty cache): {prep.seconds:.1f} s, "
        f"{size / MB / prep.seconds:.1f} MB/s of text, peak RSS {prep.peak_rss_mb:,.0f} MB; "
        f"ids file {ids_bytes / MB:,.0f} MB"
    )

    floor = run_measured(lmtrain("fit", str(config("floor", tiny, False)), "--quiet"))
    memory = run_measured(lmtrain("fit", str(config("memory", corpus, False)), "--quiet"))
    warm = run_measured(lmtrain("fit", str(config("warm", corpus, True)), "--quiet"))
    print("\n2./3. lmtrain fit to its first step and exit (train.max_steps=1, tiny model)")
    print(f"  {'':34} {'seconds':>8} {'peak RSS MB':>12} {'data MB':>9}")
    for label, m in (
        ("floor (tiny corpus, no cache)", floor),
        ("today: data.cache_dir null", memory),
        ("prepared, warm cache", warm),
    ):
        data_mb = m.peak_rss_mb - floor.peak_rss_mb
        print(f"  {label:34} {m.seconds:8.2f} {m.peak_rss_mb:12,.0f} {data_mb:9,.0f}")
    print(
        f"  start-up: warm cache {warm.seconds:.2f} s against {memory.seconds:.2f} s today "
        f"({memory.seconds / warm.seconds:.1f}x faster; goal under 5 s)"
    )
    memory_data = max(memory.peak_rss_mb - floor.peak_rss_mb, 1e-9)
    warm_data = warm.peak_rss_mb - floor.peak_rss_mb
    print(
        f"  memory attributable to data: {warm_data:,.0f} MB against {memory_data:,.0f} MB today "
        f"({warm_data / memory_data:.2f} of today's)"
    )

    if a.no_dist:
        return
    print(
        f"\n4. torchrun --nproc_per_node={a.ranks} on CPU, train.max_steps={a.steps}: total over ranks"
    )
    print(f"  {'':34} {'seconds':>8} {'PSS MB':>9} {'USS MB':>9} {'RSS MB':>9} {'data PSS':>9}")
    jobs = [("floor (tiny corpus, no cache)", tiny, False)]
    if not a.no_dist_baseline:
        jobs.append(("today: data.cache_dir null", corpus, False))
    jobs.append(("prepared, warm cache", corpus, True))
    results: dict[str, DistMemory] = {}
    for i, (label, train, cached) in enumerate(jobs):
        m = run_torchrun(config(f"dist{i}", train, cached, a.steps), a.ranks, a.dist_timeout)
        if isinstance(m, str):
            print(f"  {label:34} {m}")
            continue
        results[label] = m
        floor_pss = results[jobs[0][0]].pss_mb if jobs[0][0] in results else 0.0
        print(
            f"  {label:34} {m.seconds:8.2f} {m.pss_mb:9,.0f} {m.uss_mb:9,.0f} {m.rss_mb:9,.0f} "
            f"{m.pss_mb - floor_pss:9,.0f}"
        )
    floor_label, warm_label, today_label = (
        jobs[0][0],
        "prepared, warm cache",
        "today: data.cache_dir null",
    )
    if floor_label not in results or warm_label not in results:
        return
    floor_pss = results[floor_label].pss_mb
    warm_data = results[warm_label].pss_mb - floor_pss
    print(
        f"  data across {a.ranks} ranks, prepared: {warm_data:,.0f} MB PSS = "
        f"{warm_data / max(ids_bytes / MB, 1e-9):.2f} copies of the ids file"
    )
    if today_label in results:
        today = results[today_label].pss_mb - floor_pss
        print(
            f"  today: {today:,.0f} MB PSS ({today / max(warm_data, 1e-9):.1f}x the prepared path)"
        )


if __name__ == "__main__":
    main()
