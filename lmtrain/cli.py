"""The `lmtrain` command: thin Typer commands that parse, call the library and map errors.

Exit codes: 0 success; 2 a user error (config, data, checkpoint, prompt), printed as one
paragraph without a traceback; 3 training stopped after too many consecutive non-finite steps;
130 / 143 training interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from lmtrain import config as config_mod
from lmtrain.errors import LmtrainError

if TYPE_CHECKING:  # the commands import torch lazily, so that --help stays fast
    from lmtrain.config import Config
    from lmtrain.data.vocab import Encoded, Vocab
    from lmtrain.evaluate import EvalResult
    from lmtrain.models import LanguageModel

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate and sample recurrent language models from a YAML config.",
)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    """Turn LmtrainError into its message on stderr and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LmtrainError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:
            # A second Ctrl-C / SIGTERM (lmtrain.interrupt) or one outside training: stop now.
            # Checkpoint writes are atomic, so files already written stay complete.
            typer.echo(
                "error: interrupted; stopped at once (checkpoints on disk are intact)", err=True
            )
            raise typer.Exit(getattr(e, "exit_code", 130)) from None

    return wrapper  # type: ignore[return-value]


def _err(line: str) -> None:
    typer.echo(line, err=True)


ConfigArg = Annotated[Path, typer.Argument(help="YAML config file.", show_default=False)]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides such as train.lr=0.5 model.cell=gru.", show_default=False
    ),
]
RunArg = Annotated[
    Path, typer.Argument(help="Run directory or checkpoint file.", show_default=False)
]


