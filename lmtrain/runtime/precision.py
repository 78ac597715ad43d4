"""Mixed precision and the fast GPU path: autocast, gradient scaling, contiguous cuDNN weights.

`train.precision` picks the arithmetic of the forward pass:

- fp32: everything in float32 (the default, and the reference for every figure).
- bf16: matmuls and the recurrent kernel under autocast in bfloat16; it has float32's exponent
  range, so no loss scaling is needed. Softmax and the loss stay in float32 (autocast's policy).
- fp16: as bf16 but float16, whose narrow range can flush small gradients to zero, so the loss is
  scaled up before backward and the gradients unscaled before clipping (torch.amp.GradScaler;
  Micikevicius et al. 2018, "Mixed Precision Training"). A step with inf/nan gradients is
  skipped and the scale lowered.

Not every recurrent kernel has a reduced-precision version (oneDNN's CPU LSTM has no fp16 one,
for instance). `Amp.for_model` runs one tiny forward and backward of the model's recurrent
layer under the requested precision first; if the kernel is missing, training falls back to fp32
with a message that says so, instead of failing at the first step.

- auto: bf16 where the device multiplies bf16 matrices natively (a GPU of compute capability 8.0
  or newer; a CPU with AMX-BF16 or AVX512-BF16), fp32 elsewhere, where bf16 products are
  emulated and slower than fp32 ones. The choice and its reason are one line of the run's output.
  The default stays fp32: the recipes and their figures were tuned and measured in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# CPU features that multiply bf16 matrices in hardware, as torch.cpu.get_capabilities() and
# /proc/cpuinfo name them, and as the user reads them.
_CPU_BF16 = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


@dataclass(frozen=True)
class Choice:
    """What `train.precision: auto` resolves to on a device, and why."""

    precision: str
    """fp32 or bf16."""
    reason: str

    def describe(self) -> str:
        return f"train.precision=auto: {self.precision} ({self.reason})"


def choose_precision(device: torch.device) -> Choice:
    """The `auto` rule: bf16 where the device has native bf16 matrix products, else fp32."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8 and torch.cuda.is_bf16_supported():
            return Choice("bf16", f"GPU {name}, compute capability {major}.{minor}, has bf16 units")
        return Choice(
            "fp32", f"GPU {name}, compute capability {major}.{minor}, has no native bf16 products"
        )
    if device.type == "cpu":
        features = cpu_bf16_features()
        if features:
            return Choice("bf16", f"this CPU has {' and '.join(features)}")
        return Choice(
            "fp32",
            "this CPU has no AVX512-BF16 or AMX; bf16 products would be slower than fp32",
        )
    return Choice("fp32", f"no bf16 rule for device type {device.type}")


def cpu_bf16_features() -> list[str]:
    """This CPU's bf16 matrix instructions (e.g. ["AMX-BF16", "AVX512-BF16"]); [] if none."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        found = caps()
        return [label for key, label in _CPU_BF16.items() if found.get(key, False)]
    # Older torch: the kernel's flags (Linux only; elsewhere no claim is made).
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.exists():
        return []
    return cpuinfo_bf16_features(cpuinfo.read_text())


def cpuinfo_bf16_features(cpuinfo: str) -> list[str]:
    """The bf16 matrix instructions named on the first `flags` line of /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return [label for key, label in _CPU_BF16.items() if key in flags]
    return []


@dataclass
class Amp:
    """The precision a run actually uses, and the three places where it matters in a step."""

    device: torch.device
    dtype: torch.dtype | None = None
    """Autocast dtype; None = plain fp32."""
    scaler: torch.amp.GradScaler | None = None
    notes: list[str] = field(default_factory=list)
    """Messages for the user: fallbacks and what was chosen."""

    @classmethod
    def for_model(cls, precision: str, device: torch.device, recurrent: nn.Module) -> Amp:
        if precision == "auto":
            return cls._auto(device, recurrent)
        if precision == "fp32":
            return cls(device)
        dtype = _DTYPES[precision]
        reason = _unsupported(precision, dtype, device, recurrent)
        if reason is not None:
            return cls(
                device,
                notes=[
                    f"train.precision={precision}: {reason}; training in fp32 instead "
                    "(set train.precision=fp32 to silence this, or use bf16 on a GPU)"
                ],
            )
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        return cls(device, dtype, scaler, [f"mixed precision: {precision} autocast"])

    @classmethod
    def _auto(cls, device: torch.device, recurrent: nn.Module) -> Amp:
        choice = choose_precision(device)
        if choice.precision == "fp32":
            return cls(device, notes=[choice.describe()])
        reason = _unsupported("bf16", torch.bfloat16, device, recurrent)
        if reason is not None:
            fallback = Choice("fp32", f"{choice.reason}, but {reason}")
            return cls(device, notes=[fallback.describe()])
        return cls(device, torch.bfloat16, None, [choice.describe()])

    @property
    def precision(self) -> str:
        """The precision this run trains in: fp32, bf16 or fp16 (never auto)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass and the loss (never for backward or the optimiser)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true size; must come before clipping or measuring."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            # Skips the update when unscale_ found inf/nan, then adapts the scale; no host sync.
            self.scaler.step(optimizer)
            self.scaler.update()

    def skip(self) -> None:
        """A step abandoned after unscale(): reset the scaler's per-step bookkeeping."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _unsupported(
    precision: str, dtype: torch.dtype, device: torch.device, recurrent: nn.Module
) -> str | None:
    """Why `precision` cannot run here, or None when a tiny forward+backward succeeds."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return f"GPU {torch.cuda.get_device_name(device)} has no bfloat16 support"
    probe = copy.deepcopy(recurrent)
    size = _input_size(probe)
    if size is None:
        return None
    x = torch.randn(3, 2, size, device=device, requires_grad=True)
    try:
        with torch.autocast(device.type, dtype=dtype):
            out = _first_tensor(probe(x, _zero_state(probe, 2, device)))
        out.float().sum().backward()
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"the recurrent kernel on {device.type} has no {precision} support ({first})"
    return None


def _input_size(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, nn.RNNBase):
            return m.input_size
    return None


def _zero_state(module: nn.Module, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    for m in module.modules():
        if isinstance(m, nn.RNNBase):
            shape = (m.num_layers, batch, m.hidden_size)
            parts = 2 if isinstance(m, nn.LSTM) else 1
            return tuple(torch.zeros(shape, device=device) for _ in range(parts))
    raise AssertionError("no recurrent layer")  # _input_size found one


def _first_tensor(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


def flatten_rnn_weights(model: nn.Module) -> None:
    """Keep every cuDNN RNN's weights in one contiguous buffer.

    cuDNN wants all of a layer's weights in a single block; when they are not (after moving the
    model, loading weights or wrapping it for DDP) every call warns and copies them. Moving with
    `.to()` already flattens; this makes sure after the other cases too. A no-op on CPU.
    """
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            m.flatten_parameters()
