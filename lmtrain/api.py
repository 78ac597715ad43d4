"""The Python API, for notebooks and scripts: `from lmtrain import fit, load`.

    import lmtrain

    result = lmtrain.fit("quickstart", {"train.max_steps": 200, "run.dir": "runs/nb"})
    model = lmtrain.load(result.run_dir)
    model.generate("The ", max_tokens=100, seed=0)       # -> str
    model.score(["the cat sat .", "sat cat the ."])      # -> [SentenceScore, ...]
    model.evaluate()                                     # -> EvalResult on data.test

`lmtrain.generate`, `lmtrain.score` and `lmtrain.evaluate` do the same as the methods and also
take a run directory, checkpoint or export folder in place of a Model. Mistakes raise
lmtrain.errors.LmtrainError subclasses with the message the command line would print, naming
keyword arguments (max_tokens) where the command line names options (--max-tokens).

The work is done by the library (lmtrain.training, lmtrain.evaluation, lmtrain.sample); this
module only checks Python arguments. It is longer than most because it is the whole public
Python surface, with the typed overloads editors read, in one file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import torch

from lmtrain.config import (
    Config,
    EvalOptions,
    SampleOptions,
    ScoreOptions,
    config_from_dict,
    load_config,
)
from lmtrain.errors import LmtrainError

if TYPE_CHECKING:  # loading a model for sampling need not import the training stack
    from lmtrain.data.tokenizers import Tokenizer
    from lmtrain.evaluation import EvalResult, SentenceScore
    from lmtrain.models import LanguageModel
    from lmtrain.training import FitResult

ConfigLike = str | Path | Mapping[str, Any] | Config
Overrides = Sequence[str] | Mapping[str, Any] | None


def _silent(_: str) -> None:
    """fit(quiet=True) prints nothing at all."""


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _keyword(option: re.Match[str]) -> str:
    return option.group(1).replace("-", "_")


def _keywords(message: str) -> str:
    """The library's messages name command-line options (--max-tokens); say max_tokens here."""
    return re.sub(r"--([a-z-]+)", _keyword, message)


def _json_value(value: object) -> str:
    """A path (Path("train.txt")) is written as its text; anything else JSON cannot hold is
    refused by name."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise LmtrainError(
        f"override value {value!r} ({type(value).__name__}) is not a number, string, bool, "
        "list, dict, path or None"
    )


def _flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.5}} as {"train.lr": 0.5}: a nested mapping sets the keys it names and
    keeps the others, as a dotted override does (a whole section given as one value would reset
    every key it leaves out to its default)."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _override_list(overrides: Overrides) -> list[str]:
    """Dotted overrides as `key=value` strings; a mapping's values are written as JSON, which
    the override parser reads back as the same YAML value (numbers, strings, lists, null)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={json.dumps(v, default=_json_value)}" for k, v in _flatten(overrides).items()]
    if isinstance(overrides, str):
        return [overrides]
    if not isinstance(overrides, Sequence) or not all(isinstance(o, str) for o in overrides):
        raise LmtrainError(
            f"overrides must be a dict such as {{'train.lr': 0.01}} or a list of 'key=value' "
            f"strings, got {overrides!r}"
        )
    return list(overrides)


def config(source: ConfigLike, overrides: Overrides = None) -> Config:
    """A validated Config from a file path, a recipe name, a nested dict or a Config."""
    from lmtrain.catalog import resolve_config

    extra = _override_list(overrides)
    if not isinstance(source, (str, os.PathLike, Mapping, Config)):
        raise LmtrainError(
            f"config source must be a recipe name, a YAML path, a dict or a Config, got "
            f"{source!r} ({type(source).__name__})"
        )
    if isinstance(source, Config):
        return config_from_dict(source.to_dict(), extra, "config")
    if isinstance(source, Mapping):
        return config_from_dict(dict(source), extra, "config")
    return load_config(resolve_config(source), extra)


