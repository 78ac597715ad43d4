"""Multi-process training on CPU with Gloo: the same losses as one process, resume, one writer."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import fit_with_losses
from lmtrain.config import Config
from lmtrain.data.batching import SentenceBatches, StreamBatches
from lmtrain.data.variable_bptt import VariableStreamBatches
from lmtrain.runtime.distributed import DistContext, DistributedError, check_batch_size
from tests.conftest import TINY_TEXT

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).resolve().parents[2]
STEPS = 20


def _raw(data: Path, **train: object) -> dict:
    """A tiny word-level LSTM whose global batch (4 streams) splits over 2 processes."""
    return {
        "data": {
            "train": str(data / "train.txt"),
            "valid": str(data / "valid.txt"),
            "test": str(data / "valid.txt"),
            "tokenizer": "word",
        },
        "model": {"cell": "lstm", "embedding_dim": 16, "hidden_size": 16, "num_layers": 2},
        "train": {
            "epochs": 1,
            "max_steps": STEPS,
            "batch_size": 4,
            "bptt": 6,
            "lr": 0.01,
            "log_every": 7,
            "eval_every": 5,
            "seed": 3,
            "device": "cpu",
            "dist_timeout": 60,
            **train,
        },
        "run": {"dir": "run", "tensorboard": True, "sample_tokens": 4},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(raw: dict, out: Path, *args: str, world: int = 2) -> list[subprocess.CompletedProcess]:
    """Start `world` ranks as torchrun would (env://) and wait for all of them."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / f"config-{len(list(out.glob('config-*')))}.json"
    cfg_path.write_text(json.dumps(raw))
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(cfg_path), str(out), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)  # a hang fails the test instead of CI
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


