"""Where numbers go: TensorBoard scalars and text, a tqdm bar, one console line per evaluation.

TensorBoard tags use the same names as everywhere else: train/loss, train/ppl, val/loss, val/ppl,
val/bpc (characters), lr, grad_norm (before clipping), tokens_per_sec.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmtrain.evaluate import EvalResult


class RunLogger:
    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        total_steps: int,
        initial_step: int,
        quiet: bool,
        echo: Callable[[str], None],
        purge_step: int | None = None,
    ) -> None:
        self.echo = echo
        self.writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: after a resume, events a crashed run wrote past the checkpoint are
            # hidden, so every step appears exactly once.
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)
        # The bar goes to stderr, but only when a person is watching: both streams on a terminal.
        show_bar = not quiet and sys.stdout.isatty() and sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            disable=not show_bar,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, v in values.items():
                self.writer.add_scalar(tag, v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            # Indented: TensorBoard renders text as Markdown, which would eat line breaks.
            self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def train_point(
        self, step: int, loss: float, lr: float, grad_norm: float, tokens_per_sec: float
    ) -> None:
        ppl = math.exp(min(loss, 700.0))
        self.scalars(
            step,
            {
                "train/loss": loss,
                "train/ppl": ppl,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_sec": tokens_per_sec,
            },
        )
        self.bar.set_postfix(loss=f"{loss:.3f}", ppl=f"{ppl:.1f}", tok_s=f"{tokens_per_sec:,.0f}")

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def evaluation(
        self, step: int, epoch: int, train_seconds: float, result: EvalResult, best: bool
    ) -> None:
        values = {"val/loss": result.loss, "val/ppl": result.ppl}
        if result.kind == "char":
            values["val/bpc"] = result.bpc
        self.scalars(step, values)
        mark = " | new best" if best else ""
        # Training minutes so far (evaluation excluded): what time-to-quality is read from.
        self.message(
            f"step {step} | epoch {epoch + 1} | {train_seconds / 60:.1f} min | "
            f"val {result.summary()}{mark}"
        )

    def message(self, line: str) -> None:
        if self.bar.disable:
            self.echo(line)
        else:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
