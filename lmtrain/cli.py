"""The `lmtrain` command: thin Typer commands that parse, call the library and map errors.

Exit codes: 0 success; 2 a user error (config, data, checkpoint, prompt), printed as one
paragraph without a traceback; 3 training stopped after too many consecutive non-finite steps;
130 / 143 training interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from lmtrain import __version__, catalog
from lmtrain import config as config_mod
from lmtrain.errors import LmtrainError

if TYPE_CHECKING:  # the commands import torch lazily, so that --help stays fast
    from lmtrain.config import Config
    from lmtrain.data.vocab import Encoded, Vocab
    from lmtrain.evaluate import EvalResult
    from lmtrain.models import LanguageModel
    from lmtrain.train import FitResult

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train, evaluate and sample recurrent language models from a YAML config.",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"lmtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_show_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Options that come before the command."""


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


ConfigArg = Annotated[
    Path,
    typer.Argument(
        help="YAML config file, or the name of a shipped recipe (lmtrain recipes).",
        show_default=False,
    ),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides such as train.lr=0.5 model.cell=gru.", show_default=False
    ),
]
ConfigOverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides: train.lr=0.5, --train.lr 0.5 or --train.lr=0.5.",
        show_default=False,
    ),
]
# fit and validate pass options they do not know (`--train.lr 0.1`) through to their overrides
# argument, where _config_overrides turns dotted ones into KEY=VALUE and refuses the rest.
_DOTTED_OPTIONS = {"ignore_unknown_options": True}


