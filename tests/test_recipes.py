"""Recipe plumbing: one-file splits, ${VAR} paths, the download script's checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import shared_data
from lmtrain.data.corpus import read_text
from lmtrain.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "download_data.sh"


def test_file_split_spec_is_a_fixed_90_5_5_cut(tmp_path: Path) -> None:
    text = "".join(f"paragraph {i} " + "x" * (i % 7) + "\n\n" for i in range(400))
    path = tmp_path / "one.txt"
    path.write_text(text, encoding="utf-8")
    parts = [read_text(f"{path}:{s}") for s in ("train", "valid", "test")]
    assert "".join(parts) == text
    assert all(p.endswith("\n\n") for p in parts)
    fractions = [len(p) / len(text) for p in parts]
    assert fractions == pytest.approx([0.90, 0.05, 0.05], abs=0.01)
    assert read_text(str(path)) == text  # no suffix: the whole file


def test_env_vars_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.txt").write_text("hello world\n", encoding="utf-8")
    monkeypatch.setenv("LMTRAIN_DATA", str(tmp_path))
    assert read_text("${LMTRAIN_DATA}/a.txt") == "hello world\n"
    monkeypatch.delenv("LMTRAIN_DATA")
    with pytest.raises(
        DataError, match=r"\$\{LMTRAIN_DATA\}, which is not set; export LMTRAIN_DATA="
    ):
        read_text("${LMTRAIN_DATA}/a.txt")


def test_download_script_checksums_match_the_corpus_readmes() -> None:
    script = SCRIPT.read_text()
    for readme, names in (
        (shared_data("wikitext-2", "README.md"), ("train.txt", "valid.txt", "test.txt")),
        (shared_data("tinyshakespeare", "README.md"), ("input.txt",)),
    ):
        for name in names:
            sums = [
                re.findall(r"`([0-9a-f]{64})`", line)
                for line in readme.read_text().splitlines()
                if line.startswith(f"| `{name}`")
            ]
            (want,) = [s[0] for s in sums if s]
            assert re.search(rf"/{re.escape(name)}\|{want}\"", script), name


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl for file:// URLs")
def test_download_script_refuses_a_checksum_mismatch(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt", "input.txt"):
        (mirror / name).write_text("not the real corpus\n")
    env = {
        **os.environ,
        "WIKITEXT2_URL": f"file://{mirror}",
        "TINYSHAKESPEARE_URL": f"file://{mirror}",
    }
    r = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    assert "checksum mismatch for wikitext-2/train.txt" in r.stderr
    assert "expected sha256 9e9fa1ad" in r.stderr
    # Nothing half-downloaded is left where a recipe would read it.
    assert list((tmp_path / "data").rglob("*.txt*")) == []


def test_file_split_without_blank_lines_cuts_at_line_ends(tmp_path: Path) -> None:
    text = "".join(f" line {i} of a text whose blank lines hold a space\n \n" for i in range(300))
    path = tmp_path / "w.txt"
    path.write_text(text, encoding="utf-8")
    parts = [read_text(f"{path}:{s}") for s in ("train", "valid", "test")]
    assert "".join(parts) == text
    assert all(p.endswith("\n") for p in parts)
    assert [len(p) / len(text) for p in parts] == pytest.approx([0.90, 0.05, 0.05], abs=0.01)
