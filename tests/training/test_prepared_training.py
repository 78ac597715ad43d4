"""Training from prepared token files (data.cache_dir) is training from the text, exactly;
bits per byte in every evaluation, whatever the tokeniser."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

import lmtrain.data.prepare as prepare_module
import lmtrain.evaluation.entry as evaluation_entry
import lmtrain.training.data as train_module
from conftest import fit_with_losses, tiny_config, write_tiny_files
from lmtrain.checkpoint import load_model
from lmtrain.config import Config, config_from_dict, load_config
from lmtrain.data.batching import StreamBatches
from lmtrain.data.tokenizers import ByteVocab, Settings, Tokenizer, build, from_dict
from lmtrain.data.variable_bptt import VariableStreamBatches
from lmtrain.errors import ConfigError
from lmtrain.evaluation.stream import EvalResult, unigram_baseline
from lmtrain.training import fit

OLD = 1_000_000_000  # outside the window in which a just-written file is hashed every time
# Multi-byte characters (2, 3 and 4 UTF-8 bytes): bytes, characters and words all differ.
MULTI_TEXT = (
    "le café est très bon .\nnaïve façade — 日本語 の 文 .\nthe cat sat on the mat 🐈 .\n"
) * 12
SETTINGS = {
    "word stream": ("word",),
    "char variable bptt": ("char", "train.variable_bptt=true"),
    "word sentences": ("word", "data.mode=sentences"),
    "byte stream": ("byte",),
}


@pytest.fixture
def old_files(tiny_files: dict[str, Path]) -> dict[str, Path]:
    for path in tiny_files.values():
        os.utime(path, (OLD, OLD))
    return tiny_files


def _config(tmp_path: Path, files: dict[str, Path], run: str, *overrides: str) -> Config:
    return tiny_config(
        tmp_path, files, "train.max_steps=10", "train.eval_every=5", f"run.dir={tmp_path / run}",
        *overrides,
    )  # fmt: skip


def _fit(cfg: Config, lines: list[str] | None = None, resume: str | None = None):
    echo = (lambda _: None) if lines is None else lines.append
    result = fit_with_losses(cfg, resume=resume, quiet=True, echo=echo)
    # Read raw: the checkpoint's validation does not know the byte vocabulary yet (see below).
    saved = torch.load(Path(cfg.run.dir) / "checkpoints" / "last.pt", weights_only=True)
    return result.losses, saved["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _refuse_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("the text was read although the cache holds it")

    monkeypatch.setattr(prepare_module, "read_text", refuse)


def _ids_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.ids"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("setting", SETTINGS.values(), ids=SETTINGS.keys())
def test_training_from_prepared_files_equals_training_from_text(
    tmp_path: Path,
    old_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    setting: tuple[str, ...],
) -> None:
    kind, *more = setting
    cache = tmp_path / "cache"
    plain = _config(
        tmp_path, old_files, "plain", f"data.tokenizer={kind}", "data.cache_dir=null", *more
    )
    assert plain.data.cache_dir is None  # cache off: tokenised in memory
    losses, weights = _fit(plain)
    assert len(losses) == 10

    lines: list[str] = []
    first = _config(
        tmp_path, old_files, "first", f"data.tokenizer={kind}", f"data.cache_dir={cache}", *more
    )
    got_losses, got_weights = _fit(first, lines)
    assert [line for line in lines if "tokenising" in line] == [
        f"data.train: tokenising {old_files['train']} into {cache} (not prepared yet)",
        f"data.valid: tokenising {old_files['valid']} into {cache} (not prepared yet)",
    ]
    assert got_losses == losses
    _assert_same_weights(got_weights, weights)
    # Stored as the smallest type: the tiny vocabularies fit uint8, the 258 bytes need uint16.
    train_ids = _ids_files(cache)[-1]
    tokens = train_module.prepare_data(plain).train.numel()
    assert train_ids.stat().st_size == tokens * (2 if kind == "byte" else 1)

    # A second run maps the prepared files: no text is read, nothing is tokenised.
    _refuse_reading(monkeypatch)
    lines.clear()
    again = _config(
        tmp_path, old_files, "again", f"data.tokenizer={kind}", f"data.cache_dir={cache}", *more
    )
    again_losses, again_weights = _fit(again, lines)
    assert not [line for line in lines if "tokenising" in line]
    assert again_losses == losses
    _assert_same_weights(again_weights, weights)


DAMAGE = {
    "truncated ids": (lambda ids, header: ids.write_bytes(ids.read_bytes()[:-3]), "truncated?"),
    "garbage header": (lambda ids, header: header.write_text("{"), "is damaged"),
    "ids rewritten": (
        lambda ids, header: (ids.write_bytes(bytes(ids.stat().st_size)), os.utime(ids, (1, 1))),
        "its sha256 is not the header's",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_cache_is_rebuilt_and_trains_the_same(
    tmp_path: Path, old_files: dict[str, Path], damage
) -> None:
    harm, why = damage
    cache = tmp_path / "cache"
    cfg = _config(tmp_path, old_files, "first", f"data.cache_dir={cache}")
    losses, weights = _fit(cfg)
    ids = _ids_files(cache)[-1]  # the training split: the longer text
    harm(ids, ids.with_suffix(".json"))

    lines: list[str] = []
    again = _config(tmp_path, old_files, "again", f"data.cache_dir={cache}")
    again_losses, again_weights = _fit(again, lines)
    rebuilt = [line for line in lines if "tokenising" in line]
    assert (
        len(rebuilt) == 1 and rebuilt[0].startswith("data.train: tokenising") and why in rebuilt[0]
    )
    assert again_losses == losses
    _assert_same_weights(again_weights, weights)


def test_a_resumed_run_maps_the_same_files_and_continues_exactly(
    tmp_path: Path, old_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    runs = {}
    for name, extra in (("plain", ()), ("cached", (f"data.cache_dir={cache}",))):
        _fit(_config(tmp_path, old_files, name, "train.max_steps=5", *extra))
        if name == "cached":
            _refuse_reading(monkeypatch)  # the resume finds both splits prepared
        runs[name] = _fit(_config(tmp_path, old_files, name, *extra), resume="auto")
    assert sorted(runs["cached"][0]) == list(range(6, 11))
    assert runs["cached"][0] == runs["plain"][0]
    _assert_same_weights(runs["cached"][1], runs["plain"][1])


# --- batching of uint ids ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.int32])
def test_batches_of_narrow_ids_are_those_of_int64_ids_without_a_copy(dtype: torch.dtype) -> None:
    ids = torch.randint(0, 250, (997,))
    narrow = ids.to(dtype)
    for make in (
        lambda x: StreamBatches(x, 6, 7),
        lambda x: StreamBatches(x, 6, 7).shard(1, 3),
        lambda x: VariableStreamBatches(x, 4, 10, seed=3),
        lambda x: VariableStreamBatches(x, 4, 10, seed=3).shard(0, 2),
    ):
        wide, small = make(ids), make(narrow)
        # A view of the (mapped) ids, never a copy of them.
        assert small.streams.untyped_storage().data_ptr() == narrow.untyped_storage().data_ptr()
        pairs = list(zip(wide.batches(1), small.batches(1), strict=True))
        assert len(pairs) > 5
        for a, b in pairs:
            assert b.inputs.dtype == b.targets.dtype == torch.long
            assert b.inputs.is_contiguous() and b.targets.is_contiguous()
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
            assert a.num_tokens == b.num_tokens
            assert (a.carry is None) == (b.carry is None)


def test_unigram_baseline_of_narrow_ids_is_that_of_int64_ids(monkeypatch) -> None:
    # uint8 indices would be read as a mask: the ids must be converted, a chunk at a time.
    # `import lmtrain.evaluation.stream` would give the API's evaluate function, which shadows the module.
    evaluate_module = importlib.import_module("lmtrain.evaluation.stream")
    train, valid = torch.randint(1, 200, (5000,)), torch.randint(1, 200, (777,))
    want = unigram_baseline(train, valid, 256, "word")
    monkeypatch.setattr(evaluate_module, "_COUNT_CHUNK", 100)
    got = unigram_baseline(train.to(torch.uint8), valid.to(torch.uint8), 256, "word")
    assert got.tokens == want.tokens == 776
    assert got.nll == pytest.approx(want.nll, rel=1e-12)


# --- bits per byte -------------------------------------------------------------------------


def test_bits_per_byte_is_the_nll_over_the_texts_utf8_bytes() -> None:
    text = "naïve — 日本 🐈\n"
    assert len(text.encode("utf-8")) == 23 and len(text) == 13
    plain = EvalResult(nll=10.0, tokens=12, kind="char")
    assert plain.bpb is None and "bpb" not in plain.to_dict() and "bpb" not in plain.summary()
    result = plain.with_text(text)
    assert result.text_bytes == 23
    assert result.bpb == pytest.approx(10.0 / 23 / math.log(2), rel=1e-15)
    assert result.to_dict()["bpb"] == result.bpb
    assert f"| bpb {result.bpb:.4f} |" in result.summary()
    assert result.loss == plain.loss and result.bpc == plain.bpc  # nothing else changes


@pytest.mark.parametrize("cached", [False, True], ids=["in memory", "prepared"])
@pytest.mark.parametrize("kind", ["word", "char", "byte"])
@pytest.mark.parametrize("mode", ["stream", "sentences"])
def test_every_tokeniser_reports_bits_per_byte_of_the_validation_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, mode: str, cached: bool
) -> None:
    files = write_tiny_files(tmp_path)
    for split in ("train", "valid"):
        files[split].write_text(MULTI_TEXT, encoding="utf-8")
    text_bytes = len(MULTI_TEXT.encode("utf-8"))
    assert text_bytes > len(MULTI_TEXT)
    seen: list[EvalResult] = []
    name = "evaluate_sentences" if mode == "sentences" else "evaluate_ids"
    real = getattr(evaluation_entry, name)

    def spy(*args, **kwargs) -> EvalResult:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(evaluation_entry, name, spy)
    extra = [f"data.cache_dir={tmp_path / 'cache'}"] if cached else []
    cfg = _config(
        tmp_path, files, "run", f"data.tokenizer={kind}", f"data.mode={mode}", "train.max_steps=5",
        *extra,
    )  # fmt: skip
    lines: list[str] = []
    fit(cfg, quiet=True, echo=lines.append)
    assert len(seen) == 1
    result = seen[0]
    assert result.kind == kind and result.text_bytes == text_bytes
    assert result.bpb == pytest.approx(result.nll / text_bytes / math.log(2), rel=1e-12)
    assert result.to_dict()["bpb"] == result.bpb
    assert any(f"val {result.summary()}" in line for line in lines)
    baseline = next(line for line in lines if line.startswith("unigram baseline"))
    assert " | bpb " in baseline


# --- the byte tokeniser and the config -----------------------------------------------------


def test_byte_vocabularies_round_trip_through_the_vocabulary_dispatch() -> None:
    built = build("byte", "ignored", Settings())
    assert isinstance(built, ByteVocab) and len(built) == 258
    back = from_dict(json.loads(json.dumps(built.to_dict())))
    assert isinstance(back, ByteVocab)
    assert back.decode(back.encode(MULTI_TEXT).ids) == MULTI_TEXT
    assert [back.stoi[t] for t in back.tokenize("é")] == back.encode("é").ids.tolist()
    assert isinstance(from_dict(build("char", "ab", Settings()).to_dict()), Tokenizer)


def test_a_byte_model_loads_for_eval_sample_and_resume(
    tmp_path: Path, old_files: dict[str, Path]
) -> None:
    cfg = _config(tmp_path, old_files, "run", "data.tokenizer=byte", "train.max_steps=5")
    fit(cfg, quiet=True)
    _, vocab, _ = load_model(tmp_path / "run")
    assert isinstance(vocab, ByteVocab)


def test_config_takes_cache_dir_and_byte_and_refuses_what_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CACHE_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = tmp_path / "c.yaml"

    def load(data: str) -> Config:
        path.write_text(f"data: {{{data}}}\n", encoding="utf-8")
        return load_config(path)

    assert load("tokenizer: byte").data.tokenizer == "byte"
    assert load("cache_dir: ~/prepared").data.cache_dir == str(tmp_path / "home" / "prepared")
    assert load("cache_dir: '${CACHE_ROOT}/p'").data.cache_dir == str(tmp_path / "root" / "p")
    with pytest.raises(
        ConfigError, match=r"data.cache_dir: .*\$\{NOT_SET_ANYWHERE\}, which is not set"
    ):
        load("cache_dir: '${NOT_SET_ANYWHERE}/p'")
    with pytest.raises(ConfigError, match="data.cache_dir: must not be empty"):
        load("cache_dir: ' '")
    with pytest.raises(ConfigError, match="data.tokenizer"):
        load("tokenizer: bpe")
    with pytest.raises(ConfigError, match="data.max_size: the byte vocabulary is fixed"):
        load("tokenizer: byte, max_size: 100")


@pytest.mark.slow
def test_under_torchrun_rank_zero_prepares_and_every_rank_maps(tmp_path: Path) -> None:
    from tests.runtime.test_distributed import STEPS, _launch, _losses, _raw

    data = tmp_path / "data"
    data.mkdir()
    write_tiny_files(data)
    cache = tmp_path / "cache"
    raw = _raw(data)
    single_raw = json.loads(json.dumps(raw))
    single_raw["run"]["dir"] = str(tmp_path / "single")
    single = fit_with_losses(config_from_dict(single_raw), quiet=True, echo=lambda _: None)

    raw["data"]["cache_dir"] = str(cache)
    procs = _launch(raw, tmp_path / "ddp")
    for proc in procs:
        assert proc.returncode == 0, proc.stderr
    # Rank 0 tokenised each split once, before any rank mapped it; rank 1 said nothing.
    assert procs[0].stdout.count("data.train: tokenising") == 1
    assert procs[0].stdout.count("data.valid: tokenising") == 1
    assert procs[1].stdout == ""
    assert len(list(cache.glob("*.ids"))) == 2 and not list(cache.glob(".*.tmp"))
    ddp = _losses(tmp_path / "ddp")["losses"]
    assert sorted(ddp) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert ddp[step] == pytest.approx(single.losses[step], rel=1e-5), step


@pytest.mark.parametrize("tokenizer", ["word", "char", "byte"])
def test_eval_json_reports_bits_per_byte_for_every_tokeniser(
    tmp_path: Path, tokenizer: str, cli
) -> None:
    from conftest import invoke

    files = write_tiny_files(tmp_path)
    files["test"].write_text("the cat sat on the mat . é\n" * 8, encoding="utf-8")
    cfg = tiny_config(tmp_path, files, f"data.tokenizer={tokenizer}", "train.max_steps=2")
    fit(cfg, quiet=True)
    r = invoke(cli, "eval", tmp_path / "run", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    text_bytes = len(files["test"].read_text(encoding="utf-8").encode("utf-8"))
    assert out["bpb"] == pytest.approx(out["nll"] / text_bytes / math.log(2), rel=1e-12)


def test_lmtrain_prepare_fills_the_cache_that_fit_then_maps(
    tmp_path: Path, old_files: dict[str, Path], cli, monkeypatch
) -> None:
    from conftest import invoke

    cache = tmp_path / "cache"
    cfg = _config(tmp_path, old_files, "run", f"data.cache_dir={cache}")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    r = invoke(cli, "prepare", config)
    assert r.exit_code == 0, r.output
    tokens = build("word", old_files["train"].read_text(), Settings()).encode(
        old_files["train"].read_text()
    )
    assert f"train: {old_files['train']}: {tokens.ids.numel():,} tokens as uint8" in r.stdout
    assert sorted(p.suffix for p in cache.glob("*.ids")) == [".ids", ".ids"]

    _refuse_reading(monkeypatch)
    fit(cfg, quiet=True)  # maps the prepared ids; reading the text would fail
    # Without data.cache_dir there is nothing to prepare into: a clear error, nothing written.
    config.write_text(_config(tmp_path, old_files, "run2", "data.cache_dir=null").to_yaml())
    r = invoke(cli, "prepare", config)
    assert r.exit_code == 2 and "data.cache_dir is not set" in r.stderr
    assert not (tmp_path / "run2").exists()


def test_a_cache_dir_that_is_a_file_is_named_and_left_alone(
    tmp_path: Path, old_files: dict[str, Path], cli
) -> None:
    from conftest import invoke

    victim = tmp_path / "notes.txt"
    victim.write_text("mine\n")
    cfg = _config(tmp_path, old_files, "run", f"data.cache_dir={victim}")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    for command in ("prepare", "fit"):
        r = invoke(cli, command, config)
        assert r.exit_code == 2, r.output
        assert f"data.cache_dir {victim} exists and is not a directory" in r.stderr
        assert "damaged" not in r.stderr
    assert victim.read_text() == "mine\n"
    assert not (tmp_path / "run").exists()