def _is_dotted(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and all(parts)


def _unknown_option(ctx: typer.Context, option: str) -> LmtrainError:
    import difflib

    names = [o for param in ctx.command.params for o in getattr(param, "opts", []) if "-" in o]
    close = difflib.get_close_matches(option.split("=", 1)[0], names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return LmtrainError(
        f"no such option: {option}{hint}; config keys are set as section.key=VALUE or "
        f"--section.key VALUE (lmtrain config lists them); see lmtrain {ctx.command.name} --help"
    )


def _config_overrides(ctx: typer.Context, config: Path, tokens: list[str]) -> list[str]:
    """The overrides as KEY=VALUE; `--a.b VALUE` and `--a.b=VALUE` are accepted as `a.b=VALUE`.

    An option that is not a dotted key (a typo such as `--resum`) is refused with the closest
    real option, so a mistake never passes silently as a config value.
    """
    first = str(config)
    if first.startswith("-"):
        if _is_dotted(first.lstrip("-").split("=", 1)[0]):
            raise LmtrainError(
                f"{first}: the config file comes first, then the overrides: "
                f"lmtrain {ctx.command.name} CONFIG {first} ..."
            )
        raise _unknown_option(ctx, first)
    result: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-"):
            result.append(token)
            continue
        name, sep, value = token.lstrip("-").partition("=")
        if not token.startswith("--") or not _is_dotted(name):
            raise _unknown_option(ctx, token)
        if not sep:
            if i == len(tokens) or tokens[i].startswith("--"):
                raise LmtrainError(f"option {token} needs a value: {token} VALUE or {token}=VALUE")
            value = tokens[i]
            i += 1
        result.append(f"{name}={value}")
    return result


RunArg = Annotated[
    Path,
    typer.Argument(help="Run directory, checkpoint file or export folder.", show_default=False),
]


@app.command(context_settings=_DOTTED_OPTIONS)
@_user_errors
def fit(
    ctx: typer.Context,
    config: ConfigArg,
    overrides: ConfigOverridesArg = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue a run: 'auto' (run.dir's newest readable checkpoint), a run "
            "directory (its newest readable checkpoint) or a checkpoint file. A checkpoint of "
            "another run starts a fork into a new or empty run.dir; an older checkpoint of "
            "run.dir rewinds it (newer checkpoints move to checkpoints/abandoned-*/)."
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bar or progress lines; evaluations, warnings, errors and the "
            "final summary still print.",
        ),
    ] = False,
) -> None:
    """Train a model from a YAML config or a recipe's name (lmtrain recipes).

    Checkpoints, metrics.jsonl, results.json, TensorBoard events and the resolved config go to
    run.dir.
    """
    from lmtrain.train import fit as run_fit

    settings = _config_overrides(ctx, config, overrides or [])
    cfg = config_mod.load_config(catalog.resolve_config(config), settings)
    config_mod.check_resources(cfg)
    from lmtrain.metrics import console, silence

    # A closed pipe (`lmtrain fit ... 2>&1 | head`) must not stop the training.
    result = run_fit(cfg, resume=resume, quiet=quiet, echo=console(_err, sys.stderr))
    if not result.is_main:
        return  # under torchrun, rank 0 reports for the job
    try:
        _fit_summary(cfg, result)
    except BrokenPipeError:
        # The reader is gone (`| head`); the run is complete and saved, which is what counts.
        silence(sys.stdout)


def _fit_summary(cfg: Config, result: FitResult) -> None:
    """The closing lines of `lmtrain fit` on stdout: figures, files and what to run next."""
    p = result.progress
    best = f"best val loss {p.best_val_loss:.4f}" if p.best_val_loss < float("inf") else "no val"
    # Seconds and tokens/s of this session's training steps, evaluation and checkpoints excluded.
    session = (
        f"{result.train_tokens:,} tokens in {result.train_seconds:.1f}s of training "
        f"({result.tokens_per_sec:,.0f} tokens/s)"
    )
    if result.results.get("tokens", result.train_tokens) != result.train_tokens:
        # A resumed run: the step count is the whole run's, the tokens and seconds only this
        # session's, so say so rather than print a misleading tokens-per-step figure.
        total = result.results["tokens"]
        done = f"done: step {p.step}, {total:,} tokens in all; this session {session}"
    else:
        done = f"done: {p.step} steps, {session}"
    typer.echo(f"{done}, {best}; run in {result.run_dir}")
    run = shlex.quote(str(result.run_dir))
    best_val = result.results.get("best_val")
    if best_val is not None:
        figure = f"bpc {best_val['bpc']:.4f}" if "bpc" in best_val else f"ppl {best_val['ppl']:.2f}"
        typer.echo(f"best validation: {figure} at step {best_val['step']}")
    typer.echo(f"figures: {result.run_dir / 'results.json'}, {result.run_dir / 'metrics.jsonl'}")
    typer.echo(f"evaluate: lmtrain eval {run}")
    prompt = f" --prompt {shlex.quote(cfg.run.sample_prompt)}" if cfg.run.sample_prompt else ""
    typer.echo(f"sample:   lmtrain sample {run}{prompt}")


@app.command(context_settings=_DOTTED_OPTIONS)
@_user_errors
def validate(ctx: typer.Context, config: ConfigArg, overrides: ConfigOverridesArg = None) -> None:
    """Check a config, its files, device and memory without training.

    Exit 2 listing every problem: each data and vectors file must be a readable
    regular file (opened, not read), train.device must exist here, run.dir must
    be creatable and the model must fit in memory. Prints the config that fit
    would save, with run.dir expanded.
    """
    from lmtrain.data.corpus import check_inputs
    from lmtrain.device import resolve_device

    def environment(cfg: Config) -> list[str]:
        """What the schema cannot know: files, device, memory and run.dir on this machine."""
        problems = check_inputs(cfg)
        device: object = "cpu"  # a device that does not exist: at least the model must fit in RAM
        try:
            device = resolve_device(cfg.train.device)
        except LmtrainError as e:
            problems.append(str(e))
        problems += config_mod.resource_problems(cfg, device=device)
        return problems + _run_dir_problems(Path(cfg.run.dir))

    settings = _config_overrides(ctx, config, overrides or [])
    cfg = config_mod.load_config(catalog.resolve_config(config), settings, checks=environment)
    typer.echo(f"{config}: OK")
    typer.echo(cfg.to_yaml().rstrip())


def _run_dir_problems(run_dir: Path) -> list[str]:
    """run.dir must be a directory, or creatable: its nearest existing parent is writable."""
    import os

    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == run_dir and not existing.is_dir():
        return [f"run.dir: {run_dir} exists and is not a directory; choose another run.dir"]
    if not existing.is_dir():
        return [f"run.dir: {existing} is not a directory, so {run_dir} cannot be created there"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"run.dir: {existing} is not writable; choose another run.dir"]
    return []


@app.command(context_settings=_DOTTED_OPTIONS)
@_user_errors
def prepare(ctx: typer.Context, config: ConfigArg, overrides: ConfigOverridesArg = None) -> None:
    """Tokenise the training and validation text once into data.cache_dir (prepared ids).

    Later fits, resumes and torchrun ranks with the same data.cache_dir map the prepared ids
    instead of reading the text. Exit 2 when data.cache_dir is not set.
    """
    from lmtrain.data.corpus import expand_vars
    from lmtrain.data.prepare import prepare_corpus

    settings = _config_overrides(ctx, config, overrides or [])
    cfg = config_mod.load_config(catalog.resolve_config(config), settings)
    if cfg.data.cache_dir is None:
        raise LmtrainError(
            "data.cache_dir is not set, so there is nowhere to prepare the text; add "
            "data.cache_dir=~/.cache/lmtrain/prepared (or any folder) to the command or config, "
            "and use the same setting for lmtrain fit"
        )
    cache_dir = Path(expand_vars(cfg.data.cache_dir, "data.cache_dir"))
    pc = prepare_corpus(cfg.data, cache_dir, None, _err)
    splits = [("train", cfg.data.train, pc.train)]
    if pc.valid is not None and cfg.data.valid is not None:
        splits.append(("valid", cfg.data.valid, pc.valid))
    typer.echo(f"vocabulary {len(pc.vocab):,} ({pc.vocab.kind}); cache {cache_dir}")
    for role, spec, split in splits:
        typer.echo(
            f"{role}: {spec}: {split.ids.numel():,} tokens as {str(split.ids.dtype)[6:]}, "
            f"{split.text_bytes:,} bytes of text"
        )


@app.command("config")
def show_config() -> None:
    """Print every config key with its default and a one-line description.

    The output is itself a valid config: `lmtrain config > my.yaml` starts one to edit.

    `lmtrain init RECIPE` copies a tuned recipe instead (lmtrain recipes lists them).
    """
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
    from lmtrain.device import resolve_device
    from lmtrain.evaluate import evaluate_ids
    from lmtrain.score import EvalOptions

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
            from lmtrain.adapt import evaluate_adaptive

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
    from lmtrain.score import evaluate_sentences

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
    from lmtrain.device import resolve_device
    from lmtrain.score import EvalOptions, score_texts

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
    from lmtrain.device import resolve_device
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
    """Norm of dL_T/dh_t against T - t: a PNG, plus TensorBoard scalars and the figure."""
    from lmtrain import diagnose, plot

    if steps < 2 or batch < 1:
        raise LmtrainError("--steps must be >= 2 and --batch >= 1")
    plot.require_matplotlib()  # before the measurement, which can take a while
    curves = diagnose.curves_for(target, overrides or [], cell or [], steps, batch)
    figure = plot.gradient_flow_figure(
        curves, f"Gradient of the loss at step $T$ reaching $h_t$ ($T$ = {steps}, {batch} rows)"
    )
    plot.save_png(figure, out)
    tb = tensorboard or out.with_name(out.stem + "-tb")
    diagnose.write_tensorboard(curves, tb, plot.pixels(figure))
    shown = [d for d in (0, 1, 2, 5, 10, 20, 50, 100, 200) if d < steps]
    typer.echo("steps back  " + "  ".join(f"{c.label:>12s}" for c in curves))
    for d in shown:
        typer.echo(f"{d:10d}  " + "  ".join(f"{c.norms[d]:12.3e}" for c in curves))
    typer.echo(f"wrote {out} and TensorBoard scalars and figure in {tb}")


@app.command("plot")
@_user_errors
def plot_cmd(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories to compare.", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option(help="Figure to write: .png, or .pdf / .svg for a vector figure.")
    ] = Path("curves.png"),
    metric: Annotated[
        str,
        typer.Option(
            help="loss, ppl, bpc (character models) or bpb (bits per byte: any tokeniser)."
        ),
    ] = "ppl",
    x: Annotated[
        str, typer.Option("--x", help="step, minutes (of training) or tokens (trained on).")
    ] = "step",
) -> None:
    """Validation curves of several runs in one figure, one line per run (from RUN/metrics.jsonl)."""
    from lmtrain import plot

    plot.require_matplotlib()
    out = out.expanduser()  # `--out=~/c.png`: the shell leaves that `~` alone
    plot.figure_format(out)
    curves = plot.run_curves(runs, metric, x)
    if warning := plot.unit_warning(curves, metric):
        _err(warning)
    plot.save_png(plot.runs_figure(curves, metric, x), out)
    typer.echo(f"wrote {out}")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the recipes shipped with lmtrain: task, data, hardware and measured result."""
    typer.echo(catalog.table(catalog.recipes()))
    _err(
        "run one: lmtrain fit NAME; copy one to edit: lmtrain init NAME [PATH]; "
        "fetch its data: lmtrain download NAME"
    )


@app.command("init")
@_user_errors
def init_cmd(
    recipe: Annotated[
        str, typer.Argument(help="Recipe name (lmtrain recipes).", show_default=False)
    ],
    path: Annotated[
        # A str, not a Path: Path drops the trailing "/" of `new/`, which asks for a folder.
        str | None,
        typer.Argument(
            help="File or folder (an existing one, or a path ending in /) to write; default "
            "./RECIPE.yaml. Never overwritten.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a copy of a shipped recipe to edit, then run it with `lmtrain fit PATH`.

    To start from every key and its default instead: lmtrain config > my.yaml
    """
    target = catalog.copy_recipe(recipe, path)
    typer.echo(f"wrote {target}; edit it, then: lmtrain fit {target}")


