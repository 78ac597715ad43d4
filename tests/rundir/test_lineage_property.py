"""Property: whatever sequence of fit, stop, resume, rewind, fork and locked-out second process
is run against one run directory, lmtrain keeps its promises about the files in it.

After every step: a file lmtrain did not write is byte-identical; the abandoned branches of
rewinds are byte-identical; the newest checkpoint of the lineage loads and is the step the model
expects; best.pt holds the lowest validation loss of its lineage; no temporary file is left; and
every file lmtrain keeps in checkpoints/ is listed in its manifest. The runs are tiny and in
process; the lock is held by a second open of the run directory in this process (flock treats
it exactly like another process's).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_rundir import snapshot

from conftest import tiny_config, write_tiny_files
from lmtrain.checkpoint import load_checkpoint
from lmtrain.errors import LmtrainError, TrainingStopped
from lmtrain.rundir import open_directory
from lmtrain.training import fit
from lmtrain.training.loop import Trainer

pytestmark = pytest.mark.slow

LEARNING_RATES = ["0.001", "0.003", "0.03"]
# Names a user might leave in a run directory; none of them is a name lmtrain writes.
USER_FILES = [
    ".write-test",
    "notes.txt",
    "tb",
    "export.txt",
    "checkpoints/step-7.pt",
    "checkpoints/step-00000999.pt",
    "checkpoints/mine.pt",
    "checkpoints/.x.tmp",
]


class Lineage(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lmtrain-lineage-"))
        self.data = write_tiny_files(self.tmp)
        self.run = self.tmp / "run"
        self.head: int | None = None  # the step last.pt must hold
        self.planted: dict[str, bytes] = {}
        self.frozen: dict[str, str] = {}  # abandoned branches: path -> sha256
        self.forks = 0

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cfg(self, *extra: str) -> Any:
        return tiny_config(
            self.tmp, self.data, "train.eval_every=2", "run.keep_last=2", "train.epochs=100",
            *extra,
        )  # fmt: skip

    def fit(
        self,
        *extra: str,
        resume: str | None = None,
        stop_after: int | None = None,
        crash_at: int | None = None,
    ) -> None:
        """fit() in process; with stop_after, a real SIGTERM after that many steps; with
        crash_at, an exception in that step (counted from the start of this call)."""
        original = Trainer.train_step
        taken = {"n": 0}

        def step(trainer: Trainer, batch: Any) -> Any:
            if taken["n"] + 1 == crash_at:
                raise RuntimeError("injected crash")
            out = original(trainer, batch)
            taken["n"] += 1
            if taken["n"] == stop_after:
                signal.raise_signal(signal.SIGTERM)
            return out

        Trainer.train_step = step  # type: ignore[method-assign]
        try:
            fit(self.cfg(*extra), resume=resume, echo=lambda _: None, quiet=True)
        finally:
            Trainer.train_step = original  # type: ignore[method-assign]

    def refused(self, *extra: str, resume: str | None = None, needle: str = "") -> None:
        """The fit must stop with a user error (exit 2) and change no file in run.dir."""
        before = snapshot(self.run)
        with pytest.raises(LmtrainError) as e:
            self.fit(*extra, resume=resume)
        assert e.value.exit_code == 2 and needle in str(e.value), str(e.value)
        assert snapshot(self.run) == before

    def owned_numbered(self) -> list[int]:
        files = json.loads((self.run / ".lmtrain" / "manifest.json").read_text())["files"]
        return sorted(
            int(rel[len("checkpoints/step-") : -3])
            for rel in files
            if rel.startswith("checkpoints/step-") and (self.run / rel).is_file()
        )

    # -- actions ---------------------------------------------------------------------------------

    @initialize(steps=st.integers(1, 6))
    def first_run(self, steps: int) -> None:
        self.fit(f"train.max_steps={steps}")
        self.head = steps

    @rule(steps=st.integers(1, 6))
    def new_run(self, steps: int) -> None:
        if self.head is None and not self.planted:
            self.fit(f"train.max_steps={steps}")
            self.head = steps
        elif self.head is None:
            self.refused(needle="holds files lmtrain did not write")
        else:
            self.refused(needle="already holds a run")

    @rule(more=st.integers(1, 5), stop=st.booleans())
    def resume_auto(self, more: int, stop: bool) -> None:
        if self.head is None:
            self.refused(resume="auto", needle="nothing to resume")
            return
        target = self.head + more
        if stop and more > 1:
            with pytest.raises(TrainingStopped) as e:
                self.fit(f"train.max_steps={target}", resume="auto", stop_after=more - 1)
            assert e.value.exit_code == 143
            event("stopped by SIGTERM")
            self.head = target - 1
        else:
            self.fit(f"train.max_steps={target}", resume="auto")
            self.head = target

    @precondition(lambda self: self.head is not None)
    @rule(more=st.integers(1, 5))
    def crash(self, more: int) -> None:
        assert self.head is not None
        with pytest.raises(RuntimeError, match="injected crash"):
            self.fit(f"train.max_steps={self.head + more + 1}", resume="auto", crash_at=more + 1)
        # Checkpoints are written at every second step (train.eval_every=2).
        self.head = max(
            [self.head] + [s for s in range(self.head + 1, self.head + more + 1) if s % 2 == 0]
        )
        event("crash")

    @precondition(lambda self: self.head is not None)
    @rule(pick=st.integers(0, 10), more=st.integers(0, 4), lr=st.sampled_from(LEARNING_RATES))
    def rewind(self, pick: int, more: int, lr: str) -> None:
        assert self.head is not None
        older = [s for s in self.owned_numbered() if s < self.head]
        if not older:
            return
        step = older[pick % len(older)]
        source = self.run / "checkpoints" / f"step-{step:08d}.pt"
        # Another learning rate: the new branch's losses differ from the abandoned one's.
        self.fit(f"train.max_steps={step + more}", f"train.lr={lr}", resume=str(source))
        event("rewind")
        assert source.is_file(), "a rewind never deletes the checkpoint it resumed from"
        self.head = max(step + more, step)
        for p in (self.run / "checkpoints").glob("abandoned-*/*"):
            key = p.relative_to(self.run).as_posix()
            self.frozen.setdefault(key, snapshot(self.run)[key])

    @precondition(lambda self: self.head is not None)
    @rule(more=st.integers(1, 3))
    def fork(self, more: int) -> None:
        assert self.head is not None
        self.forks += 1
        event("fork")
        other = self.tmp / f"fork{self.forks}"
        before = snapshot(self.run)
        last = self.run / "checkpoints" / "last.pt"
        self.fit(f"run.dir={other}", f"train.max_steps={self.head + more}", resume=str(last))
        assert snapshot(self.run) == before, "a fork only reads its source"
        self.check_lineage(other, self.head + more)
        # And the other way round: this directory holds a run, so a fork into it is refused.
        self.refused(
            resume=str(other / "checkpoints" / "last.pt"), needle="already holds a different run"
        )

    @precondition(lambda self: self.head is not None)
    @rule()
    def second_process(self) -> None:
        assert self.head is not None
        holder, _ = open_directory(self.cfg(), "auto", warn=lambda _: None)
        event("second process")
        try:
            self.refused(
                f"train.max_steps={self.head + 2}", resume="auto", needle="is in use by process"
            )
            self.refused(needle="already holds a run")
        finally:
            holder.close()

    @rule(name=st.sampled_from(USER_FILES), data=st.binary(max_size=64))
    def plant(self, name: str, data: bytes) -> None:
        path = self.run / name
        if path.exists() or name in self.planted or not path.parent.is_dir():
            return
        path.write_bytes(data)
        self.planted[name] = data
        event("user file")

    @precondition(lambda self: self.head is not None)
    @rule(ahead=st.integers(1, 4))
    def plant_future_checkpoint_name(self, ahead: int) -> None:
        """A user file under the name of a checkpoint the run will want to write."""
        assert self.head is not None
        self.plant(f"checkpoints/step-{self.head + ahead:08d}.pt", b"user bytes")

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def user_files_untouched(self) -> None:
        for name, data in self.planted.items():
            assert (self.run / name).read_bytes() == data, name

    @invariant()
    def abandoned_branches_untouched(self) -> None:
        now = snapshot(self.run)
        for key, digest in self.frozen.items():
            assert now.get(key) == digest, key

    @invariant()
    def lineage_is_whole(self) -> None:
        if self.head is not None:
            self.check_lineage(self.run, self.head)

    def check_lineage(self, run: Path, head: int) -> None:
        last = load_checkpoint(run / "checkpoints" / "last.pt").progress
        assert last.step == head
        if not (run / "checkpoints" / "best.pt").exists():
            # Only where a user's file took the numbered name of the lineage's best checkpoint,
            # so that a rewind found no file to restore best.pt from; the next improvement
            # writes it.
            assert any(re.fullmatch(r"checkpoints/step-\d{8}\.pt", n) for n in self.planted)
            return
        best = load_checkpoint(run / "checkpoints" / "best.pt").progress
        assert best.step <= last.step
        assert best.last_val_loss == best.best_val_loss == last.best_val_loss
        planted = {f"{run.name}/{n}" for n in self.planted}
        leftovers = [
            p for p in run.rglob("*.tmp") if f"{run.name}/{p.relative_to(run)}" not in planted
        ]
        assert not leftovers
        files = json.loads((run / ".lmtrain" / "manifest.json").read_text())["files"]
        for p in (run / "checkpoints").rglob("*"):
            rel = p.relative_to(run).as_posix()
            if rel.split("/")[0] != ".lmtrain" and f"{run.name}/{rel}" not in planted:
                assert rel in files, f"{rel} is on disk but not in the manifest"


TestLineage = Lineage.TestCase
TestLineage.settings = settings(
    max_examples=60,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