def fit(
    source: ConfigLike,
    overrides: Overrides = None,
    *,
    resume: str | None = None,
    quiet: bool = True,
    echo: Callable[[str], None] | None = None,
    on_log: Callable[[dict[int, float]], None] | None = None,
) -> FitResult:
    """Train a model; returns the FitResult (run_dir, progress with best_val_loss, timing).

    `source`: a YAML path, a shipped recipe's name (`lmtrain recipes`), a nested dict or a
    Config. `overrides`: {"train.lr": 0.01} or ["train.lr=0.01"]. Lines go to `echo` when
    given (default: stderr, as the command line does, or nothing at all when quiet). quiet=True
    (the default) drops the progress bar and progress lines; an `echo` given still gets every
    other line (run directory, evaluations, warnings), as `lmtrain fit --quiet` prints them.
    `on_log` receives {step: loss}, each step's mean training loss over the whole batch, once
    per logging interval (train.log_every).
    """
    from lmtrain.metrics import console
    from lmtrain.training import fit as train_fit

    cfg = config(source, overrides)
    # A closed stderr pipe (`python script.py 2>&1 | head`) must not stop the training.
    say = echo if echo is not None else _silent if quiet else console(_to_stderr, sys.stderr)
    return train_fit(cfg, resume=resume, quiet=quiet, echo=say, on_log=on_log)


