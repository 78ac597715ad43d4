"""Commands that read a trained model: eval, score, sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lmtrain.cli.app import (
    RunArg,
    _err,
    _user_errors,
    app,
)
from lmtrain.errors import LmtrainError

if TYPE_CHECKING:  # the commands import torch lazily, so that --help stays fast
    from lmtrain.config import Config
    from lmtrain.data.vocab import Encoded, Vocab
    from lmtrain.evaluation.stream import EvalResult
    from lmtrain.models import LanguageModel


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
    from lmtrain.checkpoint import load_model
    from lmtrain.data import read_text
    from lmtrain.data.coverage import check_coverage
    from lmtrain.evaluation.adaptation import AdaptOptions
    from lmtrain.evaluation.scoring import EvalOptions
    from lmtrain.evaluation.stream import evaluate_ids
    from lmtrain.runtime.device import resolve_device

    options = EvalOptions(batch_size, streams)
    adapt = AdaptOptions(
        dynamic_lr, dynamic_bptt, dynamic_method, dynamic_decay,  # type: ignore[arg-type]
        cache_size, cache_theta, cache_lambda,
    )  # fmt: skip
    if problems := options.problems() + adapt.problems():
        raise LmtrainError("; ".join(problems))
    if (adapt.dynamic or adapt.cache) and streams > 1:
        raise LmtrainError(
            "--dynamic-lr and --cache-size read the text as one stream; drop --streams"
        )
    model, vocab, cfg = load_model(run, resolve_device(device, "--device"))
    spec = data or cfg.data.test
    if spec is None:
        raise LmtrainError("no --data given and the run's config has no data.test")
    text = read_text(spec, "test", cfg.data.decode_errors)
    enc = vocab.encode(text)
    check_coverage(enc, vocab, spec)
    adapted = None
    if cfg.data.mode == "sentences":
        if adapt.dynamic or adapt.cache:
            raise LmtrainError(
                "--dynamic-lr and --cache-size read the text as one stream; this model was "
                "trained in sentences mode, where every line starts from a fresh state"
            )
        result = _eval_sentences(model, vocab, cfg, enc, streams, batch_size)
    else:
        if problems := options.text_problems(enc.ids.numel(), spec):
            raise LmtrainError("; ".join(problems))
        result = evaluate_ids(model, enc.ids, vocab.kind, enc.oov, streams)
        if adapt.dynamic or adapt.cache:
            from lmtrain.evaluation.adaptation import evaluate_adaptive

            adapted = evaluate_adaptive(model, enc.ids, vocab.kind, enc.oov, adapt)
    # Bits per byte of the text: comparable across tokenisers (word, character, byte).
    result = result.with_text(text)
    adapted = None if adapted is None else adapted.with_text(text)
    figures = result.to_dict()
    if as_json:
        extra = (
            {}
            if adapted is None
            else {"adapted": {"method": adapt.describe(), **adapted.to_dict()}}
        )
        typer.echo(json.dumps({"data": spec, **figures, **extra}))
    else:
        typer.echo(f"{spec}: {result.summary()}")
        if vocab.kind == "word":
            typer.echo(f"OOV rate {enc.oov_rate:.4%} ({enc.oov:,} of {enc.ids.numel():,} tokens)")
        if adapted is not None:
            typer.echo(f"adapted, {adapt.describe()}: {adapted.summary()}")
            change = adapted.ppl / result.ppl - 1
            typer.echo(f"perplexity {result.ppl:.2f} -> {adapted.ppl:.2f} ({change:+.1%})")


def _eval_sentences(
    model: LanguageModel, vocab: Vocab, cfg: Config, enc: Encoded, streams: int, batch_size: int
) -> EvalResult:
    """Sentences-mode eval: every non-empty line (or document) scored from a zero state."""
    from lmtrain.data.sentences import split_sequences
    from lmtrain.evaluation.scoring import evaluate_sentences

    if streams != 1:
        raise LmtrainError(
            "--streams applies to stream-mode models only; this model was trained with "
            "data.mode: sentences, whose evaluation is exact at any --batch-size"
        )
    sequences = split_sequences(enc.ids, vocab, cfg.data.documents)
    return evaluate_sentences(
        model, sequences, vocab.kind, enc.oov, batch_size, text_tokens=enc.ids.numel()
    )


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
    from lmtrain.evaluation.scoring import EvalOptions, score_texts
    from lmtrain.runtime.device import resolve_device

    if problems := EvalOptions(batch_size=batch_size).problems():
        raise LmtrainError("; ".join(problems))
    texts: list[str] = []
    if file is not None:
        texts += [line for line in read_file(file).splitlines() if line.strip()]
    for i, text in enumerate(sentences or [], start=1):
        if not text.strip():
            raise LmtrainError(f"sentence argument {i} is empty; give some text to score")
        texts.append(text)
    if not texts:
        raise LmtrainError("nothing to score: give sentences as arguments or --file FILE")
    model, vocab, _ = load_model(run, resolve_device(device, "--device"))
    scores = score_texts(model, vocab, texts, batch_size)
    unknown = sum(s.oov > 0 for s in scores)
    if unknown:
        # An unknown word is scored as <unk>, often a likely token: such a sentence can score
        # better than real text, so the figure must not pass without notice.
        _err(
            f"warning: {unknown} of {len(scores)} sentence(s) hold tokens not in the model's "
            "vocabulary, scored as <unk>; their figures are not comparable with the others "
            "(see the oov count)"
        )
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in scores], ensure_ascii=False))
        return
    # The oov column appears whenever some sentence has unknown tokens.
    typer.echo("logprob\tlog2prob\ttokens\tppl\t" + ("oov\t" if unknown else "") + "text")
    for s in scores:
        oov = f"{s.oov}\t" if unknown else ""
        typer.echo(f"{s.logprob:.4f}\t{s.log2prob:.4f}\t{s.tokens}\t{s.ppl:.2f}\t{oov}{s.text}")


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
    seed: Annotated[
        int | None,
        typer.Option(help="Same seed, same text; without it a fresh seed is printed on stderr."),
    ] = None,
    num_samples: Annotated[int, typer.Option(help="Independent samples.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
) -> None:
    """Generate text from a trained model."""
    from lmtrain.checkpoint import load_model
    from lmtrain.runtime.device import resolve_device
    from lmtrain.sample import SampleOptions, generate

    opts = SampleOptions(max_tokens, temperature, top_k, top_p, greedy, num_samples, seed)
    if problems := opts.problems():
        raise LmtrainError("; ".join(problems))
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
