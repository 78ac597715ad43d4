"""The built wheel carries the recipes: `lmtrain recipes` and `init` work from a fresh install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_wheel_installs_and_runs_its_own_recipes(tmp_path: Path) -> None:
    # Build from a copy of the sources, so the checkout gets no build/ or egg-info litter.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lmtrain", src / "lmtrain", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", dist, src, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = dist.glob("lmtrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert shipped and all(f"lmtrain/recipes/{n}" in names for n in shipped)
    assert not any(n.startswith(("tests/", "configs/", "scripts/")) for n in names)

    # A fresh environment holding only the wheel; torch and the other dependencies are
    # borrowed from this one through a .pth file rather than downloaded.
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    _run(
        sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel,
        cwd=tmp_path,
    )  # fmt: skip
    site = Path(
        _run(
            py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
        ).strip()
    )
    (site / "borrowed_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run(py, "-c", "import lmtrain; print(lmtrain.__file__)", cwd=work, env=env)
    assert Path(where.strip()).is_relative_to(venv)  # the wheel's code, not the checkout's
    listing = _run(venv / "bin" / "lmtrain", "recipes", cwd=work, env=env)
    assert [line.split()[0] for line in listing.splitlines()[1:]] == [
        n.removesuffix(".yaml") for n in shipped
    ]
    _run(venv / "bin" / "lmtrain", "init", "quickstart", "x.yaml", cwd=work, env=env)
    assert (work / "x.yaml").read_bytes() == (ROOT / "configs" / "quickstart.yaml").read_bytes()
    out = _run(venv / "bin" / "lmtrain", "validate", "quickstart", cwd=work, env=env)
    assert out.startswith("quickstart: OK")
    assert _run(py, "-m", "lmtrain", "--version", cwd=work, env=env).startswith("lmtrain ")
