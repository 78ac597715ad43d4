"""Multi-process training under torchrun: DistributedDataParallel with NCCL on GPUs, Gloo on CPUs.

    torchrun --nproc_per_node=4 -m lmtrain fit CONFIG            # one machine, 4 processes
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m lmtrain fit CONFIG   # two machines

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `init` reads them, so the same command line works
with one process or many. What changes with several processes:

- `train.batch_size` stays the GLOBAL batch: rank r reads rows r, r + world, ... of it
  (`shard`): in stream mode B / world of the parallel streams, in sentences mode its share of
  each batch's sequences. A step sees exactly the rows one process would see, and each rank's
  loss is weighted so that DDP's averaged gradients equal the single-process gradient of the
  global mean loss.
- Logged training losses are summed over ranks token-weighted (one all-reduce per logging
  interval, never per step). Validation is computed exactly, once, on rank 0 and broadcast, so
  every rank agrees on the figure, the plateau schedule and the best checkpoint.
- Only rank 0 creates the run directory, logs, writes TensorBoard and checkpoints. A checkpoint
  holds the full batch's carried state and every rank's RNG state, gathered at save time, so a
  resumed run continues exactly, whichever machine holds the file (rank 0 reads and broadcasts).
- Collectives time out after `train.dist_timeout` seconds, and a failed collective (a rank died,
  the network dropped) stops every process with `DistributedError` instead of hanging.

One process gets a `LocalContext` with the same methods, so the training loop never asks
whether it is distributed. The module is a little long (about 300 lines) because the two
contexts belong side by side: a method added to one must be added to the other.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from lmtrain.errors import LmtrainError
from lmtrain.runtime.device import resolve_device, wants_cuda
from lmtrain.runtime.forward import LossForward, State

T = TypeVar("T")
B = TypeVar("B")


class DistributedError(LmtrainError):
    """Another process of a multi-process run failed or could not be reached."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives; every rank must call each of these at the same point -------------------

    def sum(self, values: list[torch.Tensor | float]) -> list[float]:
        """Sum each value over all ranks with one all-reduce (a host sync: logging points only)."""
        t = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values]
        )
        dist.all_reduce(t)
        return t.tolist()

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and give every rank its result (or its user error)."""
        box: list[Any] = [None]
        error: LmtrainError | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except LmtrainError as e:
                error = e
                box[0] = ("error", str(e), e.exit_code)
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        if error is not None:
            raise error
        if box[0][0] == "error":
            raise DistributedError(f"rank 0 stopped: {box[0][1]}")
        return box[0][1]

    def gather_rows(self, state: State | None) -> State | None:
        """Every rank's carried state -> the global batch's on the host, rows in global order.

        Rank r holds global rows r, r + world, r + 2 world, ... (`shard`), as many as are still
        running, so a rank's part is (L, ceil((B - r) / world), H) for the B running rows, and
        None when it has none. Sentence shards have unequal parts, so they travel as objects.
        """
        parts = self.gather_objects(None if state is None else tuple(s.cpu() for s in state))
        present = [p for p in parts if p is not None]
        if not present:
            return None
        rows = sum(p[0].size(1) for p in present)
        full = tuple(s.new_empty((s.size(0), rows, *s.shape[2:])) for s in present[0])
        for r, part in enumerate(parts):
            if part is not None:
                for f, s in zip(full, part, strict=True):
                    f[:, r :: self.world] = s
        return full

    def my_rows(self, state: State) -> State | None:
        """This rank's rows of a global state (the inverse of gather_rows); None if it has none."""
        mine = tuple(s[:, self.rank :: self.world].contiguous() for s in state)
        return mine if mine[0].size(1) > 0 else None

    def gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def rng_by_rank(self) -> dict[str, Any]:
        """Every rank's torch RNG state, for the checkpoint (`by_rank`), gathered on all ranks."""
        return {"by_rank": self.gather_objects(torch.get_rng_state())}

    def prepare_on_main(self, fn: Callable[[], object]) -> None:
        """Run `fn` on rank 0 while the others wait, so that they find what it prepared.

        Only its effect (files) is shared: what it returns stays on rank 0, because on_main
        would broadcast it, and a tensor of a type pickle cannot rebuild (uint16) would fail on
        the other ranks while rank 0 went on alone.
        """

        def prepare() -> None:
            fn()

        self.on_main(prepare)

    # -- setup: how the job's parts are shared out -------------------------------------------

    def check_batch_size(self, batch_size: int) -> None:
        check_batch_size(batch_size, self)

    def shard(self, batches: B) -> B:
        return shard(batches, self)

    def wrap(self, model: nn.Module) -> nn.Module:
        """LossForward(model) inside DistributedDataParallel."""
        return nn.parallel.DistributedDataParallel(
            LossForward(model, touch_all=True),
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
        )

    def seed_per_rank(self, seed: int) -> None:
        torch.manual_seed(seed + self.rank)  # independent dropout masks per rank

    def describe(self, batch_share: str) -> str:
        """The run summary's note on the processes, each with `batch_share` of a batch."""
        return f"; {self.world} processes, each with {batch_share}"

    def _object_device(self) -> torch.device | None:
        # NCCL moves pickled objects through GPU memory; Gloo through host memory.
        return self.device if self.device.type == "cuda" else None


