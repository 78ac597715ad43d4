"""The run directory and its checkpoints under a hostile or unlucky user.

Each case is one thing a user did (a hand-edited manifest, a symlink in an odd place, a copy of a
checkpoint in the wrong folder, an export given to --resume, a chain of rewinds); each test checks
the exit code, the message and the files a user would look at.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.checkpoint import load_checkpoint
from lmtrain.training import fit

BASE_ARGS = ("train.max_steps=20", "train.eval_every=4", "run.keep_last=5")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """One finished run (checkpoints at steps 4, 8, 12, 16, 20), trained once for the module."""
    root = tmp_path_factory.mktemp("base")
    files = write_tiny_files(root)
    fit(tiny_config(root, files, *BASE_ARGS), quiet=True)
    return root / "run", files


@pytest.fixture
def run(base_run, tmp_path: Path) -> Path:
    """A private copy of the base run in tmp_path/run. Checkpoints are hard links to the base
    run's (lmtrain never edits one in place, and links keep last.pt and its numbered twin one
    file, as lmtrain made them); every other file is copied."""
    source, _ = base_run

    def copy(src: str, dst: str) -> None:
        if src.endswith(".pt"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, tmp_path / "run", symlinks=True, copy_function=copy)
    return tmp_path / "run"


@pytest.fixture
def config(base_run, tmp_path: Path) -> Path:
    _, files = base_run
    path = tmp_path / "config.yaml"
    path.write_text(tiny_config(tmp_path, files, *BASE_ARGS).to_yaml(), "utf-8")
    return path


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (hidden ones included), by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _manifest(run: Path) -> dict:
    return json.loads((run / ".lmtrain" / "manifest.json").read_text())


def _numbered(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("step-*.pt"))


# ---------------------------------------------------------------------------------------------
# A manifest edited by hand: valid JSON, wrong types


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m["files"]["checkpoints/last.pt"].update(step="x"), "last.pt'].step"),
        (lambda m: m["files"]["checkpoints/step-00000004.pt"].update(best_step=[1]), "best_step"),
        (lambda m: m["files"]["checkpoints/last.pt"].update(step=True), "last.pt'].step"),
        (lambda m: m.update(pinned="checkpoints/step-00000004.pt"), "'pinned' should be a list"),
        (lambda m: m.update(run_id=None), "'run_id' should be a string"),
        (lambda m: m.update(parent=7), "'parent' should be an object"),
        (lambda m: m["files"].update({"../victim.txt": {}}), "not a path inside the run"),
        (lambda m: m["files"].update({"/etc/hostname": {"step": 4}}), "not a path inside the run"),
        (lambda m: m["pinned"].append("../../x.pt"), "not a path inside the run"),
    ],
    ids=[
        "step-str",
        "best-list",
        "step-bool",
        "pinned-str",
        "id-null",
        "parent-int",
        "dotdot",
        "absolute",
        "pin-outside",
    ],  # fmt: skip
)
def test_hand_edited_manifest_of_the_wrong_type_is_refused(edit, named, run, config, cli):
    manifest = _manifest(run)
    edit(manifest)
    (run / ".lmtrain" / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(run)
    result = invoke(cli, "fit", config, "train.max_steps=24", "--resume", "auto")
    assert result.exit_code == 2, result.output
    assert "manifest.json is damaged" in result.stderr and named in result.stderr
    assert "Traceback" not in result.output
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# Rewinds


def test_rewind_in_a_run_whose_checkpoints_folder_is_a_symlink(run, config, tmp_path, cli):
    # A user who moved checkpoints/ to a bigger disk and left a symlink behind.
    elsewhere = tmp_path / "disk" / "checkpoints"
    elsewhere.parent.mkdir()
    (run / "checkpoints").rename(elsewhere)
    (run / "checkpoints").symlink_to(elsewhere)
    source = run / "checkpoints" / "step-00000008.pt"
    result = invoke(cli, "fit", config, "train.max_steps=12", "--resume", source)
    assert result.exit_code == 0, result.output
    assert "rewind to step 8" in result.stderr
    assert (run / "checkpoints").is_symlink()
    assert _numbered(elsewhere / "abandoned-00000008-00000020") == [
        "step-00000012.pt", "step-00000016.pt", "step-00000020.pt"
    ]  # fmt: skip
    assert _numbered(elsewhere) == ["step-00000004.pt", "step-00000008.pt", "step-00000012.pt"]


def test_a_second_rewind_drops_the_pin_of_the_branch_point_it_moves_aside(run, config, cli):
    # Rewind to 12, then to 8: the first branch point (step 12) is abandoned with its branch, so
    # the new branch's own step-12 checkpoint is an ordinary one that keep_last prunes.
    ck = run / "checkpoints"
    assert invoke(cli, "fit", config, "train.max_steps=16", "--resume", ck / "step-00000012.pt")
    result = invoke(
        cli, "fit", config, "train.max_steps=24", "run.keep_last=1", "--resume",
        ck / "step-00000008.pt",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rewind to step 8" in result.stderr
    assert _numbered(ck / "abandoned-00000008-00000016") == ["step-00000012.pt", "step-00000016.pt"]
    # keep_last 1 (step 24, also the best), plus the branch point of the second rewind.
    assert _numbered(ck) == ["step-00000008.pt", "step-00000024.pt"]
    assert _manifest(run)["pinned"] == ["checkpoints/step-00000008.pt"]


def test_rewind_from_best_pt_keeps_the_numbered_branch_point(tmp_path, base_run, cli):
    # A learning rate high enough that validation gets worse: best.pt (step 12) is older than
    # last.pt (step 24), so --resume best.pt is a rewind.
    _, files = base_run
    cfg = tiny_config(tmp_path, files, "train.max_steps=24", "train.eval_every=4", "train.lr=3.0")
    fit(cfg, quiet=True)
    ck = tmp_path / "run" / "checkpoints"
    assert _manifest(tmp_path / "run")["files"]["checkpoints/best.pt"]["step"] == 12
    config = tmp_path / "config.yaml"
    config.write_text(cfg.to_yaml(), "utf-8")
    result = invoke(cli, "fit", config, "train.max_steps=16", "--resume", ck / "best.pt")
    assert result.exit_code == 0, result.output
    assert "rewind to step 12" in result.stderr
    # The branch point is pinned under its own name, which a later best.pt cannot replace.
    assert _manifest(tmp_path / "run")["pinned"] == ["checkpoints/step-00000012.pt"]


# ---------------------------------------------------------------------------------------------
# The wrong thing given to --resume


def test_a_copy_of_the_runs_own_checkpoint_outside_checkpoints_is_refused(run, config, cli):
    shutil.copyfile(run / "checkpoints" / "step-00000012.pt", run / "mine.pt")
    before = snapshot(run)
    result = invoke(cli, "fit", config, "--resume", run / "mine.pt")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "is a copy of a checkpoint of the run in" in message and "(step 12)" in message
    assert f"--resume {run / 'checkpoints' / 'step-00000012.pt'}" in message
    assert "different run" not in message
    assert snapshot(run) == before


@pytest.mark.parametrize("given", ["folder", "weights"])
def test_an_export_given_to_resume_is_refused(given, run, config, tmp_path, cli):
    export = tmp_path / "exported"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"\0" * 64)
    (export / "config.json").write_text("{}")
    before = snapshot(run)
    spec = export if given == "folder" else export / "model.safetensors"
    result = invoke(cli, "fit", config, f"run.dir={tmp_path / 'new'}", "--resume", spec)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "is an export written by `lmtrain export`" in message
    assert "training cannot continue from it" in message
    assert not (tmp_path / "new").exists()
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# Symlinks planted in the run directory


def test_a_symlink_in_place_of_the_lock_is_never_written_through(run, config, tmp_path, cli):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / ".lmtrain" / "lock").unlink(missing_ok=True)
    (run / ".lmtrain" / "lock").symlink_to(victim)
    before = snapshot(run)
    result = invoke(cli, "fit", config, "train.max_steps=24", "--resume", "auto")
    assert result.exit_code == 2, result.output
    assert "lock is a symbolic link" in " ".join(result.stderr.split())
    assert victim.read_text() == "precious\n"
    assert snapshot(run) == before


def test_a_bookkeeping_folder_that_is_a_symlink_is_refused(config, tmp_path, cli):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "fresh"
    target.mkdir()
    (target / ".lmtrain").symlink_to(elsewhere)
    result = invoke(cli, "fit", config, f"run.dir={target}")
    assert result.exit_code == 2, result.output
    assert ".lmtrain is a symbolic link" in " ".join(result.stderr.split())
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in target.iterdir()) == [".lmtrain"]


def test_a_run_dir_that_is_a_dangling_symlink_is_named_as_such(config, tmp_path, cli):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    result = invoke(cli, "fit", config, f"run.dir={link}")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert f"a symbolic link to {tmp_path / 'missing'}, which does not exist" in message
    assert not (tmp_path / "missing").exists()


def test_resume_given_the_checkpoints_folder_means_its_run(run, config, tmp_path, cli):
    result = invoke(cli, "fit", config, "train.max_steps=24", "--resume", run / "checkpoints")
    assert result.exit_code == 0, result.output
    assert "fork" not in result.stderr and "rewind" not in result.stderr
    assert _numbered(run / "checkpoints")[-1] == "step-00000024.pt"
    fork = tmp_path / "fork"
    result = invoke(
        cli, "fit", config, f"run.dir={fork}", "train.max_steps=28", "--resume", run / "checkpoints"
    )
    assert result.exit_code == 0, result.output
    assert f"continues from {run / 'checkpoints' / 'last.pt'} (step 24)" in result.stderr
    assert _manifest(fork)["parent"]["step"] == 24


def test_rewind_moves_last_pt_even_when_the_manifest_names_its_previous_step(run, config, cli):
    # What a full disk leaves when the manifest write that ends a save fails: last.pt holds the
    # step-20 checkpoint, the manifest still says step 12.
    manifest = _manifest(run)
    manifest["files"]["checkpoints/last.pt"]["step"] = 12
    (run / ".lmtrain" / "manifest.json").unlink()
    (run / ".lmtrain" / "manifest.json").write_text(json.dumps(manifest))
    ck = run / "checkpoints"
    result = invoke(cli, "fit", config, "train.max_steps=16", "--resume", ck / "step-00000016.pt")
    assert result.exit_code == 0, result.output
    aside = ck / "abandoned-00000016-00000020"
    assert sorted(p.name for p in aside.iterdir()) == ["best.pt", "last.pt", "step-00000020.pt"]
    assert load_checkpoint(aside / "last.pt").progress.step == 20
    assert load_checkpoint(ck / "last.pt").progress.step == 16


def test_a_lower_keep_last_on_resume_prunes_before_the_first_save(run, config, cli):
    # On a full disk the first save of the resumed run fails; the room lowering run.keep_last
    # frees must be there before it, or the advice "free some disk space" cannot be followed
    # by lmtrain's own setting.
    ck = run / "checkpoints"
    kept = {name: (ck / name).read_bytes() for name in ("step-00000016.pt", "step-00000020.pt")}
    result = invoke(cli, "fit", config, "run.keep_last=2", "--resume", "auto")
    assert result.exit_code == 0, result.output
    assert _numbered(ck) == sorted(kept)
    assert all((ck / name).read_bytes() == data for name, data in kept.items())


# ---------------------------------------------------------------------------------------------
# A fork onto another filesystem (no hard links to the parent's files)


@pytest.fixture
def other_filesystem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Hard links from the parent run into tmp_path/fork fail as across filesystems (EXDEV);
    returns the list of files copied instead."""
    real_link, real_copy = os.link, shutil.copyfileobj
    fork = str(tmp_path / "fork")
    copies: list[str] = []

    def link(src: str | Path, dst: str | Path) -> None:
        if str(dst).startswith(fork) and not str(src).startswith(fork):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(src, dst)

    def copyfileobj(src: Any, dst: Any, *args: Any) -> None:
        copies.append(str(src.name))
        real_copy(src, dst, *args)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(shutil, "copyfileobj", copyfileobj)
    return copies


