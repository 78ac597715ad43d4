"""W&B and MLflow as a user meets them: a tracker that fails to start stops fit with exit 2 and
one paragraph, leaving no tracking run unfinished; a resumed run continues its tracking run; the
tracking files live in the run directory; the final figures land at the final step; config,
results and export are attached.

Neither package is installed here: small stand-ins in sys.modules record every call, keep the
state a real one keeps (the runs left open), write where a real one writes, and can be told to
raise."""

from __future__ import annotations

import itertools
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from conftest import invoke, tiny_config


class FakeWandb(types.ModuleType):
    """wandb: init / log / save / Artifact / finish."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__("wandb")
        self.fail = fail
        self.calls: list[tuple[str, tuple, dict]] = []
        self.open_runs: list[Any] = []
        self.ids = (f"w{i}" for i in itertools.count(1))
        module = self

        class Artifact:
            def __init__(self, name: str, type: str) -> None:
                self.name, self.type, self.dirs = name, type, []

            def add_dir(self, path: str) -> None:
                self.dirs.append(path)

        self.Artifact = Artifact

        class Run:
            def __init__(self, run_id: str) -> None:
                self.id, self.summary = run_id, {}

            def log_artifact(self, artifact: Any) -> None:
                module.calls.append(("log_artifact", (artifact,), {}))

        self.Run = Run

    def init(self, **kwargs: Any) -> Any:
        self.calls.append(("init", (), kwargs))
        if self.fail is not None:
            raise self.fail
        run = self.Run(kwargs.get("id") or next(self.ids))
        folder = Path(kwargs.get("dir", ".")) / "wandb" / f"run-{run.id}"
        folder.mkdir(parents=True, exist_ok=True)  # where the real one keeps its files
        self.open_runs.append(run)
        return run

    def log(self, values: dict[str, float], step: int) -> None:
        self.calls.append(("log", (values,), {"step": step}))

    def save(self, path: str, **kwargs: Any) -> None:
        self.calls.append(("save", (path,), kwargs))

    def finish(self, exit_code: int) -> None:
        self.calls.append(("finish", (), {"exit_code": exit_code}))
        self.open_runs.pop()

    def called(self, fn: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for f, a, k in self.calls if f == fn]


class MlflowException(Exception):
    pass


class FakeMlflow(types.ModuleType):
    """mlflow: set_tracking_uri / start_run / log_* / end_run, runs kept by id."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__("mlflow")
        self.fail = fail
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uri: str | None = None
        self.runs: dict[str, str] = {}  # run id -> status
        self.active: str | None = None
        self.ids = (f"m{i}" for i in itertools.count(1))

    def is_tracking_uri_set(self) -> bool:
        return self.uri is not None

    def get_tracking_uri(self) -> str:
        return self.uri or "file:./mlruns"

    def set_tracking_uri(self, uri: str) -> None:
        self.calls.append(("set_tracking_uri", (uri,), {}))
        self.uri = uri

    def start_run(self, run_id: str | None = None, run_name: str | None = None) -> Any:
        self.calls.append(("start_run", (), {"run_id": run_id, "run_name": run_name}))
        if self.fail is not None:
            raise self.fail
        if run_id is not None and run_id not in self.runs:
            raise MlflowException(f"Run '{run_id}' not found")
        run_id = run_id or next(self.ids)
        self.runs[run_id], self.active = "RUNNING", run_id
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id))

    def _record(self, fn: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((fn, args, kwargs))

    def log_params(self, params: dict[str, str]) -> None:
        self._record("log_params", params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._record("log_metrics", metrics, step=step)

    def log_artifact(self, path: str) -> None:
        self._record("log_artifact", path)

    def log_artifacts(self, path: str, artifact_path: str | None = None) -> None:
        self._record("log_artifacts", path, artifact_path=artifact_path)

    def end_run(self, status: str) -> None:
        self._record("end_run", status=status)
        assert self.active is not None
        self.runs[self.active], self.active = status, None

    def called(self, fn: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for f, a, k in self.calls if f == fn]


@pytest.fixture
def trackers(monkeypatch) -> tuple[FakeWandb, FakeMlflow]:
    wandb, mlflow = FakeWandb(), FakeMlflow()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    for name in ("WANDB_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return wandb, mlflow


def _config(tmp_path: Path, tiny_files, *extra: str) -> Path:
    cfg = tiny_config(
        tmp_path, tiny_files, "train.max_steps=4", "train.eval_every=2", "train.log_every=2",
        "run.loggers=[wandb, mlflow]", *extra,
    )  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    return path


def _manifest(run: Path) -> dict[str, Any]:
    return json.loads((run / ".lmtrain" / "manifest.json").read_text())


# ---------------------------------------------------------------------------------------------
# A tracker that fails to start


def test_a_tracker_that_fails_to_start_exits_2_and_leaves_no_run_open(
    tmp_path: Path, tiny_files, trackers, cli
) -> None:
    wandb, mlflow = trackers
    mlflow.fail = MlflowException(
        "Could not find a registered artifact repository for: bogus://x/y. Currently "
        "registered schemes are: ['file', 's3']\n  (and a second line of detail)"
    )
    path = _config(tmp_path, tiny_files)
    r = invoke(cli, "fit", path)
    assert r.exit_code == 2, r.output
    paragraph = (
        "error: run.loggers: mlflow could not start (MlflowException: Could not find a "
        "registered artifact repository for: bogus://x/y. Currently registered schemes are: "
        "['file', 's3']); nothing was trained. Fix its settings (MLFLOW_TRACKING_URI and the "
        "store it names, MLFLOW_EXPERIMENT_NAME), or remove mlflow from run.loggers.\n"
    )
    assert r.stderr.endswith(paragraph) and r.stderr.count("mlflow could not start") == 1
    assert "Traceback" not in r.stderr and "second line" not in r.stderr
    # W&B had started: its run is finished, as failed, not left open.
    assert wandb.open_runs == [] and wandb.called("finish") == [((), {"exit_code": 1})]
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists()
    # The run directory is as any failed start leaves it: the next fit starts it afresh.
    mlflow.fail = None
    again = invoke(cli, "fit", path)
    assert again.exit_code == 0, again.output
    assert "starting it again from scratch" in again.stderr
    assert wandb.open_runs == [] and mlflow.active is None


def test_wandb_that_fails_to_start_ends_the_trackers_started_before_it(
    tmp_path: Path, tiny_files, trackers, cli
) -> None:
    wandb, mlflow = trackers
    wandb.fail = RuntimeError(
        "api_key not configured (no-tty). call wandb.login(key=[your_api_key])"
    )
    r = invoke(cli, "fit", _config(tmp_path, tiny_files, "run.loggers=[mlflow, wandb]"))
    assert r.exit_code == 2, r.output
    assert (
        "error: run.loggers: wandb could not start (RuntimeError: api_key not configured "
        "(no-tty). call wandb.login(key=[your_api_key])); nothing was trained. Fix its settings "
        "(wandb login or WANDB_API_KEY;"
    ) in r.stderr
    assert r.stderr.rstrip().endswith("or remove wandb from run.loggers.")
    assert "Traceback" not in r.stderr and r.stderr.count("could not start") == 1
    assert mlflow.active is None and list(mlflow.runs.values()) == ["FAILED"]


def test_mlflow_that_fails_after_its_run_started_ends_that_run(
    tmp_path: Path, tiny_files, trackers, cli, monkeypatch
) -> None:
    _, mlflow = trackers

    def refuse(params: dict[str, str]) -> None:
        raise MlflowException("INVALID_PARAMETER_VALUE: Param value 'x' had length 9000")

    monkeypatch.setattr(mlflow, "log_params", refuse)
    r = invoke(cli, "fit", _config(tmp_path, tiny_files, "run.loggers=[mlflow]"))
    assert r.exit_code == 2, r.output
    assert "mlflow could not start (MlflowException: INVALID_PARAMETER_VALUE:" in r.stderr
    assert mlflow.active is None and mlflow.runs == {"m1": "FAILED"}


def test_a_tracker_whose_import_fails_exits_2_before_anything_is_written(
    tmp_path: Path, tiny_files, monkeypatch, cli
) -> None:
    """Installed but broken (a dependency of the wrong version): its import raises, not with
    ImportError."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "wandb.py").write_text("raise TypeError('Descriptors cannot be created directly.')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    r = invoke(cli, "fit", _config(tmp_path, tiny_files, "run.loggers=[wandb]"))
    assert r.exit_code == 2, r.output
    assert (
        "error: run.loggers: wandb is installed but its import failed (TypeError: Descriptors "
        "cannot be created directly.); nothing was trained. Fix its installation (pip install "
        "--upgrade wandb), or remove wandb from run.loggers."
    ) in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Where the files go, what is attached, where the final figures land


def test_tracking_files_live_in_the_run_directory(
    tmp_path: Path, tiny_files, trackers, cli, monkeypatch
) -> None:
    wandb, mlflow = trackers
    monkeypatch.chdir(tmp_path)
    r = invoke(cli, "fit", _config(tmp_path, tiny_files))
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    [(_, init)] = wandb.called("init")
    assert init["dir"] == str(run) and (run / "wandb" / "run-w1").is_dir()
    assert not (tmp_path / "wandb").exists()
    assert mlflow.called("set_tracking_uri") == [(((run / "mlruns").resolve().as_uri(),), {})]
    # Both names are the run's: lmtrain recorded them before the trackers wrote there.
    assert {"wandb", "mlruns"} <= set(_manifest(run)["files"])


def test_a_tracking_place_the_environment_names_is_kept(
    tmp_path: Path, tiny_files, trackers, cli, monkeypatch
) -> None:
    wandb, mlflow = trackers
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    r = invoke(cli, "fit", _config(tmp_path, tiny_files))
    assert r.exit_code == 0, r.output
    [(_, init)] = wandb.called("init")
    assert "dir" not in init and mlflow.called("set_tracking_uri") == []


def test_final_figures_at_the_final_step_and_the_run_files_attached(
    tmp_path: Path, tiny_files, trackers, cli
) -> None:
    wandb, mlflow = trackers
    r = invoke(cli, "fit", _config(tmp_path, tiny_files))
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    (final, last_step) = mlflow.called("log_metrics")[-1]
    assert last_step == {"step": 4} and results["steps"] == 4
    assert final[0]["best_val.loss"] == results["best_val"]["loss"]
    attached = [str(run / "config.yaml"), str(run / "results.json")]
    assert [a[0] for a, _ in mlflow.called("log_artifact")] == attached
    assert mlflow.calls[-1] == ("end_run", (), {"status": "FINISHED"})
    assert [a[0] for a, _ in wandb.called("save")] == attached
    assert all(k == {"base_path": str(run), "policy": "now"} for _, k in wandb.called("save"))
    assert wandb.calls[-1] == ("finish", (), {"exit_code": 0})
    assert wandb.called("log_artifact") == []  # no export folder yet


# ---------------------------------------------------------------------------------------------
# Resuming


def test_a_resumed_run_continues_its_tracking_runs(
    tmp_path: Path, tiny_files, trackers, cli
) -> None:
    wandb, mlflow = trackers
    path = _config(tmp_path, tiny_files)
    run = tmp_path / "run"
    assert invoke(cli, "fit", path).exit_code == 0
    assert _manifest(run)["trackers"] == {"mlflow": "m1", "wandb": "w1"}
    assert _manifest(run)["version"] == 2  # an older lmtrain says "newer", not "damaged"
    exported = invoke(cli, "export", run)
    assert exported.exit_code == 0, exported.output
    r = invoke(cli, "fit", path, "train.max_steps=6", "--resume", "auto")
    assert r.exit_code == 0, r.output
    inits = [k for _, k in wandb.called("init")]
    assert "id" not in inits[0] and inits[1]["id"] == "w1" and inits[1]["resume"] == "allow"
    starts = [k for _, k in mlflow.called("start_run")]
    assert starts[0]["run_id"] is None and starts[1]["run_id"] == "m1"
    assert len(mlflow.called("log_params")) == 1  # a run's parameters are logged once
    assert mlflow.runs == {"m1": "FINISHED"} and wandb.open_runs == []
    assert _manifest(run)["trackers"] == {"mlflow": "m1", "wandb": "w1"}
    # The second session's steps continue the first's, its final figures at its final step.
    logged = [k["step"] for _, k in mlflow.called("log_metrics")]
    assert logged == [2, 2, 4, 4, 4, 6, 6, 6]
    # The export folder is attached once it exists.
    assert mlflow.called("log_artifacts") == [((str(run / "export"),), {"artifact_path": "export"})]
    [((artifact,), _)] = wandb.called("log_artifact")
    assert artifact.dirs == [str(run / "export")] and artifact.type == "model"


def test_a_fork_starts_tracking_runs_of_its_own(tmp_path: Path, tiny_files, trackers, cli) -> None:
    wandb, mlflow = trackers
    path = _config(tmp_path, tiny_files)
    assert invoke(cli, "fit", path).exit_code == 0
    fork = tmp_path / "fork"
    r = invoke(
        cli, "fit", path, f"run.dir={fork}", "train.max_steps=6", "--resume",
        tmp_path / "run" / "checkpoints" / "last.pt",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "id" not in wandb.called("init")[1][1]
    assert mlflow.called("start_run")[1][1]["run_id"] is None
    assert _manifest(fork)["trackers"] == {"mlflow": "m2", "wandb": "w2"}
    # In the same process too, each run's MLflow store is in its own directory.
    assert mlflow.called("set_tracking_uri")[1] == (((fork / "mlruns").resolve().as_uri(),), {})
    assert init_dirs(wandb) == [str(tmp_path / "run"), str(fork)]


def init_dirs(wandb: FakeWandb) -> list[str]:
    return [k["dir"] for _, k in wandb.called("init")]


def test_a_tracking_uri_the_program_set_is_kept(tmp_path: Path, tiny_files, trackers, cli):
    _, mlflow = trackers
    mlflow.uri = "http://mine.example:5000"  # mlflow.set_tracking_uri(...) before fit
    assert invoke(cli, "fit", _config(tmp_path, tiny_files)).exit_code == 0
    assert mlflow.called("set_tracking_uri") == [] and mlflow.uri == "http://mine.example:5000"


def test_a_tracking_run_that_cannot_be_continued_is_named(
    tmp_path: Path, tiny_files, trackers, cli
) -> None:
    _, mlflow = trackers
    path = _config(tmp_path, tiny_files)
    assert invoke(cli, "fit", path).exit_code == 0
    mlflow.runs.clear()  # another tracking store: the run it started is not there
    r = invoke(cli, "fit", path, "train.max_steps=6", "--resume", "auto")
    assert r.exit_code == 2, r.output
    assert (
        "error: run.loggers: mlflow could not start (this session continues its run m1) "
        "(MlflowException: Run 'm1' not found); nothing was trained. Fix its settings "
        "(MLFLOW_TRACKING_URI"
    ) in r.stderr
    assert "Traceback" not in r.stderr


def test_a_run_without_trackers_keeps_its_manifest_as_before(tmp_path: Path, tiny_files, cli):
    r = invoke(cli, "fit", _config(tmp_path, tiny_files, "run.loggers=[]"))
    assert r.exit_code == 0, r.output
    manifest = _manifest(tmp_path / "run")
    assert "trackers" not in manifest and manifest["version"] == 1
