"""Adaptive softmax output layer for large word vocabularies (Grave et al. 2017, "Efficient
softmax approximation for GPUs").

Ids are split by the cutoffs into a head (the frequent words, plus one entry per tail cluster)
and tail clusters whose projections shrink by `div_value` each. Frequent words then cost one
small matrix product, rare ones two. The vocabulary orders ids by frequency (specials first), so
cutoffs by id are cutoffs by frequency. The maths is torch.nn.AdaptiveLogSoftmaxWithLoss; this
class only gives it the interface every output layer here shares (`nll`, `token_nll`,
`log_probs`), so training, evaluation, scoring and sampling need no special case.

The cutoffs a model uses are `AdaptiveSoftmaxConfig.cutoffs_for(vocab_size)`: a function of the
config and the vocabulary, both of which every checkpoint holds, so a resumed or evaluated model
is rebuilt with the same clusters. `cutoffs_note` is the line that tells the user when they
differ from the configured list.
"""

from __future__ import annotations

import torch
from torch import nn

from lmtrain.models.config import AdaptiveSoftmaxConfig


class AdaptiveSoftmaxOutput(nn.Module):
    def __init__(
        self, in_features: int, vocab_size: int, cutoffs: list[int], div_value: float = 4.0
    ) -> None:
        super().__init__()
        check_cutoffs(cutoffs, vocab_size)
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(
            in_features, vocab_size, cutoffs=list(cutoffs), div_value=div_value
        )

    def target_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, H), (N,) -> (N,) log-probability of each target, in fp32."""
        # Padding targets (id 0) are scored like any head word and masked by the callers:
        # multiplying by a mask keeps the shapes static, where dropping rows would need the
        # count of real targets on the host (a device sync). torch's adaptive softmax mixes
        # dtypes under autocast (index_copy_ of bf16 rows into an fp32 buffer), so it runs in
        # fp32 even in a mixed-precision step.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.asm(hidden.float(), targets).output

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token NLL (N,), 0 where the target is padding."""
        real = (targets != 0).to(torch.float32)
        return -self.target_log_probs(hidden, targets) * real

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of `targets` (N,), skipping padding (id 0)."""
        return self.token_nll(hidden, targets).sum()

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, V) natural-log probabilities over the whole vocabulary."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.asm.log_prob(hidden.float())


def check_cutoffs(cutoffs: list[int], vocab_size: int) -> None:
    """Cutoffs must be increasing ids inside the vocabulary; say so with the numbers if not.

    A checked config never fails here (ModelConfig.problems refuses unordered cutoffs and
    `cutoffs_for` drops those past the vocabulary), so this guards direct callers only.
    """
    increasing = all(x < y for x, y in zip(cutoffs, cutoffs[1:], strict=False))
    if not cutoffs or not increasing or cutoffs[0] < 1 or cutoffs[-1] >= vocab_size:
        raise ValueError(
            f"model.adaptive_softmax.cutoffs: must be increasing ids between 1 and "
            f"{vocab_size - 1} (the vocabulary has {vocab_size} entries), got {cutoffs}; "
            "lower the cutoffs or set data.max_size/min_freq so the vocabulary is larger"
        )


def cutoffs_note(a: AdaptiveSoftmaxConfig, vocab_size: int) -> str | None:
    """The line saying which cutoffs a vocabulary of `vocab_size` got; None when they are the
    configured list unchanged (or there is no adaptive softmax at all)."""
    used = a.cutoffs_for(vocab_size)
    shown = f"using {used}" if used else "using the full softmax"
    if a.cutoffs and used != a.cutoffs:
        return (
            f"model.adaptive_softmax.cutoffs {a.cutoffs}: the vocabulary has only "
            f"{vocab_size:,} entries, so {shown}"
        )
    if not a.cutoffs and a.auto:
        return f"model.adaptive_softmax.auto: {shown} for a vocabulary of {vocab_size:,}"
    return None
