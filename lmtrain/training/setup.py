"""Build a training run once: every question ("which device?", "are we resuming?", "how many
processes?") is answered here, and the loop receives the answers as finished objects.

    threads -> device and process group (Context) -> resources check -> run directory (new,
    continue, fork or rewind) -> data -> build_session: batches -> model -> precision ->
    optimiser and schedule -> averager -> the step -> logger -> restore a checkpoint, or
    announce a new run

`build_session` alone, without a run directory, gives benchmarks and notebooks the same
Session that fit trains, writing nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

from lmtrain.checkpoint import Progress
from lmtrain.config import Config, check_resources
from lmtrain.data.prepare import resolve_cache_dir
from lmtrain.data.tokenizers import from_dict
from lmtrain.data.vectors import load_pretrained
from lmtrain.evaluation import Unit, unigram_baseline
from lmtrain.metrics import RunLogger, TrackerHome
from lmtrain.models import State, build_model
from lmtrain.models.adaptive import cutoffs_note
from lmtrain.rundir import RunDirectory, open_run
from lmtrain.runtime.device import resolve_device
from lmtrain.runtime.distributed import Context, LocalContext
from lmtrain.runtime.precision import Amp, flatten_rnn_weights
from lmtrain.runtime.threads import configure_threads
from lmtrain.training.averaging import build_averager
from lmtrain.training.data import (
    Corpus,
    make_batches,
    prepare_data,
    silent,
    validation_sequences,
)
from lmtrain.training.optim import LRSchedule, build_optimizer, planned_steps
from lmtrain.training.session import Session
from lmtrain.training.state import restore
from lmtrain.training.step import build_step


def loggers(cfg: Config) -> tuple[str, ...]:
    return tuple(cfg.run.loggers)


def build(
    cfg: Config,
    resume: str | None,
    quiet: bool,
    echo: Callable[[str], None],
    ctx: Context,
    stack: contextlib.ExitStack,
) -> tuple[Session, Progress, State | None]:
    """The run's Session, its progress counters and its carried state (both fresh unless
    resuming). The run directory (and its lock) stays open until `stack` closes."""
    main, world, device = ctx.is_main, ctx.world, ctx.device
    say = echo if main else silent
    configure_threads(cfg.train.num_threads)
    ctx.check_batch_size(cfg.train.batch_size)
    check_resources(cfg, None, device, world)  # before anything is built or written
    # The one place where "are we resuming, and from what?" is answered (new, continue, fork,
    # rewind). Under torchrun rank 0 locks the directory and reads the checkpoint for everyone.
    run, start = stack.enter_context(open_run(cfg, resume, echo, ctx))
    payload = start.checkpoint
    torch.manual_seed(cfg.train.seed)
    vocab = None if payload is None else from_dict(payload["vocab"])
    if resolve_cache_dir(cfg.data.cache_dir) is not None:
        # Under torchrun rank 0 tokenises into the cache while the others wait (its errors reach
        # them all); then every rank below finds each split prepared and maps it.
        ctx.prepare_on_main(lambda: prepare_data(cfg, vocab, echo))
    corpus = prepare_data(cfg, vocab, say)
    resumed_at = None if payload is None else int(payload["progress"]["step"])
    # The cosine decay may follow the training clock (train.schedule_span): it reads
    # `progress`, the run's counters, bound below to a fresh or a restored Progress; the lambda
    # reads the name when a step asks for its rate, so it sees whichever one the run continues.
    s = build_session(cfg, corpus, ctx, run, resumed_at, quiet, say, lambda: progress.train_seconds)
    progress: Progress = Progress()
    carried: State | None = None
    if payload is not None:
        progress, carried = restore(s, payload)
    else:
        s.logger.text("config", cfg.to_yaml(), 0)
    _announce(s, resumed_at)
    return s, progress, carried


def build_session(
    cfg: Config,
    corpus: Corpus,
    ctx: Context | None = None,
    run: RunDirectory | None = None,
    resumed_at: int | None = None,
    quiet: bool = True,
    echo: Callable[[str], None] = silent,
    train_seconds: Callable[[], float] = lambda: 0.0,
) -> Session:
    """Batches, model, precision, optimiser and schedule, averager, the step and the logger
    of a run on `corpus` (training.data.prepare_data), with fresh weights (seed torch with
    train.seed first for fit's). `ctx` defaults to one process on train.device.

    fit() gives its run directory. Without one (benchmarks, notebooks) nothing is written: no
    config.yaml, metrics or TensorBoard files, and the session never saves a checkpoint.
    `resumed_at`: the step a resumed run continues from (no pretrained vectors are loaded; the
    checkpoint's weights replace them). `train_seconds`: the training clock a schedule that
    follows the clock reads.
    """
    if ctx is None:
        ctx = LocalContext(resolve_device(cfg.train.device))
    main, world, device = ctx.is_main, ctx.world, ctx.device
    check_resources(cfg, len(corpus.vocab), device, world)  # the decoder's size is known now
    batches = ctx.shard(make_batches(cfg, corpus))
    model = build_model(cfg.model, len(corpus.vocab)).to(device)
    vectors_report = None
    if cfg.model.pretrained_embeddings is not None and resumed_at is None:
        vectors_report = load_pretrained(model, corpus.vocab, cfg.model)
    flatten_rnn_weights(model)
    amp = Amp.for_model(cfg.train.precision, device, model.rnn)
    forward_loss = ctx.wrap(model)
    ctx.seed_per_rank(cfg.train.seed)
    optimizer = build_optimizer(cfg.train, model)
    total_steps = planned_steps(cfg.train, len(batches))
    schedule = LRSchedule(cfg.train, total_steps, train_seconds)
    writes = run is not None and main  # only rank 0 of a real run writes files
    trackers = None
    if writes:
        run.write_text("config.yaml", cfg.to_yaml())
        trackers = _tracker_home(run, resumed_at is not None)
    logger = RunLogger(
        Path(cfg.run.dir) if run is None else run.path,
        cfg.run.tensorboard and writes,
        total_steps,
        resumed_at or 0,
        quiet or not main,
        echo,
        purge_step=None if resumed_at is None else resumed_at + 1,
        unit=Unit.of(corpus.vocab.kind),
        write_files=writes,
        config_yaml=cfg.to_yaml(),
        loggers=loggers(cfg) if writes else (),
        trackers=trackers,
    )
    if vectors_report is not None:
        logger.message(vectors_report)
    return Session(
        cfg, run, ctx, device, corpus, validation_sequences(cfg, corpus), batches, total_steps,
        model, optimizer, schedule, amp, build_averager(cfg.train, model),
        build_step(cfg.train, model, forward_loss, optimizer, schedule, amp, world, device),
        logger,
    )  # fmt: skip


def _tracker_home(run: RunDirectory, resumed: bool) -> TrackerHome:
    """The run directory's part in the optional trackers: the tracking runs a resumed session
    continues (a fork's manifest is new: it starts its own), the folders they write, their ids."""

    def keep(name: str, run_id: str) -> None:
        run.manifest.trackers[name] = run_id
        run.write_manifest()

    return TrackerHome(dict(run.manifest.trackers) if resumed else {}, run.claim, keep)


def _announce(s: Session, resumed_at: int | None) -> None:
    """The run's one-line summary, the unigram baseline of a new run, and precision notes."""
    cfg, corpus, log = s.cfg, s.corpus, s.logger.message
    n_params = sum(p.numel() for p in s.model.parameters())
    b = cfg.train.batch_size // s.ctx.world
    share = f"{b} of each batch's sequences" if cfg.data.mode == "sentences" else f"{b} streams"
    log(
        f"{cfg.model.cell} {cfg.model.num_layers}x{cfg.model.hidden_size}, "
        f"{n_params:,} parameters, vocabulary {len(corpus.vocab):,} ({corpus.vocab.kind}), "
        f"{corpus.train.numel():,} training tokens, {len(s.batches)} steps/epoch, "
        f"device {s.device}"
        + (f"; resuming at step {resumed_at}" if resumed_at is not None else "")
        + s.ctx.describe(share)
    )
    cutoffs = cutoffs_note(cfg.model.adaptive_softmax, len(corpus.vocab))
    if cutoffs is not None:
        log(cutoffs)
    for line in cfg.model.own_defaults():  # the remedies' own settings where a key is null
        log(line)
    if corpus.valid is not None and resumed_at is None:
        predicted = None  # stream mode: every token after the first
        if s.valid_sequences is not None:  # every token of every sequence, end markers included
            predicted = torch.cat([q[1:] for q in s.valid_sequences] or [corpus.valid[:0]])
        base = unigram_baseline(
            corpus.train, corpus.valid, len(corpus.vocab), corpus.vocab.kind, predicted,
            corpus.valid_bytes,
        )  # fmt: skip
        log(f"unigram baseline on validation: {base.summary()}")
    for note in s.amp.notes:
        log(note)
