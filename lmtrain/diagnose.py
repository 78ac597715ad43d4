"""Gradient flow: how much of the loss at the last step reaches the hidden state T - t steps back.

For a window of T tokens the model reads them one step at a time, keeping every hidden state
h_t; the loss L_T is the NLL of the token after the last one, and one backward pass gives
dL_T/dh_t for every t. Its norm against the distance T - t shows the lecture's point directly:
in a tanh RNN it shrinks geometrically (vanishing gradients) or grows (exploding), while the
LSTM's and GRU's additive state updates keep it alive over many more steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmtrain.config import GradientFlowOptions, load_config, require_valid
from lmtrain.data import StreamBatches, read_text
from lmtrain.data.prepare import load_corpus
from lmtrain.errors import DataError, LmtrainError
from lmtrain.evaluation.reading import evaluating
from lmtrain.models import LanguageModel, build_model

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


@dataclass
class FlowCurve:
    label: str
    norms: list[float]
    """norms[d] = mean over the batch rows of ||dL_T/dh_{T-d}||, for d = 0 .. T-1."""


def gradient_flow(model: LanguageModel, inputs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """inputs, targets (T, B) -> ||dL_T/dh_t|| by distance T - t (h: every layer's hidden state).

    The model runs in eval mode, so dropout does not add noise to the measurement.
    """
    steps, batch = inputs.shape
    device = next(model.parameters()).device
    inputs, targets = inputs.to(device), targets.to(device)
    hs: list[torch.Tensor] = []
    with evaluating(model, grad=True):
        x = model.embedding(inputs)  # (T, B, E)
        state = model.init_state(batch, device)
        for t in range(steps):
            # One step at a time so that each h_t is a tensor of its own in the graph.
            _, state = model.rnn(x[t : t + 1], state)
            state[0].retain_grad()
            hs.append(state[0])  # (L, B, H)
        # The loss reads the top layer's h_T itself (equal to the output unless model.residual
        # adds the layer input to it), so that distance 0 is measured like every other distance.
        loss = model.output.nll(hs[-1][-1], targets[-1])
        model.zero_grad(set_to_none=True)
        loss.backward()
        model.zero_grad(set_to_none=True)
    norms = []
    for d in range(steps):
        grad = hs[steps - 1 - d].grad
        g = (
            torch.zeros(batch, device=device)
            if grad is None
            else grad.transpose(0, 1).reshape(batch, -1).norm(dim=1)
        )
        norms.append(float(g.mean()))
    return norms


def _window(
    spec: str, ids: torch.Tensor, steps: int, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first (steps, batch) window of `ids`, the text `spec` names."""
    try:
        first = next(StreamBatches(ids, batch, steps).batches())
    except (ValueError, StopIteration):
        raise DataError(
            f"{spec}: too little text for {batch} rows of {steps} tokens ({ids.numel()} tokens); "
            "lower --steps or --batch"
        ) from None
    if first.inputs.size(0) < steps:
        raise DataError(
            f"{spec}: too little text for {batch} rows of {steps} tokens; lower --steps"
        )
    return first.inputs, first.targets


def curves_for(target: Path, overrides: list[str], options: GradientFlowOptions) -> list[FlowCurve]:
    """One curve per cell: a trained run (its own cell), or a config (fresh weights per cell)."""
    from lmtrain.checkpoint import load_model

    require_valid(options)
    _check_tensorboard_dir(tensorboard_dir(options))  # before the measurement, which takes a while
    cells, steps, batch = options.cell, options.steps, options.batch
    if target.is_dir() or target.suffix == ".pt":
        if cells or overrides:
            raise LmtrainError(
                f"{target} is a trained run: its cell and settings are fixed; --cell and "
                "overrides apply to a config file"
            )
        model, vocab, cfg = load_model(target)
        spec = cfg.data.valid or cfg.data.train
        ids = vocab.encode(read_text(spec, "valid", cfg.data.decode_errors)).ids
        inputs, targets = _window(spec, ids, steps, batch)
        return [FlowCurve(f"{cfg.model.cell} (trained)", gradient_flow(model, inputs, targets))]
    cfg = load_config(target, overrides)
    # Each cell through the config loader, before any data is read, so that a misspelt cell or
    # a clash (leak with lstm) is refused at once.
    per_cell = {c: load_config(target, [*overrides, f"model.cell={c}"]) for c in cells}
    if not per_cell:
        per_cell = {cfg.model.cell: cfg}
    # The vocabulary and ids training would use (the same tokeniser, the same cache).
    corpus = load_corpus(cfg.data)
    split = corpus.valid if corpus.valid is not None else corpus.train
    spec = cfg.data.valid or cfg.data.train
    inputs, targets = _window(spec, split.ids, steps, batch)
    curves = []
    for cell, cell_cfg in per_cell.items():
        torch.manual_seed(cfg.train.seed)  # each cell starts from its own seeded initialisation
        model = build_model(cell_cfg.model, len(corpus.vocab))
        curves.append(FlowCurve(cell, gradient_flow(model, inputs, targets)))
    return curves


def title(options: GradientFlowOptions) -> str:
    """The figure's title: what was measured, on how long a window and how many rows."""
    return (
        "Gradient of the loss at step $T$ reaching $h_t$ "
        f"($T$ = {options.steps}, {options.batch} rows)"
    )


def table(curves: list[FlowCurve], steps: int) -> list[str]:
    """The console table: one row per distance T - t (a few up to the window), one column per curve."""
    shown = [d for d in (0, 1, 2, 5, 10, 20, 50, 100, 200) if d < steps]
    lines = ["steps back  " + "  ".join(f"{c.label:>12s}" for c in curves)]
    for d in shown:
        lines.append(f"{d:10d}  " + "  ".join(f"{c.norms[d]:12.3e}" for c in curves))
    return lines


def tensorboard_dir(options: GradientFlowOptions) -> Path:
    """Where the TensorBoard scalars go: options.tensorboard, else beside the PNG."""
    if options.tensorboard is not None:
        return Path(options.tensorboard)
    out = Path(options.out)
    return out.with_name(out.stem + "-tb")


def write_tensorboard(
    curves: list[FlowCurve], directory: Path, image: npt.NDArray[np.uint8] | None = None
) -> None:
    """Scalars gradient_flow/<label> with the distance T - t as the step, and the figure.

    image: the figure as an (H, W, 3) uint8 array, shown as gradient_flow/figure beside them.
    """
    from torch.utils.tensorboard import SummaryWriter

    _check_tensorboard_dir(directory)
    try:
        writer = SummaryWriter(str(directory))
    except OSError as e:
        raise LmtrainError(
            f"{directory}: cannot write the TensorBoard folder ({e.strerror or e}); give "
            "--tensorboard a folder that can be written"
        ) from None
    try:
        for curve in curves:
            tag = "gradient_flow/" + curve.label.split(" ")[0]
            for d, n in enumerate(curve.norms):
                writer.add_scalar(tag, n, d)
        if image is not None:
            writer.add_image("gradient_flow/figure", image, 0, dataformats="HWC")
    finally:
        writer.close()


def _check_tensorboard_dir(directory: Path) -> None:
    if (directory.exists() or directory.is_symlink()) and not directory.is_dir():
        raise LmtrainError(
            f"{directory}: exists and is not a folder; TensorBoard writes a folder of event "
            "files there. Give --tensorboard a new or existing folder, or move the file away."
        )
