"""The evaluation's part of the config: the figures an evaluation gives, by name. It imports
nothing of lmtrain, so `lmtrain plot --metric` (config/commands.py) and the plots' axis labels
(plot.py) read the names from here; EvalResult.figures (stream.py) computes them."""

from __future__ import annotations

FIGURES: dict[str, str] = {
    "loss": "validation loss (nats per token)",
    "ppl": "validation perplexity",
    "bpc": "validation bits per character",
    "bpb": "validation bits per byte of text",
}
"""Each figure by name, with what it measures (a plot's axis label)."""