def _losses(out: Path, rank: int = 0) -> dict:
    d = json.loads((out / f"losses-rank{rank}.json").read_text())
    d["losses"] = {int(k): v for k, v in d["losses"].items()}
    return d


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _corpus(
    factory: pytest.TempPathFactory, name: str, text: str, valid_chars: int
) -> tuple[Path, Path]:
    """A fresh root folder with data/train.txt (the text) and data/valid.txt (its start)."""
    torch.set_num_threads(1)
    root = factory.mktemp(name)
    data = root / "data"
    data.mkdir()
    (data / "train.txt").write_text(text, encoding="utf-8")
    (data / "valid.txt").write_text(text[:valid_chars], encoding="utf-8")
    return root, data


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One process, 2 processes straight through, and 2 processes stopped at 10 and resumed."""
    root, data = _corpus(tmp_path_factory, "dist", TINY_TEXT, 600)
    raw = _raw(data)

    single_raw = json.loads(json.dumps(raw))
    single_raw["run"]["dir"] = str(root / "single")
    from lmtrain.config import config_from_dict

    single = fit_with_losses(config_from_dict(single_raw), quiet=True, echo=lambda _: None)

    straight = _launch(raw, root / "straight")
    first = _launch(_raw(data, max_steps=10), root / "resumed")
    second = _launch(raw, root / "resumed", "--resume")
    return {
        "root": root,
        "data": data,
        "single": single,
        "straight": straight,
        "first": first,
        "second": second,
    }


@pytest.mark.slow
def test_two_processes_give_the_single_process_losses(runs: dict) -> None:
    for proc in runs["straight"]:
        assert proc.returncode == 0, proc.stderr
    single = runs["single"].losses
    ddp = _losses(runs["root"] / "straight")
    assert sorted(ddp["losses"]) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert ddp["losses"][step] == pytest.approx(single[step], rel=1e-5), step
    # Rank 1 reports the same global losses, not its own half of the batch.
    assert _losses(runs["root"] / "straight", 1)["losses"] == ddp["losses"]
    # Validation is the exact single-stream figure, whatever the number of processes.
    assert ddp["best_val_loss"] == pytest.approx(runs["single"].progress.best_val_loss, rel=1e-6)
    assert math.isfinite(ddp["best_val_loss"])


@pytest.mark.slow
def test_only_rank_zero_writes_files(runs: dict) -> None:
    out = runs["root"] / "straight"
    rank0 = _files(out / "rank0")
    assert "run/config.yaml" in rank0
    assert {"run/checkpoints/last.pt", "run/checkpoints/best.pt"} <= set(rank0)
    assert any(f.startswith("run/tb/events.out.tfevents") for f in rank0)
    assert _files(out / "rank1") == []
    # And only rank 0 prints progress.
    assert re.search(r"step 20 \| epoch 1 \| \d+\.\d min \| val loss", runs["straight"][0].stdout)
    assert runs["straight"][1].stdout == ""


@pytest.mark.slow
def test_resume_under_ddp_continues_exactly(runs: dict) -> None:
    for proc in runs["first"] + runs["second"]:
        assert proc.returncode == 0, proc.stderr
    straight = _losses(runs["root"] / "straight")["losses"]
    resumed = _losses(runs["root"] / "resumed")["losses"]
    assert sorted(resumed) == list(range(11, STEPS + 1))
    for step in range(11, STEPS + 1):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), step
    assert "resuming at step 10" in runs["second"][0].stdout
    assert _files(runs["root"] / "resumed" / "rank1") == []
    ckpt = torch.load(runs["root"] / "resumed/rank0/run/checkpoints/last.pt", weights_only=True)
    assert ckpt["progress"]["step"] == STEPS
    # The full batch's state is saved (4 streams), not rank 0's half of it.
    assert [tuple(s.shape) for s in ckpt["carried_state"]] == [(2, 4, 16), (2, 4, 16)]
    assert len(ckpt["rng"]["by_rank"]) == 2


def _sentence_text() -> str:
    """25 lines of 1 to 11 words: sentence batches of unequal rows, the last one a single row."""
    words = TINY_TEXT.split()
    return "".join(" ".join(words[3 * i : 3 * i + 1 + (5 * i) % 11]) + "\n" for i in range(25))


SENTENCE_STOP = 11  # mid-batch: the checkpoint carries a state


@pytest.fixture(scope="module")
def sentence_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Sentences mode: one process, 2 processes for a whole epoch, and 2 stopped and resumed."""
    root, data = _corpus(tmp_path_factory, "dist-sentences", _sentence_text(), 300)

    def raw(**train: object) -> dict:
        r = _raw(
            data, **{"bptt": 3, "max_steps": None, "eval_every": None, "log_every": 5, **train}
        )
        r["data"]["mode"] = "sentences"
        return r

    from lmtrain.config import config_from_dict

    single_raw = raw()
    single_raw["run"]["dir"] = str(root / "single")
    single = fit_with_losses(config_from_dict(single_raw), quiet=True, echo=lambda _: None)
    straight = _launch(raw(), root / "straight")
    first = _launch(raw(max_steps=SENTENCE_STOP), root / "resumed")
    # One process continues a copy of the 2-process checkpoint.
    shutil.copytree(root / "resumed/rank0/run", root / "single-resumed")
    stopped = torch.load(root / "single-resumed/checkpoints/last.pt", weights_only=True)
    single_raw["run"]["dir"] = str(root / "single-resumed")
    single_resumed = fit_with_losses(
        config_from_dict(single_raw), resume="auto", quiet=True, echo=lambda _: None,
    )  # fmt: skip
    return {
        "root": root,
        "single": single,
        "straight": straight,
        "first": first,
        "stopped": stopped,
        "second": _launch(raw(), root / "resumed", "--resume"),
        "single_resumed": single_resumed,
    }


