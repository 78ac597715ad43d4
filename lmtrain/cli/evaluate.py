"""Commands that read a trained model: eval, score, sample."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated

import typer

from lmtrain.cli.app import (
    RunArg,
    ThreadsOption,
    _err,
    _user_errors,
    app,
)
from lmtrain.config import (
    AdaptOptions,
    DeviceOptions,
    EvalOptions,
    SampleOptions,
    ScoreOptions,
    require_valid,
)

# Every default below is read from the option classes (lmtrain/config/commands.py), where it is
# written once; the help texts here are the command line's wording.


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
    ] = EvalOptions.batch_size,
    streams: Annotated[
        int,
        typer.Option(
            help="APPROXIMATE: cut the text into N parallel streams, each from a zero state "
            "(faster, slightly worse figure). Default 1 = exact."
        ),
    ] = EvalOptions.streams,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = DeviceOptions.device,
    threads: ThreadsOption = DeviceOptions.threads,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    dynamic_lr: Annotated[
        float, typer.Option(help="Dynamic evaluation step size (Krause et al. 2018); 0 = off.")
    ] = AdaptOptions.dynamic_lr,
    dynamic_bptt: Annotated[
        int, typer.Option(help="Dynamic evaluation: tokens per segment (scored, then a step).")
    ] = AdaptOptions.dynamic_bptt,
    dynamic_method: Annotated[
        str, typer.Option(help="Dynamic evaluation rule: sgd or rms.")
    ] = AdaptOptions.dynamic_method,
    dynamic_decay: Annotated[
        float, typer.Option(help="Dynamic evaluation: pull back towards the trained weights.")
    ] = AdaptOptions.dynamic_decay,
    cache_size: Annotated[
        int, typer.Option(help="Continuous cache pointer (Grave et al. 2017): states; 0 = off.")
    ] = AdaptOptions.cache_size,
    cache_theta: Annotated[
        float, typer.Option(help="Cache sharpness theta.")
    ] = AdaptOptions.cache_theta,
    cache_lambda: Annotated[
        float, typer.Option(help="Cache weight lambda in the mix.")
    ] = AdaptOptions.cache_lambda,
) -> None:
    """Loss, perplexity (bits per character for character models) and OOV rate on held-out text.

    The first line (and --json's checkpoint, step and split) says what was measured: the
    checkpoint file and its step, the text and, for a built-in corpus, its split.

    With --dynamic-lr or --cache-size the text is also scored with that eval-time adaptation,
    and both figures are printed: plain first, then adapted, on the same checkpoint.
    """
    from lmtrain.checkpoint.loading import load_trained
    from lmtrain.evaluation import check_options, evaluate_file
    from lmtrain.metrics.console import Meter
    from lmtrain.runtime.device import resolve_device
    from lmtrain.runtime.threads import command_threads

    options = EvalOptions(batch_size, streams)
    adapt = AdaptOptions(
        dynamic_lr, dynamic_bptt, dynamic_method, dynamic_decay,  # type: ignore[arg-type]
        cache_size, cache_theta, cache_lambda,
    )  # fmt: skip
    check_options(options, adapt)
    require_valid(DeviceOptions(device, threads))
    command_threads(threads)
    trained = load_trained(run, resolve_device(device, "--device"))
    origin = None if data is None else "given to --data"
    # A bar on a terminal; off one, a line as each pass starts and ends (stdout stays the report).
    meter = Meter(_err, bar=sys.stderr.isatty(), lines=True)
    report = evaluate_file(
        trained.model, trained.vocab, trained.config.data, data, options, adapt,
        origin=origin, progress=meter.track,
    )  # fmt: skip
    report = dataclasses.replace(report, checkpoint=str(trained.path), step=trained.step)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        typer.echo(f"evaluated {report.what()}")
        for line in report.lines():
            typer.echo(line)


@app.command()
@_user_errors
def score(
    run: RunArg,
    sentences: Annotated[
        list[str] | None,
        typer.Argument(help="Sentences to score (after any --file lines).", show_default=False),
    ] = None,
    file: Annotated[
        # A str, not a Path: Path("./-") is Path("-"), and only a bare "-" means standard input.
        str | None,
        typer.Option(
            "--file",
            help="UTF-8 file with one sentence per line (- reads standard input); blank lines "
            "skipped.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Sentences scored together; never changes the result.")
    ] = ScoreOptions.batch_size,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = DeviceOptions.device,
    threads: ThreadsOption = DeviceOptions.threads,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
) -> None:
    """Log-probability (natural log and log2), token count and perplexity of each sentence."""
    from lmtrain.checkpoint import load_model
    from lmtrain.evaluation import score_texts, texts_to_score, unknown_warning
    from lmtrain.runtime.device import resolve_device
    from lmtrain.runtime.threads import command_threads

    require_valid(ScoreOptions(batch_size), DeviceOptions(device, threads))
    command_threads(threads)
    texts = texts_to_score(sentences or [], file)
    model, vocab, _ = load_model(run, resolve_device(device, "--device"))
    scores = score_texts(model, vocab, texts, batch_size)
    warning = unknown_warning(scores)
    if warning is not None:
        _err(f"warning: {warning}")
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in scores], ensure_ascii=False))
        return
    # The oov column appears whenever some sentence has unknown tokens.
    typer.echo("logprob\tlog2prob\ttokens\tppl\t" + ("oov\t" if warning else "") + "text")
    for s in scores:
        oov = f"{s.oov}\t" if warning else ""
        typer.echo(f"{s.logprob:.4f}\t{s.log2prob:.4f}\t{s.tokens}\t{s.ppl:.2f}\t{oov}{s.text}")


@app.command()
@_user_errors
def sample(
    run: RunArg,
    prompt: Annotated[str, typer.Option(help="Text that primes the model.")] = "",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = SampleOptions.max_tokens,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature (> 0).")
    ] = SampleOptions.temperature,
    top_k: Annotated[
        int, typer.Option(help="Sample among the K likeliest tokens (0 = off).")
    ] = SampleOptions.top_k,
    top_p: Annotated[
        float, typer.Option(help="Nucleus sampling mass (1 = off).")
    ] = SampleOptions.top_p,
    greedy: Annotated[
        bool, typer.Option(help="Always take the likeliest token.")
    ] = SampleOptions.greedy,
    seed: Annotated[
        int | None,
        typer.Option(help="Same seed, same text; without it a fresh seed is printed on stderr."),
    ] = SampleOptions.seed,
    num_samples: Annotated[
        int, typer.Option(help="Independent samples.")
    ] = SampleOptions.num_samples,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = DeviceOptions.device,
    threads: ThreadsOption = DeviceOptions.threads,
) -> None:
    """Generate text from a trained model."""
    from lmtrain.checkpoint import load_model
    from lmtrain.runtime.device import resolve_device
    from lmtrain.runtime.threads import command_threads
    from lmtrain.sample import generate

    opts = SampleOptions(max_tokens, temperature, top_k, top_p, greedy, num_samples, seed)
    require_valid(opts, DeviceOptions(device, threads))
    command_threads(threads)
    model, vocab, _ = load_model(run, resolve_device(device, "--device"))
    result = generate(model, vocab, prompt, opts)
    for w in result.warnings:
        _err(f"warning: {w}")
    if seed is None:
        _err(f"seed: {result.seed} (pass --seed {result.seed} to repeat)")
    for i, text in enumerate(result.texts):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} ---")
        typer.echo(text)