@app.command("download")
@_user_errors
def download_cmd(
    corpus: Annotated[
        str,
        typer.Argument(
            help="wikitext-2 or tinyshakespeare, or a recipe's name (its corpus).",
            show_default=False,
        ),
    ],
    dest: Annotated[
        Path | None,
        typer.Argument(
            help="Folder that receives CORPUS/; default $LMTRAIN_DATA, else ./data.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Fetch a corpus of the recipes from a pinned commit and check its sha256.

    A file is moved into place only when its checksum matches; a mismatch deletes it, exit 2.

    Files already present and correct are kept. Mirrors: WIKITEXT2_URL, TINYSHAKESPEARE_URL.
    """
    from lmtrain.download import default_dest, download

    root = dest.expanduser() if dest is not None else default_dest()
    download(corpus, root, echo=_err)
    typer.echo(f"done: export LMTRAIN_DATA={root.resolve()}")


@app.command("export")
@_user_errors
def export_cmd(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run directory (its best checkpoint) or checkpoint file.", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder to write; default RUN/export. Only a previous export is replaced."
        ),
    ] = None,
) -> None:
    """Write the model as safetensors weights, config.json, vocab.json and a README model card.

    Loading an export (lmtrain eval/sample/score EXPORT, lmtrain.load) never unpickles anything.
    """
    from lmtrain.export import FILES, export_run

    result = export_run(run, out)
    typer.echo(
        f"exported {result.checkpoint} ({result.parameters:,} parameters) to {result.out}: "
        + ", ".join(FILES)
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