@pytest.mark.slow
def test_sentences_mode_two_processes_give_the_single_process_losses(sentence_runs: dict) -> None:
    for proc in sentence_runs["straight"]:
        assert proc.returncode == 0, proc.stderr
    single = sentence_runs["single"]
    steps = single.progress.step  # one epoch
    ddp = _losses(sentence_runs["root"] / "straight")
    assert sorted(ddp["losses"]) == sorted(single.losses) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert ddp["losses"][step] == pytest.approx(single.losses[step], rel=1e-5), step
    assert ddp["best_val_loss"] == pytest.approx(single.progress.best_val_loss, rel=1e-6)
    assert (
        "2 processes, each with 2 of each batch's sequences" in sentence_runs["straight"][0].stdout
    )
    assert _files(sentence_runs["root"] / "straight" / "rank1") == []
    ckpt = torch.load(
        sentence_runs["root"] / "straight/rank0/run/checkpoints/last.pt", weights_only=True
    )
    assert ckpt["progress"]["tokens"] == single.progress.tokens


@pytest.mark.slow
def test_sentences_mode_resume_under_ddp_continues_exactly(sentence_runs: dict) -> None:
    root = sentence_runs["root"]
    for proc in sentence_runs["first"] + sentence_runs["second"]:
        assert proc.returncode == 0, proc.stderr
    straight = _losses(root / "straight")["losses"]
    resumed = _losses(root / "resumed")["losses"]
    last = max(straight)
    assert sorted(resumed) == list(range(SENTENCE_STOP + 1, last + 1))
    for step in resumed:
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), step
    # Stopped inside a batch: the saved state is the global batch's running rows, which one
    # process continues just as well.
    assert sentence_runs["stopped"]["progress"]["step"] == SENTENCE_STOP
    assert sentence_runs["stopped"]["carried_state"] is not None
    alone = sentence_runs["single_resumed"].losses
    assert sorted(alone) == sorted(resumed)
    for step in alone:
        assert alone[step] == pytest.approx(straight[step], rel=1e-5), step


@pytest.mark.slow
def test_a_dead_rank_stops_the_others_with_a_clear_error(runs: dict, tmp_path: Path) -> None:
    procs = _launch(_raw(runs["data"], dist_timeout=30), tmp_path, "--die-at", "3")
    assert procs[1].returncode == 17
    assert procs[0].returncode == 2, procs[0].stderr
    assert "process 0 of 2: lost contact with the other processes" in procs[0].stderr
    assert "--resume auto" in procs[0].stderr
    assert "Traceback" not in procs[0].stderr


def test_global_batch_must_split_evenly() -> None:
    ctx = DistContext(rank=0, world=4, local_rank=0, device=torch.device("cpu"))
    check_batch_size(8, ctx)
    with pytest.raises(
        DistributedError,
        match=r"batch_size=10 is the global batch .* multiple of 4 \(e\.g\. 8 or 12\)",
    ):
        check_batch_size(10, ctx)


def test_stream_shards_interleaved_are_the_full_batch() -> None:
    ids = torch.arange(1, 61)
    full = StreamBatches(ids, 6, 4)
    shards = [full.shard(r, 3) for r in range(3)]
    assert all(len(s) == len(full) for s in shards)
    for k, batch in enumerate(full.batches()):
        parts = [list(s.batches())[k] for s in shards]
        for r, part in enumerate(parts):  # rank r holds streams r, r + 3
            assert torch.equal(part.inputs, batch.inputs[:, r::3])
            assert torch.equal(part.targets, batch.targets[:, r::3])
            assert part.global_tokens is None and not part.placeholder
        assert sum(p.num_tokens for p in parts) == batch.num_tokens


def test_variable_bptt_shards_keep_their_random_windows() -> None:
    full = VariableStreamBatches(torch.arange(1, 2001), 4, 10, seed=5)
    shard = full.shard(1, 2)
    assert isinstance(shard, VariableStreamBatches)
    assert shard.windows(3) == full.windows(3)
    for a, b in zip(full.batches(3), shard.batches(3), strict=True):
        assert torch.equal(b.inputs, a.inputs[:, 1::2])


def _sentence_batches(batch_size: int = 4, bptt: int = 3) -> SentenceBatches:
    # 13 sequences of 2..14 ids: batches of unequal lengths, the last one holds a single row.
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 50, (n,), generator=g) for n in range(2, 15)]
    return SentenceBatches(seqs, batch_size, bptt, seed=7)


