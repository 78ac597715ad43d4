"""The output layer: hidden states -> next-token distribution, and the loss.

The softmax lives here, not in the model's forward, so that the loss can be computed in whatever
way is cheapest for the layer (a full softmax today; chunked or adaptive variants plug in with
the same two methods) and the full logits matrix is only built where it is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxOutput(nn.Module):
    """A linear decoder over the whole vocabulary followed by a softmax."""

    def __init__(self, in_features: int, vocab_size: int) -> None:
        super().__init__()
        self.decoder = nn.Linear(in_features, vocab_size)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(hidden)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, V) natural-log probabilities."""
        return F.log_softmax(self.logits(hidden).float(), dim=-1)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of `targets` (N,), skipping padding (id 0)."""
        logits = self.logits(hidden)
        return F.cross_entropy(logits.float(), targets, ignore_index=0, reduction="sum")

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token NLL (N,), 0 where the target is padding."""
        logits = self.logits(hidden)
        return F.cross_entropy(logits.float(), targets, ignore_index=0, reduction="none")