def test_a_fork_onto_another_disk_copies_the_fork_point_once(
    run, config, tmp_path, cli, other_filesystem
):
    fork = tmp_path / "fork"
    source = run / "checkpoints" / "last.pt"
    result = invoke(cli, "fit", config, f"run.dir={fork}", "train.max_steps=20", "--resume", source)
    assert result.exit_code == 0, result.output
    assert other_filesystem == [str(source)]  # best.pt is a link to the copied last.pt
    assert (fork / "checkpoints" / "best.pt").samefile(fork / "checkpoints" / "last.pt")


def test_a_fork_that_runs_out_of_disk_leaves_nothing_behind(
    run, config, tmp_path, cli, monkeypatch, other_filesystem
):
    def full(src: Any, dst: Any, *args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", full)
    fork = tmp_path / "fork"
    before = snapshot(run)
    args = (f"run.dir={fork}", "train.max_steps=24", "--resume", run / "checkpoints" / "last.pt")
    result = invoke(cli, "fit", config, *args)
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.stderr
    assert not fork.exists()
    assert snapshot(run) == before
    monkeypatch.undo()  # the disk has room again: the same command now works
    assert invoke(cli, "fit", config, *args).exit_code == 0


def test_a_symlink_planted_at_a_metrics_temporary_name_is_never_written_through(
    tmp_path: Path,
) -> None:
    from lmtrain import metrics

    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    for name in (".results.json.tmp", ".metrics.jsonl.tmp"):
        (run / name).symlink_to(victim)
    metrics.write_results(run, {"version": metrics.RESULTS_VERSION, "status": "completed"})
    assert victim.read_text() == "mine\n"
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    assert oct((run / "results.json").stat().st_mode & 0o777) != oct(0o600)


def test_run_files_get_the_umask_permissions_not_mkstemps_private_ones(tmp_path: Path) -> None:
    from lmtrain import files

    old = os.umask(0o022)
    try:
        target = tmp_path / "config.yaml"
        files.replace_text(target, "a: 1\n")
        assert target.stat().st_mode & 0o777 == 0o644
        assert target.read_text() == "a: 1\n"
        assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    finally:
        os.umask(old)