@pytest.mark.parametrize("world", [2, 4])
def test_sentence_shards_interleaved_are_the_full_batch(world: int) -> None:
    full = _sentence_batches()
    shards = [full.shard(r, world) for r in range(world)]
    placeholders = 0
    for epoch in (0, 1):
        chunks = list(full.batches(epoch))
        parts = [list(s.batches(epoch)) for s in shards]
        assert all(len(p) == len(chunks) == len(full) for p in parts)  # lockstep
        for k, batch in enumerate(chunks):
            mine = [p[k] for p in parts]
            assert sum(m.num_tokens for m in mine) == batch.num_tokens
            assert {m.global_tokens for m in mine} == {batch.num_tokens}
            width = batch.inputs.size(1)
            for r, m in enumerate(mine):
                rows = range(r, width, world)  # rank r holds the batch's rows r, r + world, ...
                if not rows:
                    placeholders += 1
                    assert m.placeholder and m.num_tokens == 0 and m.carry is None
                    assert m.targets.tolist() == [[0]]  # predicts nothing
                    continue
                t = m.inputs.size(0)
                assert torch.equal(m.inputs, batch.inputs[:t, r::world])
                assert torch.equal(m.targets, batch.targets[:t, r::world])
                assert not batch.targets[t:, r::world].any()  # the rest is padding
                if batch.carry is not None:
                    assert torch.equal(m.carry, torch.arange(len(rows)))
    assert placeholders > 0


def test_sentence_shards_with_every_row_running_hold_equal_halves() -> None:
    seqs = [torch.arange(1, 8)] * 8  # equal lengths: every chunk has every row
    full = SentenceBatches(seqs, 4, 3, seed=1)
    for a, b in zip(full.shard(0, 2).batches(), full.shard(1, 2).batches(), strict=True):
        assert a.num_tokens == b.num_tokens == a.global_tokens // 2


class _Gathered(DistContext):
    """A DistContext whose all-gather returns prepared parts: no process group needed."""

    parts: list = []

    def gather_objects(self, obj):  # noqa: ANN001, ANN201
        return self.parts


@pytest.mark.parametrize(("rows", "world"), [(6, 2), (5, 2), (5, 4), (1, 2)])
def test_gather_rows_inverts_my_rows(rows: int, world: int) -> None:
    full = (torch.randn(2, rows, 3), torch.randn(2, rows, 3))
    ctxs = [_Gathered(r, world, r, torch.device("cpu")) for r in range(world)]
    parts = [c.my_rows(full) for c in ctxs]
    for r, part in enumerate(parts):
        expected = len(range(r, rows, world))
        assert (part is None) == (expected == 0)
        if part is not None:
            assert part[0].shape == (2, expected, 3)
    ctxs[0].parts = parts
    back = ctxs[0].gather_rows(parts[0])
    assert all(torch.equal(a, b) for a, b in zip(back, full, strict=True))
    ctxs[0].parts = [None] * world
    assert ctxs[0].gather_rows(None) is None


def test_default_config_is_single_process() -> None:
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
    assert Config().train.dist_timeout == 600


def test_one_process_context_is_a_world_of_one() -> None:
    from lmtrain.runtime.distributed import LocalContext, init

    ctx = init("cpu", 60)
    assert ctx == LocalContext(torch.device("cpu"))
    assert (ctx.rank, ctx.world, ctx.is_main) == (0, 1, True)
    assert ctx.sum([torch.tensor(2.5, dtype=torch.float64), 4]) == [2.5, 4.0]
    assert ctx.on_main(lambda: "done") == "done"
    state = (torch.ones(2, 3, 4),)
    assert ctx.gather_rows(state) is state and ctx.my_rows(state) is state
    assert ctx.gather_objects("x") == ["x"] and ctx.rng_by_rank() == {}
