"""Evaluation-time adaptation: dynamic evaluation and a continuous cache pointer.

Both read the evaluation text once, as one stream, in segments, and both are strictly causal:
the score of a token is fixed before anything derived from that token is used.

Dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models"): after a
segment has been *scored*, take one gradient step on that segment's loss, so the next segments
are predicted by weights adapted to the recent text. `sgd` is their plain rule; `rms` divides the
gradient by the root of a running mean of its square (an online form of their RMS rule, whose
statistics here come from the evaluation text already read, never from what follows).
`decay` pulls the weights back towards the trained ones (their global prior, lambda).

Continuous cache pointer (Grave et al. 2017, "Improving Neural Language Models with a
Continuous Cache"): the last `size` pairs (hidden state h_i, the token that followed it) form a
cache; the token at t gets p = (1 - lambda) p_model + lambda p_cache, with
p_cache(w) proportional to the sum of exp(theta * h_t . h_i) over cached i whose next token was w
(0 for a token the cache has not seen), so the mixture sums to 1 over the vocabulary. Only
positions i < t are in the cache, so the token being predicted is never in it; at the first
position the cache is empty and the model alone predicts.
"""

from __future__ import annotations

import contextlib
import math

import torch

from lmtrain.config import AdaptOptions
from lmtrain.evaluation.reading import evaluating
from lmtrain.evaluation.stream import EvalResult, Progress
from lmtrain.models import LanguageModel, build_model, detach_state


def cache_log_probs(
    query: torch.Tensor,
    keys: torch.Tensor,
    key_targets: torch.Tensor,
    targets: torch.Tensor,
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    size: int,
    theta: float,
) -> torch.Tensor:
    """log p_cache(target) for each query row; -inf where the cache gives the target nothing.

    query (t, H), targets (t,), query_pos (t,); keys (m, H), key_targets (m,), key_pos (m,).
    Key i is visible to query j only when query_pos[j] - size <= key_pos[i] < query_pos[j].
    -inf means either "the target is not among the visible keys' next tokens" (p_cache = 0) or
    "no key is visible yet" (no cache distribution at all); the evaluation tells them apart with
    `_cache_log_probs`, which also returns whether any key is visible.
    """
    log_pc, _ = _cache_log_probs(query, keys, key_targets, targets, query_pos, key_pos, size, theta)
    return log_pc


