"""`lmtrain export`: safetensors weights, config.json, vocab.json, a model card; loads unpickled."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import dead_pid, invoke, tiny_config, write_tiny_files
from lmtrain.checkpoint import load_model
from lmtrain.config import load_config
from lmtrain.errors import LmtrainError
from lmtrain.evaluation.scoring import score_texts
from lmtrain.export import (
    export_run,
    is_export_dir,
    load_export,
    portable_path,
    shareable_config,
)
from lmtrain.training import fit

SENTENCES = ["the cat sat on the mat .", "the log sat on the dog ."]


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained word model whose decoder shares the embedding matrix."""
    tmp = tmp_path_factory.mktemp("export")
    cfg = tiny_config(tmp, write_tiny_files(tmp), "model.tie_weights=true", "train.epochs=1")
    return fit(cfg, quiet=True, echo=lambda _: None).run_dir


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_export_writes_the_four_files_and_loads_the_same_model(
    tied_run: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "exported"
    r = invoke(cli, "export", tied_run, "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        ".lmtrain-export.json",
        "README.md",
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]
    assert is_export_dir(out) and not is_export_dir(tied_run)
    # Made to be shared: the weights get the umask's permissions like the JSON files.
    modes = {(out / n).stat().st_mode & 0o777 for n in ("model.safetensors", "config.json")}
    assert len(modes) == 1
    # The tied matrix is stored once; loading ties the decoder to it again.
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert f.metadata()["format"] == "lmtrain-export"
    assert ("embedding.weight" in names) != ("output.decoder.weight" in names)
    model, vocab, cfg = load_export(out)
    assert model.output.decoder.weight is model.embedding.weight
    ref, ref_vocab, ref_cfg = load_model(tied_run)
    assert cfg.to_dict() == shareable_config(ref_cfg) and vocab.itos == ref_vocab.itos
    ref_state = ref.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name
    got = [s.logprob for s in score_texts(model, vocab, SENTENCES)]
    want = [s.logprob for s in score_texts(ref, ref_vocab, SENTENCES)]
    assert got == want


def test_config_json_is_the_resolved_config_and_a_valid_config_file(tied_run: Path) -> None:
    out = export_run(tied_run).out
    assert out == tied_run / "export"
    saved = load_model(tied_run)[2]
    # The resolved config, with its paths in a form that names no folder of this machine.
    assert json.loads((out / "config.json").read_text()) == shareable_config(saved)
    # JSON is YAML: `lmtrain fit config.json`
    assert load_config(out / "config.json").to_dict() == shareable_config(saved)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["kind"] == "word" and vocab["itos"][:2] == ["<pad>", "<unk>"]


def test_model_card_states_data_metrics_and_command(tied_run: Path, tmp_path: Path) -> None:
    out = export_run(tied_run, tmp_path / "card").out
    card = (out / "README.md").read_text(encoding="utf-8")
    from lmtrain.checkpoint import load_checkpoint, resolve_checkpoint

    progress = load_checkpoint(resolve_checkpoint(tied_run)).progress
    assert f"best validation loss {progress.best_val_loss:.4f} nats/token" in card
    assert f"{progress.step:,} optimiser steps, {progress.tokens:,} training tokens" in card
    cfg = load_model(tied_run)[2]
    assert f"- train: `{portable_path(cfg.data.train)}`" in card
    assert "    lmtrain fit config.json" in card


def test_loading_an_export_never_unpickles(
    tied_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = export_run(tied_run, tmp_path / "safe").out
    calls: list[str] = []

    def refuse(name: str):
        def call(*args: object, **kwargs: object) -> None:
            calls.append(name)
            raise RuntimeError(f"{name} called")

        return call

    for target, name in (
        (torch, "load"),
        (torch.serialization, "load"),
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
    ):
        monkeypatch.setattr(target, name, refuse(f"{target.__name__}.{name}"))
    with pytest.raises(LmtrainError):
        load_model(tied_run)  # the guard works: a checkpoint does go through torch.load
    assert calls
    calls.clear()
    model, vocab, _ = load_export(out)
    assert len(score_texts(model, vocab, SENTENCES)) == 2
    assert calls == []


def test_export_refuses_a_folder_that_is_not_an_export(tied_run: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own file\n")
    before = _tree_hash(out)
    r = invoke(cli, "export", tied_run, "--out", out)
    assert r.exit_code == 2
    assert "not a previous export" in r.stderr and "Traceback" not in r.output
    assert _tree_hash(out) == before
    file_out = tmp_path / "file"
    file_out.write_text("x")
    r = invoke(cli, "export", tied_run, "--out", file_out)
    assert r.exit_code == 2 and "is not a folder" in r.stderr


def test_export_replaces_a_previous_export_whole(tied_run: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "again"
    assert invoke(cli, "export", tied_run, "--out", out).exit_code == 0
    (out / "config.json").write_text("{}")  # a stale export: replaced, not merged
    r = invoke(cli, "export", tied_run, "--out", out)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["model"]["tie_weights"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temporary left behind


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("truncate", "the weights do not load"),
        ("no-vocab", "vocab.json is missing"),
        ("bad-json", "cannot be read as JSON"),
        ("other-model", "the weights do not load"),
    ],
)
def test_a_damaged_export_is_a_clear_error(
    tied_run: Path, tmp_path: Path, damage: str, needle: str
) -> None:
    out = export_run(tied_run, tmp_path / "x").out
    weights = out / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "no-vocab":
        (out / "vocab.json").unlink()
    elif damage == "bad-json":
        (out / "config.json").write_text("{not json")
    else:
        cfg = json.loads((out / "config.json").read_text())
        cfg["model"]["hidden_size"] = 32
        cfg["model"]["embedding_dim"] = 32
        (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmtrainError, match=needle):
        load_export(out)


def test_default_out_of_a_loose_checkpoint_needs_out(tied_run: Path, tmp_path: Path, cli) -> None:
    loose = tmp_path / "model.pt"
    loose.write_bytes((tied_run / "checkpoints" / "last.pt").read_bytes())
    r = invoke(cli, "export", loose)
    assert r.exit_code == 2 and "--out DIR" in r.stderr
    assert invoke(cli, "export", loose, "--out", tmp_path / "e").exit_code == 0


def test_eval_sample_score_and_load_accept_an_export(tied_run: Path, tmp_path: Path, cli) -> None:
    import lmtrain

    out = export_run(tied_run, tmp_path / "cli").out
    # The export names no folder of this machine, so its data.test is given as --data.
    test = load_model(tied_run)[2].data.test
    for args in (
        ("eval", "--json", "--data", test),
        ("sample", "--prompt", "the cat", "--max-tokens", "8", "--seed", "4"),
        ("score", *SENTENCES, "--json"),
    ):
        from_run = invoke(cli, args[0], tied_run, *args[1:])
        from_export = invoke(cli, args[0], out, *args[1:])
        assert from_run.exit_code == 0 and from_export.exit_code == 0, from_export.output
        if args[0] == "eval":  # the same report, but each names the checkpoint it read
            reports = [json.loads(r.stdout) for r in (from_run, from_export)]
            assert reports[0].pop("checkpoint") == str(tied_run / "checkpoints" / "best.pt")
            assert reports[1].pop("checkpoint") == str(out)
            assert reports[1] == reports[0]
            continue
        assert from_export.stdout == from_run.stdout
    assert lmtrain.load(out).score(SENTENCES[0]) == lmtrain.load(tied_run).score(SENTENCES[0])


# -- the export folder is owned: only the files export wrote are ever replaced ------------------


def _user_files(folder: Path) -> dict[str, bytes]:
    files = {
        "tokenizer.json": b'{"model": "mine"}',
        "NOTES.md": b"# my notes\n",
        "sub/data.bin": b"\x00\x01",
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def test_export_refuses_a_foreign_folder_that_looks_like_an_export(
    tied_run: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "hf-model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"someone else's weights")
    (out / "config.json").write_text('{"architectures": ["GPT2"]}')
    _user_files(out)
    before = _tree_hash(out)
    r = invoke(cli, "export", tied_run, "--out", out)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert (
        "not a previous export" in r.stderr and "never replaces a file it did not write" in r.stderr
    )
    assert "NOTES.md" in r.stderr and "Choose another --out" in r.stderr
    assert _tree_hash(out) == before


@pytest.mark.parametrize("where", ["out", "run"])
def test_re_export_replaces_only_its_own_files(
    tied_run: Path, tmp_path: Path, cli, where: str
) -> None:
    if where == "run":  # RUN/export, the default
        out = tied_run / "export"
        args: tuple = ()
    else:
        out = tmp_path / "exp"
        args = ("--out", out)
    assert invoke(cli, "export", tied_run, *args).exit_code == 0
    try:
        mine = _user_files(out)
        (out / "README.md").write_text("stale card")
        r = invoke(cli, "export", tied_run, *args)
        assert r.exit_code == 0, r.output
        assert {rel: (out / rel).read_bytes() for rel in mine} == mine
        assert (out / "README.md").read_text() != "stale card"
        assert is_export_dir(out) and load_export(out)[1].itos == load_model(tied_run)[1].itos
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    finally:
        if where == "run":
            import shutil

            shutil.rmtree(out)


def test_an_interrupted_export_is_refused_on_load_and_finished_by_the_next(
    tied_run: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from lmtrain import files

    out = tmp_path / "exp"
    real = files.write_bytes

    def full(path: Path, data: bytes) -> None:
        raise files.WriteError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    assert invoke(cli, "export", tied_run, "--out", out).exit_code == 0
    monkeypatch.setattr(files, "write_bytes", full)  # the new weights find the disk full
    r = invoke(cli, "export", tied_run, "--out", out)
    monkeypatch.setattr(files, "write_bytes", real)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "could not write the export (No space left on device)" in r.stderr
    assert "incomplete export" in r.stderr
    # config.json is the new export's, the weights still the old one's: never loaded as one.
    with pytest.raises(LmtrainError, match="interrupted while it was written"):
        load_export(out)
    assert invoke(cli, "export", tied_run, "--out", out).exit_code == 0
    assert load_export(out)[2].to_dict() == shareable_config(load_model(tied_run)[2])


def test_an_export_without_a_manifest_is_replaced_but_a_file_of_the_users_is_not(
    tied_run: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "old"
    assert invoke(cli, "export", tied_run, "--out", out).exit_code == 0
    (out / ".lmtrain-export.json").unlink()  # as an lmtrain without manifests wrote it
    assert invoke(cli, "export", tied_run, "--out", out).exit_code == 0
    assert (out / ".lmtrain-export.json").is_file()
    (out / ".lmtrain-export.json").unlink()
    (out / "NOTES.md").write_text("mine")
    before = _tree_hash(out)
    r = invoke(cli, "export", tied_run, "--out", out)
    assert r.exit_code == 2 and "NOTES.md" in r.stderr and _tree_hash(out) == before


def test_export_removes_what_a_killed_export_left(tied_run: Path, tmp_path: Path, cli) -> None:

    out = tmp_path / "exp"
    assert invoke(cli, "export", tied_run, "--out", out).exit_code == 0
    stale = out / f".model.safetensors.{dead_pid()}.0123abcd.tmp"
    stale.write_bytes(b"half of the weights")
    assert invoke(cli, "export", tied_run, "--out", out).exit_code == 0
    assert not stale.exists()
