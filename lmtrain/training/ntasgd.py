"""AWD-LSTM training techniques (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM
Language Models"): activation regularisation (AR), temporal activation regularisation (TAR) and
non-monotonically triggered averaged SGD (NT-ASGD).

Weight drop lives in models/weight_drop.py and variable-length BPTT in data/variable_bptt.py;
this module holds what touches the loss and the optimiser.
"""

from __future__ import annotations

from typing import Any

import torch

from lmtrain.checkpoint import Checkpoint
from lmtrain.data import Batch
from lmtrain.errors import CheckpointError
from lmtrain.evaluation.stream import EvalResult
from lmtrain.training.loop import Trainer


def activation_penalty(
    dropped: torch.Tensor, raw: torch.Tensor, mask: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """alpha * AR + beta * TAR over the real (mask) positions of one window.

    dropped, raw: (T, B, H) last-layer outputs after and before dropout; mask: (T, B) bool.
    AR = mean of dropped**2 penalises large activations; TAR = mean of (h_t - h_{t-1})**2 on the
    undropped output penalises fast changes of the state (AWD-LSTM eq. 4 and 5, as in their
    code: AR on the dropped output, TAR on the undropped one). Padding never counts, and TAR
    only uses pairs of consecutive real positions.
    """
    h = dropped.size(-1)
    penalty = dropped.new_zeros(())
    if alpha > 0:
        m = mask.unsqueeze(-1).to(dropped.dtype)  # (T, B, 1)
        penalty = penalty + alpha * (dropped.pow(2) * m).sum() / (m.sum() * h).clamp_min(1)
    if beta > 0 and raw.size(0) > 1:
        pair = (mask[1:] & mask[:-1]).unsqueeze(-1).to(raw.dtype)  # (T-1, B, 1)
        step = (raw[1:] - raw[:-1]).pow(2)
        penalty = penalty + beta * (step * pair).sum() / (pair.sum() * h).clamp_min(1)
    return penalty


class NTASGDTrainer(Trainer):
    """SGD until validation stalls, then averaged SGD (Polyak averaging of the iterates).

    The switch fires at an evaluation whose validation loss is worse than the best of all
    evaluations except the last `train.nonmono` ones (AWD-LSTM's non-monotone trigger). From then
    on every step updates a running mean of the weights; evaluation, `best.pt` and the
    checkpoint's `model` hold that mean, so `lmtrain eval` / `sample` use it unchanged. The raw
    weights, the mean, its count and the validation history are saved too, so resume is exact.
    """

    averaging: bool = False
    avg_count: int = 0
    val_history: list[float]
    avg: list[torch.Tensor]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.val_history = []
        self.avg = []

    def _params(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def start_averaging(self) -> None:
        self.averaging = True
        self.avg = [p.detach().clone() for p in self._params()]
        self.avg_count = 1

    def train_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().train_step(batch)
        if self.averaging:
            self.avg_count += 1
            with torch.no_grad():
                for a, p in zip(self.avg, self._params(), strict=True):
                    a.add_(p.detach() - a, alpha=1.0 / self.avg_count)
        return out

    def _swap(self) -> None:
        with torch.no_grad():
            for a, p in zip(self.avg, self._params(), strict=True):
                tmp = p.detach().clone()
                p.copy_(a)
                a.copy_(tmp)

    def evaluate(self) -> EvalResult | None:
        if self.averaging:
            self._swap()
            try:
                result = super().evaluate()
            finally:
                self._swap()
        else:
            result = super().evaluate()
        if result is None:
            return None
        n = self.cfg.train.nonmono
        h = self.val_history
        if not self.averaging and len(h) > n and result.loss > min(h[:-n]):
            self.start_averaging()
            self.logger.message(
                f"step {self.progress.step} | NT-ASGD: validation {result.loss:.4f} is worse than "
                f"the best before the last {n} evaluations ({min(h[:-n]):.4f}); averaging from now"
            )
        h.append(result.loss)
        return result

    def _averaged_state(self) -> dict[str, torch.Tensor]:
        by_param = {id(p): a for p, a in zip(self._params(), self.avg, strict=True)}
        state = self.model.state_dict()
        for name, p in self.model.named_parameters(remove_duplicate=False):
            state[name] = by_param[id(p)].clone()
        return state

    def payload(self) -> Checkpoint:
        ck = super().payload()
        averager: dict[str, Any] = {
            "averaging": self.averaging,
            "count": self.avg_count,
            "history": list(self.val_history),
        }
        if self.averaging:
            averager["raw"] = ck.model
            ck.model = self._averaged_state()
        ck.averager = averager
        return ck

    def restore(self, ck: Checkpoint) -> None:
        super().restore(ck)  # loads `model`: the averaged weights while averaging
        # The checkpoint was validated on load (types, and `raw` present while averaging).
        averager = ck.averager or {}
        self.val_history = [float(v) for v in averager.get("history", [])]
        if averager.get("averaging"):
            self.start_averaging()  # the mean is what was just loaded ...
            self.avg_count = int(averager["count"])
            try:
                self.model.load_state_dict(averager["raw"])  # ... and training continues from raw
            except RuntimeError as e:
                detail = " ".join(str(e).split())[:500]
                raise CheckpointError(
                    f"cannot resume: the checkpoint's NT-ASGD raw weights do not fit this model "
                    f"({detail}). Resume with the settings it was trained with."
                ) from None