@dataclass
class Model:
    """A trained model with its vocabulary and config; `lmtrain.load` makes one."""

    module: LanguageModel
    """The torch module, in eval mode."""
    vocab: Tokenizer
    """Its tokenizer (lmtrain.data.tokenizers): encode, decode, len()."""
    config: Config
    """The config it was trained with."""
    source: Path
    """The run directory, checkpoint or export folder it was loaded from."""

    def __repr__(self) -> str:
        m = self.config.model
        return (
            f"Model({m.cell} {m.num_layers}x{m.hidden_size}, {self.vocab.kind} vocabulary of "
            f"{len(self.vocab):,}, from {str(self.source)!r})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: torch.device | str) -> Model:
        """Move the weights (for example to "cuda"); returns the model itself."""
        from lmtrain.runtime.device import resolve_device

        self.module.to(resolve_device(str(device), "device"))
        return self

    @overload
    def generate(
        self,
        prompt: str = "",
        *,
        max_tokens: int = ...,
        temperature: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        greedy: bool = ...,
        seed: int | None = ...,
        num_samples: None = None,
    ) -> str: ...
    @overload
    def generate(
        self,
        prompt: str = "",
        *,
        max_tokens: int = ...,
        temperature: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        greedy: bool = ...,
        seed: int | None = ...,
        num_samples: int,
    ) -> list[str]: ...
    def generate(
        self,
        prompt: str = "",
        *,
        max_tokens: int = SampleOptions.max_tokens,
        temperature: float = SampleOptions.temperature,
        top_k: int = SampleOptions.top_k,
        top_p: float = SampleOptions.top_p,
        greedy: bool = SampleOptions.greedy,
        seed: int | None = SampleOptions.seed,
        num_samples: int | None = None,
    ) -> str | list[str]:
        """The prompt followed by generated text; with num_samples=N a list of N samples
        (drawn as one batch). The same seed gives the same text. Prompt tokens missing from
        the vocabulary are read as `<unk>` with a warning."""
        from lmtrain.sample import generate as sample

        if not isinstance(prompt, str):
            raise LmtrainError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
        for name, value in (("max_tokens", max_tokens), ("top_k", top_k), ("seed", seed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise LmtrainError(f"{name} must be an int, got {value!r}")
        if num_samples is not None and (
            isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
        ):
            raise LmtrainError(f"num_samples must be an int >= 1 (or None), got {num_samples!r}")
        for name, number in (("temperature", temperature), ("top_p", top_p)):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise LmtrainError(f"{name} must be a number, got {number!r}")
        count = 1 if num_samples is None else num_samples
        opts = SampleOptions(max_tokens, temperature, top_k, top_p, greedy, count, seed)
        if problems := opts.problems():
            # The messages name command-line options (--max-tokens); say max_tokens here.
            raise LmtrainError(_keywords("; ".join(problems)))
        result = sample(self.module, self.vocab, prompt, opts)
        for w in result.warnings:
            warnings.warn(w, stacklevel=2)
        return result.texts if num_samples is not None else result.texts[0]

    @overload
    def score(self, texts: str, *, batch_size: int = ...) -> SentenceScore: ...
    @overload
    def score(self, texts: Sequence[str], *, batch_size: int = ...) -> list[SentenceScore]: ...
    def score(
        self, texts: str | Sequence[str], *, batch_size: int = ScoreOptions.batch_size
    ) -> SentenceScore | list[SentenceScore]:
        """Log-probability (.logprob nats, .log2prob), .tokens and .ppl of each sentence, each
        read from a fresh state; one text gives one score, a list gives a list in order."""
        from lmtrain.evaluation import score_texts

        single = isinstance(texts, str)
        if not single and (
            isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable)
        ):
            raise LmtrainError(
                f"texts must be a str or a list of str, got {type(texts).__name__}: {texts!r}"
            )
        items = [texts] if single else list(texts)
        if not items:
            return []
        for i, t in enumerate(items):
            if not isinstance(t, str) or not t.strip():
                raise LmtrainError(f"text {i} to score is empty or not a string: {t!r}")
        if problems := ScoreOptions(batch_size).problems():
            raise LmtrainError(_keywords("; ".join(problems)))
        scores = score_texts(self.module, self.vocab, items, batch_size)
        return scores[0] if single else scores

    def evaluate(
        self,
        text: str | Path | None = None,
        *,
        file: str | Path | None = None,
        batch_size: int = EvalOptions.batch_size,
        streams: int = EvalOptions.streams,
    ) -> EvalResult:
        """Loss (.loss nats per token), .ppl, .bpc and .tokens on held-out text, exactly as
        `lmtrain eval` computes them.

        `text`: the text itself (a str), or a file (a Path); `file=`: a file path or a
        `builtin:NAME` corpus. With neither, the run's data.test.
        """
        from lmtrain.evaluation import check_options, evaluate_file, evaluate_string

        options = EvalOptions(batch_size, streams)
        with _keyword_messages():
            check_options(options)  # before the text is read, as `lmtrain eval` does
        if isinstance(text, Path):
            text, file = None, text
        if text is not None and file is not None:
            raise LmtrainError("give the text or file=, not both")
        if text is None:
            spec = str(file) if file is not None else self.config.data.test
            if spec is None:
                raise LmtrainError("no text or file= given and the run's config has no data.test")
        elif "\n" not in text and len(text) < 4096 and Path(text).is_file():
            raise LmtrainError(
                f"{text!r} names a file, but a str is evaluated as the text itself; pass "
                f"file={text!r} or Path({text!r}) to evaluate the file"
            )
        data = self.config.data
        with _keyword_messages():
            if text is None:  # read by evaluation, as `lmtrain eval --data` reads it
                report = evaluate_file(self.module, self.vocab, data, spec, options)
            else:
                report = evaluate_string(self.module, self.vocab, data, text, "text", options)
        return report.result


@contextlib.contextmanager
def _keyword_messages() -> Iterator[None]:
    """Raise the library's plain errors with keyword names in place of option names."""
    try:
        yield
    except LmtrainError as e:
        if type(e) is not LmtrainError:
            raise
        raise LmtrainError(_keywords(str(e))) from None


def load(source: str | Path, device: torch.device | str = "cpu") -> Model:
    """A trained model from a run directory (its best checkpoint), a checkpoint file or an
    export folder (`lmtrain export`)."""
    from lmtrain.checkpoint import load_model
    from lmtrain.runtime.device import resolve_device

    module, vocab, cfg = load_model(source, resolve_device(str(device), "device"))
    return Model(module, vocab, cfg, Path(source))


def _model(model: Model | str | Path) -> Model:
    return model if isinstance(model, Model) else load(model)


def generate(model: Model | str | Path, prompt: str = "", **options: Any) -> str | list[str]:
    """`load(model).generate(prompt, **options)`; see Model.generate."""
    return _model(model).generate(prompt, **options)


def score(
    model: Model | str | Path,
    texts: str | Sequence[str],
    *,
    batch_size: int = ScoreOptions.batch_size,
) -> SentenceScore | list[SentenceScore]:
    """`load(model).score(texts)`; see Model.score."""
    return _model(model).score(texts, batch_size=batch_size)


def evaluate(
    model: Model | str | Path, text: str | Path | None = None, **options: Any
) -> EvalResult:
    """`load(model).evaluate(text, **options)`; see Model.evaluate."""
    return _model(model).evaluate(text, **options)