@app.command()
@_user_errors
def fit(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue a run: 'auto' (run.dir's newest readable checkpoint) or a "
            "checkpoint path."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a model; checkpoints, TensorBoard events and the resolved config go to run.dir."""
    from lmtrain.train import fit as run_fit

    cfg = config_mod.load_config(config, overrides or [])
    result = run_fit(cfg, resume=resume, quiet=quiet, echo=_err)
    if not result.is_main:
        return  # under torchrun, rank 0 reports for the job
    p = result.progress
    best = f"best val loss {p.best_val_loss:.4f}" if p.best_val_loss < float("inf") else "no val"
    typer.echo(
        f"done: {p.step} steps, {result.train_tokens:,} tokens in {result.train_seconds:.1f}s "
        f"({result.tokens_per_sec:,.0f} tokens/s), {best}; run in {result.run_dir}"
    )


@app.command()
@_user_errors
def validate(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Check a config (and overrides) without doing any work; exit 2 listing every problem."""
    cfg = config_mod.load_config(config, overrides or [])
    typer.echo(f"{config}: OK")
    typer.echo(cfg.to_yaml().rstrip())


@app.command("config")
def show_config() -> None:
    """Print every config key with its default and a one-line description."""
    typer.echo(config_mod.describe())


@app.command("eval")
@_user_errors
def eval_cmd(
    run: RunArg,
    data: Annotated[
        str | None,
        typer.Option(help="Text to evaluate (file or builtin:NAME); default: the run's data.test."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Sequences evaluated together; never changes the result.")
    ] = 1,
    streams: Annotated[
        int,
        typer.Option(
            help="APPROXIMATE: cut the text into N parallel streams, each from a zero state "
            "(faster, slightly worse figure). Default 1 = exact."
        ),
    ] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    dynamic_lr: Annotated[
        float, typer.Option(help="Dynamic evaluation step size (Krause et al. 2018); 0 = off.")
    ] = 0.0,
    dynamic_bptt: Annotated[
        int, typer.Option(help="Dynamic evaluation: tokens per segment (scored, then a step).")
    ] = 35,
    dynamic_method: Annotated[
        str, typer.Option(help="Dynamic evaluation rule: sgd or rms.")
    ] = "sgd",
    dynamic_decay: Annotated[
        float, typer.Option(help="Dynamic evaluation: pull back towards the trained weights.")
    ] = 0.0,
    cache_size: Annotated[
        int, typer.Option(help="Continuous cache pointer (Grave et al. 2017): states; 0 = off.")
    ] = 0,
    cache_theta: Annotated[float, typer.Option(help="Cache sharpness theta.")] = 0.662,
    cache_lambda: Annotated[float, typer.Option(help="Cache weight lambda in the mix.")] = 0.1279,
) -> None:
    """Loss, perplexity (bits per character for character models) and OOV rate on held-out text.

    With --dynamic-lr or --cache-size the text is also scored with that eval-time adaptation,
    and both figures are printed: plain first, then adapted, on the same checkpoint.
    """
    from lmtrain.adapt import AdaptOptions
    from lmtrain.checkpoint import load_model
    from lmtrain.data import read_text
    from lmtrain.data.coverage import check_coverage
    from lmtrain.evaluate import evaluate_ids
    from lmtrain.train import resolve_device

    if batch_size < 1 or streams < 1:
        raise LmtrainError("--batch-size and --streams must be >= 1")
    if dynamic_method not in ("sgd", "rms"):
        raise LmtrainError(f"--dynamic-method must be sgd or rms, got {dynamic_method!r}")
    adapt = AdaptOptions(
        dynamic_lr, dynamic_bptt, dynamic_method, dynamic_decay,  # type: ignore[arg-type]
        cache_size, cache_theta, cache_lambda,
    )  # fmt: skip
    if problems := adapt.problems():
        raise LmtrainError("; ".join(problems))
    if (adapt.dynamic or adapt.cache) and streams > 1:
        raise LmtrainError(
            "--dynamic-lr and --cache-size read the text as one stream; drop --streams"
        )
    model, vocab, cfg = load_model(run, resolve_device(device))
    spec = data or cfg.data.test
    if spec is None:
        raise LmtrainError("no --data given and the run's config has no data.test")
    enc = vocab.encode(read_text(spec, "test", cfg.data.decode_errors))
    check_coverage(enc, vocab, spec)
    if enc.ids.numel() < streams + 1:
        raise LmtrainError(f"{spec}: too little text to evaluate ({enc.ids.numel()} tokens)")
    adapted = None
    if cfg.data.mode == "sentences":
        if adapt.dynamic or adapt.cache:
            raise LmtrainError(
                "--dynamic-lr and --cache-size read the text as one stream; this model was "
                "trained in sentences mode, where every line starts from a fresh state"
            )
        result = _eval_sentences(model, vocab, cfg, enc, streams, batch_size)
    else:
        result = evaluate_ids(model, enc.ids, vocab.kind, enc.oov, streams)
        if adapt.dynamic or adapt.cache:
            from lmtrain.adapt import evaluate_adaptive

            adapted = evaluate_adaptive(model, enc.ids, vocab.kind, enc.oov, adapt)
    if as_json:
        extra = (
            {}
            if adapted is None
            else {"adapted": {"method": adapt.describe(), **adapted.to_dict()}}
        )
        typer.echo(json.dumps({"data": spec, **result.to_dict(), **extra}))
    else:
        typer.echo(f"{spec}: {result.summary()}")
        if vocab.kind == "word":
            typer.echo(f"OOV rate {result.to_dict()['oov_rate']:.4%}")
        if adapted is not None:
            typer.echo(f"adapted, {adapt.describe()}: {adapted.summary()}")
            change = adapted.ppl / result.ppl - 1
            typer.echo(f"perplexity {result.ppl:.2f} -> {adapted.ppl:.2f} ({change:+.1%})")


def _eval_sentences(
    model: LanguageModel, vocab: Vocab, cfg: Config, enc: Encoded, streams: int, batch_size: int
) -> EvalResult:
    """Sentences-mode eval: every non-empty line (or document) scored from a zero state."""
    from lmtrain.data.sentences import split_sequences
    from lmtrain.score import evaluate_sentences

    if streams != 1:
        raise LmtrainError(
            "--streams applies to stream-mode models only; this model was trained with "
            "data.mode: sentences, whose evaluation is exact at any --batch-size"
        )
    sequences = split_sequences(enc.ids, vocab, cfg.data.documents)
    return evaluate_sentences(model, sequences, vocab.kind, enc.oov, batch_size)


@app.command()
@_user_errors
def score(
    run: RunArg,
    sentences: Annotated[
        list[str] | None,
        typer.Argument(help="Sentences to score (after any --file lines).", show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="UTF-8 file with one sentence per line; blank lines skipped."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Sentences scored together; never changes the result.")
    ] = 32,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
) -> None:
    """Log-probability (natural log and log2), token count and perplexity of each sentence."""
    from lmtrain.checkpoint import load_model
    from lmtrain.data.corpus import read_file
    from lmtrain.score import score_texts
    from lmtrain.train import resolve_device

    if batch_size < 1:
        raise LmtrainError(f"--batch-size must be >= 1, got {batch_size}")
    texts: list[str] = []
    if file is not None:
        texts += [line for line in read_file(file).splitlines() if line.strip()]
    for i, text in enumerate(sentences or [], start=1):
        if not text.strip():
            raise LmtrainError(f"sentence argument {i} is empty; give some text to score")
        texts.append(text)
    if not texts:
        raise LmtrainError("nothing to score: give sentences as arguments or --file FILE")
    model, vocab, _ = load_model(run, resolve_device(device))
    scores = score_texts(model, vocab, texts, batch_size)
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in scores], ensure_ascii=False))
        return
    typer.echo("logprob\tlog2prob\ttokens\tppl\ttext")
    for s in scores:
        typer.echo(f"{s.logprob:.4f}\t{s.log2prob:.4f}\t{s.tokens}\t{s.ppl:.2f}\t{s.text}")


@app.command()
@_user_errors
def sample(
    run: RunArg,
    prompt: Annotated[str, typer.Option(help="Text that primes the model.")] = "",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option(help="Softmax temperature (> 0).")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the K likeliest tokens (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1 = off).")] = 1.0,
    greedy: Annotated[bool, typer.Option(help="Always take the likeliest token.")] = False,
    seed: Annotated[int | None, typer.Option(help="Same seed, same text.")] = None,
    num_samples: Annotated[int, typer.Option(help="Independent samples.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
) -> None:
    """Generate text from a trained model."""
    from lmtrain.checkpoint import load_model
    from lmtrain.sample import SampleOptions, generate
    from lmtrain.train import resolve_device

    opts = SampleOptions(max_tokens, temperature, top_k, top_p, greedy, num_samples, seed)
    if problems := opts.problems():
        raise LmtrainError("; ".join(problems))
    model, vocab, _ = load_model(run, resolve_device(device))
    result = generate(model, vocab, prompt, opts)
    for w in result.warnings:
        _err(f"warning: {w}")
    for i, text in enumerate(result.texts):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} ---")
        typer.echo(text)


diagnose_app = typer.Typer(no_args_is_help=True, help="Diagnostics of a model or config.")
app.add_typer(diagnose_app, name="diagnose")


@diagnose_app.command("gradient-flow")
@_user_errors
def gradient_flow_cmd(
    target: Annotated[
        Path, typer.Argument(help="Run directory, checkpoint or YAML config.", show_default=False)
    ],
    overrides: OverridesArg = None,
    cell: Annotated[
        list[str] | None,
        typer.Option(help="Config only: one curve per cell (repeatable), fresh weights each."),
    ] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("gradient_flow.png"),
    steps: Annotated[int, typer.Option(help="Window length T.")] = 50,
    batch: Annotated[int, typer.Option(help="Rows averaged.")] = 8,
    tensorboard: Annotated[
        Path | None, typer.Option(help="TensorBoard directory; default OUT's name + '-tb'.")
    ] = None,
) -> None:
    """Norm of dL_T/dh_t against T - t: a PNG plus TensorBoard scalars gradient_flow/<cell>."""
    from lmtrain import diagnose

    if steps < 2 or batch < 1:
        raise LmtrainError("--steps must be >= 2 and --batch >= 1")
    curves = diagnose.curves_for(target, overrides or [], cell or [], steps, batch)
    diagnose.plot(curves, out, f"gradient norm |dl/dh| by steps back, window {steps}")
    tb = tensorboard or out.with_name(out.stem + "-tb")
    diagnose.write_tensorboard(curves, tb)
    shown = [d for d in (0, 1, 2, 5, 10, 20, 50, 100, 200) if d < steps]
    typer.echo("steps back  " + "  ".join(f"{c.label:>12s}" for c in curves))
    for d in shown:
        typer.echo(f"{d:10d}  " + "  ".join(f"{c.norms[d]:12.3e}" for c in curves))
    typer.echo(f"wrote {out} and TensorBoard scalars in {tb}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
