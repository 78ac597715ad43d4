"""The decoder's products and the loss on the reference shape, one alternative against another.

    python scripts/bench_output.py     (also run by `make bench`; about a minute)

Rows N = 700 (bptt 35 x batch 20), hidden H = 200, vocabulary V = 33,278 (WikiText-2): the
measurements behind the choices in lmtrain/models/output.py. Each line is the median over rounds
that call every case of a group in turn, in ms and as a ratio to the group's first line. The
last group is the embedding's gradient: dense (what lmtrain uses) against sparse.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmtrain.models.output import Workspace, fused_linear_cross_entropy
from lmtrain.runtime.threads import configure_threads, describe_machine

N, H, V = 700, 200, 33278
REPS = 7


def group(title: str, flops: float, cases: dict[str, Callable[[], object]]) -> None:
    """Median time of each case over REPS rounds that call every case once (A B C A B C ...)."""
    print(f"\n{title}")
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(REPS):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = None
    for name, t in times.items():
        ms = 1e3 * statistics.median(t)
        base = base or ms
        rate = f"{flops / ms / 1e6:6.1f} GFLOP/s" if flops else ""
        print(f"    {name:44s} {ms:8.1f} ms  {ms / base:5.2f}x  {rate}")


def main() -> None:
    configure_threads(None)
    print(f"machine: {describe_machine()}, load average {os.getloadavg()[0]:.1f}")
    torch.manual_seed(0)
    x, w, b = torch.randn(N, H), torch.randn(V, H) * 0.05, torch.zeros(V)
    w_hv = w.t().contiguous()  # the (H, V) layout
    g = torch.softmax(torch.randn(N, V), dim=1)
    out, gw, gw_hv = torch.empty(N, V), torch.empty(V, H), torch.empty(H, V)
    prod = 2 * N * H * V
    flat = out.view(-1)

    def slabs(cols: int) -> Callable[[], None]:
        def run() -> None:
            for s in range(0, V, cols):
                k = min(cols, V - s)
                torch.addmm(
                    b[s : s + k], x, w[s : s + k].t(), out=flat[s * N : (s + k) * N].view(N, k)
                )

        return run

    group(
        "forward product logits = x W^T + b",
        prod,
        {
            "F.linear, fresh output": lambda: F.linear(x, w, b),
            "addmm into a reused buffer, W (V, H)": lambda: torch.addmm(b, x, w.t(), out=out),
            "addmm into a reused buffer, W (H, V)": lambda: torch.addmm(b, x, w_hv, out=out),
            "slabs of 512 words": slabs(512),
            "slabs of 1,024 words": slabs(1024),
            "slabs of 2,048 words": slabs(2048),
            "slabs of 4,096 words": slabs(4096),
        },
    )
    group(
        "weight-gradient product",
        prod,
        {
            "G^T x into (V, H)": lambda: torch.mm(g.t(), x, out=gw),
            "x^T G into (H, V)": lambda: torch.mm(x.t(), g, out=gw_hv),
        },
    )
    ones = torch.ones(N)
    buf = torch.randn(N, V)
    group(
        "row softmax / loss pieces and the bias gradient over (N, V)",
        0,
        {
            "softmax in place": lambda: torch.softmax(buf, dim=1, out=buf),
            "exp_": lambda: buf.exp_(),
            "logsumexp": lambda: torch.logsumexp(buf, dim=1),
            "amax": lambda: buf.amax(dim=1),
            "bias gradient G.sum(0)": lambda: g.sum(0),
            "bias gradient G^T 1 (mv)": lambda: torch.mv(g.t(), ones),
        },
    )
    xr = x.clone().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    targets = torch.randint(1, V, (N,))
    ws = Workspace()

    def plain() -> None:
        xr.grad = wr.grad = br.grad = None
        F.cross_entropy(F.linear(xr, wr, br), targets, reduction="sum").backward()

    def fused(block_rows: int, slab: int) -> Callable[[], None]:
        def run() -> None:
            xr.grad = wr.grad = br.grad = None
            fused_linear_cross_entropy(xr, wr, br, targets, ws, block_rows * V, slab).backward()

        return run

    group(
        "decoder + loss, forward and backward",
        3 * prod,
        {
            "F.linear + F.cross_entropy": plain,
            "fused, 700 rows, one slab of all words": fused(700, V),
            "fused, 700 rows, slabs of 512 words": fused(700, 512),
            "fused, 700 rows, slabs of 1,024 words": fused(700, 1024),
            "fused, 700 rows, slabs of 2,048 words": fused(700, 2048),
            "fused, blocks of 175 rows, slabs of 1,024": fused(175, 1024),
        },
    )
    embedding_gradient()


def embedding_gradient() -> None:
    """Embedding backward, gradient norm and clipping, SGD update: dense against sparse rows."""
    ids = torch.randint(0, V, (35, 20))

    def step(sparse: bool) -> Callable[[], None]:
        emb = torch.nn.Embedding(V, H, sparse=sparse)
        opt = torch.optim.SGD(emb.parameters(), lr=1.0)
        probe = torch.randn(H)

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            (emb(ids) @ probe).sum().backward()
            # clip_grad_norm_ has no kernel for sparse gradients: the norm of the stored rows.
            g = emb.weight.grad = emb.weight.grad.coalesce() if sparse else emb.weight.grad
            norm = (g.values() if sparse else g).norm()
            g.mul_(torch.clamp(0.25 / (norm + 1e-6), max=1.0))
            opt.step()

        return run

    group(
        "embedding gradient (V x H) for 700 ids: backward, norm, clip, SGD step",
        0,
        {"dense (nn.Embedding)": step(False), "sparse (nn.Embedding(sparse=True))": step(True)},
    )


if __name__ == "__main__":
    main()