def _cache_log_probs(
    query: torch.Tensor,
    keys: torch.Tensor,
    key_targets: torch.Tensor,
    targets: torch.Tensor,
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    size: int,
    theta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_cache(target), whether any key is visible) for each query row."""
    scores = theta * (query @ keys.t())  # (t, m)
    visible = (key_pos[None, :] < query_pos[:, None]) & (
        key_pos[None, :] >= query_pos[:, None] - size
    )
    scores = scores.masked_fill(~visible, -math.inf)
    any_visible = visible.any(dim=1, keepdim=True)
    # Rows with no visible key would softmax to NaN; give them zeros, then -inf below.
    log_attn = torch.log_softmax(scores.masked_fill(~any_visible, 0.0), dim=1)
    match = key_targets[None, :] == targets[:, None]  # (t, m)
    log_attn = log_attn.masked_fill(~(match & visible), -math.inf)
    return torch.logsumexp(log_attn, dim=1), any_visible.squeeze(1)


def adaptive_token_nll(
    model: LanguageModel, ids: torch.Tensor, opts: AdaptOptions, progress: Progress | None = None
) -> torch.Tensor:
    """Per-token NLL (len(ids) - 1,) of `ids` read as one stream with the adaptations of `opts`.

    The model passed in is never changed: dynamic evaluation works on a copy. `progress` hears
    the tokens scored after each segment.
    """
    device = next(model.parameters()).device
    if opts.dynamic:
        # A fresh copy (not deepcopy: the model may hold a tensor from a forward with a graph).
        weights = model.state_dict()
        model = build_model(model.cfg, model.vocab_size).to(device)
        model.load_state_dict(weights)
    params = [p for p in model.parameters() if p.requires_grad]
    trained = [p.detach().clone() for p in params] if opts.dynamic_decay > 0 else []
    mean_sq = [torch.zeros_like(p) for p in params] if opts.dynamic_method == "rms" else []
    seg = opts.dynamic_bptt
    n = ids.numel() - 1
    out = torch.empty(n, dtype=torch.float64)
    state = model.init_state(1, device)
    hist_h = torch.empty(0, model.cfg.hidden_size, device=device)
    hist_y = torch.empty(0, dtype=torch.long, device=device)
    hist_pos = torch.empty(0, dtype=torch.long, device=device)
    # Positions are at most n apart, so a larger cache holds nothing more (and the clamp keeps
    # query_pos - size inside int64 for any --cache-size a user types).
    keep = min(opts.cache_size, n)
    log_keep = math.log1p(-opts.cache_lambda) if opts.cache_lambda < 1 else -math.inf
    log_lam = math.log(opts.cache_lambda) if opts.cache_lambda > 0 else -math.inf
    # cuDNN refuses RNN backward in eval mode; dynamic evaluation on a GPU uses the native kernels.
    cudnn_off = (
        torch.backends.cudnn.flags(enabled=False)
        if opts.dynamic and device.type == "cuda"
        else contextlib.nullcontext()
    )
    if progress is not None:
        progress(0, n)
    # Eval mode: no dropout; gradients flow only for dynamic evaluation.
    with evaluating(model, grad=opts.dynamic), cudnn_off:
        for start in range(0, n, seg):
            t = min(seg, n - start)
            x = ids[start : start + t].view(t, 1).to(device)
            y = ids[start + 1 : start + 1 + t].to(device)
            hidden, new_state = model(x, state)  # (t, 1, H)
            h = hidden.reshape(t, -1)
            nll = model.output.token_nll(h, y)  # (t,)
            score = nll.detach().double()
            if opts.cache:
                pos = torch.arange(start, start + t, device=device)
                keys = torch.cat([hist_h, h.detach()])
                key_y = torch.cat([hist_y, y])
                key_pos = torch.cat([hist_pos, pos])
                log_pc, has_cache = _cache_log_probs(
                    h.detach().double(), keys.double(), key_y, y, pos, key_pos,
                    keep, opts.cache_theta,
                )  # fmt: skip
                # A token the cache never saw still gets (1 - lambda) p_model (log_pc is -inf),
                # so the mixture sums to 1 over the vocabulary. Before the first token there is
                # no cache distribution at all, and the model alone predicts (also a distribution).
                mixed = torch.logaddexp(log_keep - score, log_lam + log_pc)
                score = torch.where(has_cache.to(score.device), -mixed, score)
                hist_h, hist_y, hist_pos = keys[-keep:], key_y[-keep:], key_pos[-keep:]
            out[start : start + t] = score.cpu()
            if opts.dynamic:
                # The segment is scored; only now may its tokens change the weights.
                model.zero_grad(set_to_none=True)
                (nll.sum() / t).backward()
                _dynamic_step(params, trained, mean_sq, opts)
            state = detach_state(new_state)
            if progress is not None:
                progress(start + t, n)
    return out


@torch.no_grad()
def _dynamic_step(
    params: list[torch.nn.Parameter],
    trained: list[torch.Tensor],
    mean_sq: list[torch.Tensor],
    opts: AdaptOptions,
) -> None:
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        g = p.grad
        if mean_sq:
            mean_sq[i].mul_(0.9).addcmul_(g, g, value=0.1)
            g = g / (mean_sq[i].sqrt() + 1e-8)
        p.add_(g, alpha=-opts.dynamic_lr)
        if trained:
            p.add_(trained[i] - p, alpha=opts.dynamic_decay)


def evaluate_adaptive(
    model: LanguageModel,
    ids: torch.Tensor,
    kind: str,
    oov: int,
    opts: AdaptOptions,
    text_bytes: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """The figure of `ids` read as one stream with the adaptations of `opts`; `text_bytes`:
    UTF-8 bytes of their text, for bits per byte; `progress`: hears the tokens scored."""
    nll = adaptive_token_nll(model, ids, opts, progress)
    return EvalResult(
        nll=float(nll.sum()), tokens=nll.numel(), kind=kind, oov=oov,
        text_tokens=ids.numel(), text_bytes=text_bytes,
    )  # fmt: skip
