"""Regenerate the images of the manual (docs/*.png) from real runs, with the commands the pages show.

    python scripts/docs_images.py [--only curves|tensorboard|gradient-flow ...] [--keep DIR]

- docs/curves.png (docs/watching.md, "Figures"): two quickstart runs, an LSTM and a GRU, then
  `lmtrain plot` of both, exactly the three commands of that section (RUNS and PLOT below;
  tests/test_docs.py checks that the page shows these commands).
- docs/tensorboard.png (docs/watching.md, "TensorBoard"): TensorBoard serving both runs' events,
  its validation curves drawn by headless Chromium. Without Chromium it says so and leaves the image as it is.
- docs/gradient_flow.png (docs/toolbox.md, "Gradient flow"): `lmtrain diagnose gradient-flow` on
  the quickstart config, the command that section shows.

The runs take a few minutes on a 2-vCPU CPU (300 steps each). They go into a temporary folder
(--keep DIR keeps them there instead); only the images are written into docs/.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

RUNS = (
    "lmtrain fit quickstart run.dir=runs/lstm train.max_steps=300 train.eval_every=50",
    "lmtrain fit quickstart run.dir=runs/gru model.cell=gru train.max_steps=300 train.eval_every=50",
)
PLOT = "lmtrain plot runs/lstm runs/gru --metric ppl --x minutes --out curves.png"
GRADIENT_FLOW = (
    "lmtrain diagnose gradient-flow configs/quickstart.yaml --cell rnn_tanh --cell lstm --cell gru"
    " --steps 60 --out docs/gradient_flow.png --tensorboard runs/gradient-flow"
)
IMAGES = ("curves", "tensorboard", "gradient-flow")


def lmtrain(command: str, cwd: Path) -> None:
    """Run one `lmtrain ...` command line as the docs show it, with this interpreter's lmtrain."""
    argv = command.split()
    assert argv[0] == "lmtrain", command
    print(f"$ {command}", flush=True)
    subprocess.run([sys.executable, "-m", "lmtrain", *argv[1:]], cwd=cwd, check=True)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lines_drawn(png: Path) -> bool:
    """Whether the GRU run's teal lines are on the screenshot: TensorBoard draws the charts after
    its data arrives, and a screenshot taken before shows empty cards (the legend dots alone
    are a few hundred teal pixels, the curves over a thousand more)."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as image:
        h, s, v = np.moveaxis(np.asarray(image.convert("HSV"))[64:], -1, 0)  # below the header
    teal = int(((h >= 110) & (h <= 150) & (s > 100) & (v > 80)).sum())
    return teal > 1000


def tensorboard_screenshot(runs: Path, out: Path, browser: str) -> None:
    """Serve the two runs with TensorBoard and let headless Chromium draw their validation
    curves (the time series page, filtered to val/bpc and val/ppl, drawn as SVG)."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "tensorboard.main", "--port", str(port),
            "--logdir_spec", f"lstm:{runs / 'lstm'},gru:{runs / 'gru'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("TensorBoard did not start within 60 s") from None
                time.sleep(0.5)
        page = url + "?forceSVG=true&tagFilter=val%2F(bpc%7Cppl)#timeseries"
        for _ in range(5):
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run(
                    [
                        browser, "--headless", "--no-sandbox", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--window-size=1400,700",
                        "--virtual-time-budget=30000", f"--screenshot={out}", page,
                    ],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )  # fmt: skip
            if lines_drawn(out):
                break
        else:
            raise SystemExit(f"TensorBoard drew no curves in 5 tries: see {out}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=IMAGES, default=list(IMAGES))
    ap.add_argument("--keep", type=Path, help="run in this folder and keep the runs")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmtrain-docs-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "gradient-flow" in args.only:
            # configs/ and docs/ as the page shows them, from a folder that links to the checkout's
            (work / "configs").unlink(missing_ok=True)
            (work / "configs").symlink_to(ROOT / "configs")
            lmtrain(GRADIENT_FLOW, work)
            shutil.copyfile(work / "docs" / "gradient_flow.png", DOCS / "gradient_flow.png")
        if {"curves", "tensorboard"} & set(args.only):
            for command in RUNS:
                run_dir = work / command.split("run.dir=")[1].split()[0]
                if not (run_dir / "results.json").exists():
                    lmtrain(command, work)
        if "curves" in args.only:
            lmtrain(PLOT, work)
            shutil.copyfile(work / "curves.png", DOCS / "curves.png")
            print("wrote docs/curves.png")
        if "tensorboard" in args.only:
            browser = chromium()
            if browser is None:
                print("no Chromium on PATH: docs/tensorboard.png left as it is", file=sys.stderr)
            else:
                tensorboard_screenshot(work / "runs", DOCS / "tensorboard.png", browser)


if __name__ == "__main__":
    main()