@dataclass(frozen=True)
class LocalContext:
    """One process: DistContext's methods, each what its collective does for a world of one.

    Training code calls these unconditionally, so it needs no branch for "not distributed".
    """

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return True

    def sum(self, values: list[torch.Tensor | float]) -> list[float]:
        return [float(v) for v in values]

    def on_main(self, fn: Callable[[], T]) -> T:
        return fn()

    def gather_rows(self, state: State | None) -> State | None:
        return state

    def my_rows(self, state: State) -> State | None:
        return state

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def rng_by_rank(self) -> dict[str, Any]:
        return {}  # the checkpoint's `torch` entry is the only RNG state

    def prepare_on_main(self, fn: Callable[[], object]) -> None:
        """Nothing to do ahead: the one process prepares as it goes."""

    def check_batch_size(self, batch_size: int) -> None:
        """Any batch size splits over one process."""

    def shard(self, batches: B) -> B:
        return batches

    def wrap(self, model: nn.Module) -> nn.Module:
        return LossForward(model)

    def seed_per_rank(self, seed: int) -> None:
        """The seed set before the model was built already covers the only process."""

    def describe(self, batch_share: str) -> str:
        return ""


Context = DistContext | LocalContext
"""This process's place in the job: a torchrun rank, or the only process."""


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_spec: str, timeout_s: int) -> Context:
    """Join the process group torchrun describes in the environment, or run as one process."""
    if not in_torchrun():
        return LocalContext(resolve_device(device_spec))
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as e:
        raise DistributedError(
            f"WORLD_SIZE is set but the torchrun environment is incomplete ({e}); launch with "
            "torchrun --nproc_per_node=N -m lmtrain fit CONFIG"
        ) from None
    use_cuda = wants_cuda(device_spec)
    if use_cuda:
        if ":" in device_spec:
            raise DistributedError(
                f"train.device={device_spec} under torchrun: each process uses the GPU of its "
                "LOCAL_RANK; set train.device=cuda (or auto) and choose GPUs with "
                "CUDA_VISIBLE_DEVICES"
            )
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"process {rank} has LOCAL_RANK {local_rank} but this machine shows "
                f"{torch.cuda.device_count()} GPU(s); lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    try:
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s), rank=rank, world_size=world
        )
    except (RuntimeError, ValueError) as e:
        raise DistributedError(
            f"process {rank} of {world} could not join the {backend} process group "
            f"({_first_line(e)}); check MASTER_ADDR/MASTER_PORT or the rendezvous endpoint"
        ) from None
    return DistContext(rank, world, local_rank, device)


def close(ctx: Context) -> None:
    if isinstance(ctx, DistContext) and dist.is_initialized():
        # Leave together: a rank that tears down Gloo while its peer still has the connection
        # open can abort the peer at exit ("terminate called without an active exception").
        with contextlib.suppress(RuntimeError, ValueError):
            dist.barrier()
        dist.destroy_process_group()


def check_batch_size(batch_size: int, ctx: DistContext) -> None:
    if batch_size % ctx.world != 0:
        lower = batch_size // ctx.world * ctx.world
        raise DistributedError(
            f"train.batch_size={batch_size} is the global batch and must split evenly over "
            f"{ctx.world} processes; set train.batch_size to a multiple of {ctx.world} "
            f"(e.g. {lower or ctx.world} or {lower + ctx.world})"
        )


def shard(batches: B, ctx: DistContext) -> B:
    """This rank's share of a batcher, through its `shard(rank, world)` method.

    Every batcher implements `shard(rank, world)`, returning
    a batcher of the same kind that yields only rows rank, rank + world, ... of each global
    batch, with the same number of batches per epoch on every rank. Stream shards hold equal
    token counts, so each rank's mean loss, averaged by DDP, is the global mean. Sentence
    shards do not; their batches carry the global count (`Batch.global_tokens`) and the step
    weights its loss as nll * world / global_tokens.
    """
    return batches.shard(ctx.rank, ctx.world)


@contextlib.contextmanager
def collective_errors(ctx: Context) -> Iterator[None]:
    """Turn a failed collective into a DistributedError that names this process."""
    try:
        yield
    except (dist.DistError, RuntimeError) as e:
        if not isinstance(ctx, DistContext) or not _is_collective_failure(e):
            raise
        raise DistributedError(
            f"process {ctx.rank} of {ctx.world}: lost contact with the other processes "
            f"({_first_line(e)}). Another process probably stopped with an error (see its "
            "output) or was killed; checkpoints already written are intact, so fix the cause "
            "and continue with --resume auto."
        ) from None


def _is_collective_failure(e: BaseException) -> bool:
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return any(
        k in text for k in ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer")
    )


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
