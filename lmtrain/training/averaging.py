"""Weight averaging as an object the loop calls: none, or NT-ASGD.

NT-ASGD (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language Models"):
SGD until validation stalls, then averaged SGD (Polyak averaging of the iterates). The switch
fires at an evaluation whose validation loss is worse than the best of all evaluations except
the last `train.nonmono` ones (AWD-LSTM's non-monotone trigger). From then on every step updates
a running mean of the weights; evaluation, `best.pt` and the checkpoint's `model` hold that mean,
so `lmtrain eval` / `sample` use it unchanged. The raw weights, the mean, its count and the
validation history are saved too (the checkpoint's `averager`), so resume is exact.

A small class rather than torch.optim.swa_utils.AveragedModel: the checkpoint stores the mean in
the model's own state_dict layout next to the raw weights, and the loop evaluates the mean by
swapping it into the model in place, which a separate averaged copy of the module would not
make simpler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from lmtrain.config import TrainConfig
from lmtrain.errors import CheckpointError
from lmtrain.models import LanguageModel

Weights = dict[str, torch.Tensor]


class NoAveraging:
    """The model's own weights are the ones evaluated and saved."""

    def after_step(self) -> None:
        """Nothing to update."""

    @contextlib.contextmanager
    def evaluated(self) -> Iterator[None]:
        yield

    def on_validation(self, loss: float) -> str | None:
        return None

    def checkpoint(self, weights: Weights) -> tuple[Weights, dict[str, Any] | None]:
        """(the checkpoint's `model`, its `averager` field) given the model's state_dict."""
        return weights, None

    def restore(self, averager: dict[str, Any] | None) -> None:
        """Nothing saved, nothing to restore."""


class NTASGD:
    """The running mean of the weights, started by the non-monotone trigger."""

    def __init__(self, model: LanguageModel, nonmono: int) -> None:
        self.model = model
        self.nonmono = nonmono
        self.averaging = False
        self.count = 0
        self.history: list[float] = []
        """Validation losses of every evaluation so far."""
        self.mean: list[torch.Tensor] = []

    def _params(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def _start(self) -> None:
        self.averaging = True
        self.mean = [p.detach().clone() for p in self._params()]
        self.count = 1

    def after_step(self) -> None:
        if self.averaging:
            self.count += 1
            with torch.no_grad():
                for a, p in zip(self.mean, self._params(), strict=True):
                    a.add_(p.detach() - a, alpha=1.0 / self.count)

    def _swap(self) -> None:
        with torch.no_grad():
            for a, p in zip(self.mean, self._params(), strict=True):
                tmp = p.detach().clone()
                p.copy_(a)
                a.copy_(tmp)

    @contextlib.contextmanager
    def evaluated(self) -> Iterator[None]:
        """The mean in the model for the `with` block (while averaging), the raw weights after."""
        if not self.averaging:
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def on_validation(self, loss: float) -> str | None:
        """Record a validation loss; a message when it starts the averaging."""
        n, h = self.nonmono, self.history
        message = None
        if not self.averaging and len(h) > n and loss > min(h[:-n]):
            self._start()
            message = (
                f"NT-ASGD: validation {loss:.4f} is worse than the best before the last {n} "
                f"evaluations ({min(h[:-n]):.4f}); averaging from now"
            )
        h.append(loss)
        return message

    def checkpoint(self, weights: Weights) -> tuple[Weights, dict[str, Any] | None]:
        averager: dict[str, Any] = {
            "averaging": self.averaging,
            "count": self.count,
            "history": list(self.history),
        }
        if not self.averaging:
            return weights, averager
        averager["raw"] = weights
        by_param = {id(p): a for p, a in zip(self._params(), self.mean, strict=True)}
        mean = self.model.state_dict()
        for name, p in self.model.named_parameters(remove_duplicate=False):
            mean[name] = by_param[id(p)].clone()
        return mean, averager

    def restore(self, averager: dict[str, Any] | None) -> None:
        """Continue from a checkpoint whose `model` (the mean, while averaging) is loaded."""
        # The checkpoint was validated on load (types, and `raw` present while averaging).
        averager = averager or {}
        self.history = [float(v) for v in averager.get("history", [])]
        if averager.get("averaging"):
            self._start()  # the mean is what was just loaded ...
            self.count = int(averager["count"])
            try:
                self.model.load_state_dict(averager["raw"])  # ... and training continues from raw
            except RuntimeError as e:
                detail = " ".join(str(e).split())[:500]
                raise CheckpointError(
                    f"cannot resume: the checkpoint's NT-ASGD raw weights do not fit this model "
                    f"({detail}). Resume with the settings it was trained with."
                ) from None


Averager = NoAveraging | NTASGD


def build_averager(cfg: TrainConfig, model: LanguageModel) -> Averager:
    if cfg.optimizer == "ntasgd":
        return NTASGD(model, cfg.nonmono)
    return NoAveraging()
