"""Recipe plumbing: one-file splits, ${VAR} paths, downloads, the shipped recipes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import invoke, shared_data
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


# ---------------------------------------------------------------------------------------------
# Recipes shipped in the package, `lmtrain recipes` / `init`, a recipe name as CONFIG


def test_configs_is_the_packaged_recipes_folder() -> None:
    configs = ROOT / "configs"
    assert configs.is_symlink()
    assert configs.resolve() == (ROOT / "lmtrain" / "recipes").resolve()
    assert sorted(p.name for p in configs.glob("*.yaml")) == [
        "quickstart.yaml",
        "shakespeare_char_cpu.yaml",
        "wikipedia_enwik8_byte_gpu.yaml",
        "wikitext103_bpe_gpu.yaml",
        "wikitext103_word_gpu.yaml",
        "wikitext2_awd_gpu.yaml",
        "wikitext2_word_cpu.yaml",
        "wikitext2_word_cpu_quick.yaml",
    ]


def test_every_recipe_has_a_summary_and_recipes_lists_them(cli) -> None:
    from lmtrain.catalog import RECIPES_DIR, recipes

    items = recipes()
    assert [r.path for r in items] == sorted(RECIPES_DIR.glob("*.yaml"))
    for r in items:
        assert "?" not in (r.task, r.data, r.hardware, r.result), r.name
    r = invoke(cli, "recipes")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "task", "data", "hardware", "result"]
    assert [line.split()[0] for line in lines[1:]] == [x.name for x in items]
    quick = next(line for line in lines if line.startswith("quickstart "))
    assert "builtin:python-docs" in quick and "valid 1.865 bits/char" in quick
    assert "lmtrain init NAME" in r.stderr


def test_init_copies_a_recipe_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = (ROOT / "configs" / "quickstart.yaml").read_bytes()
    r = invoke(cli, "init", "quickstart")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "quickstart.yaml").read_bytes() == shipped
    assert "lmtrain fit quickstart.yaml" in r.stdout
    (tmp_path / "mine.yaml").write_text("edited\n")
    r = invoke(cli, "init", "quickstart", "mine.yaml")
    assert r.exit_code == 2 and "already exists" in r.stderr
    assert (tmp_path / "mine.yaml").read_text() == "edited\n"
    (tmp_path / "sub").mkdir()
    assert invoke(cli, "init", "wikitext2_word_cpu", "sub").exit_code == 0
    assert (tmp_path / "sub" / "wikitext2_word_cpu.yaml").is_file()
    r = invoke(cli, "init", "nope")
    assert r.exit_code == 2 and "the recipes are: quickstart, shakespeare_char_cpu" in r.stderr
    assert "config > my.yaml" in invoke(cli, "init", "--help").stdout
    assert "lmtrain config > my.yaml" in invoke(cli, "config", "--help").stdout


def test_a_recipe_name_works_as_config_and_a_file_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    r = invoke(cli, "validate", "quickstart", "train.lr=0.5")
    assert r.exit_code == 0, r.output
    assert "hidden_size: 256" in r.stdout and "lr: 0.5" in r.stdout
    assert invoke(cli, "validate", "quickstart.yaml").exit_code == 0
    (tmp_path / "quickstart").write_text("model:\n  hidden_size: 7\n")
    r = invoke(cli, "validate", "quickstart")
    assert r.exit_code == 0 and "hidden_size: 7" in r.stdout
    r = invoke(cli, "fit", "quikstart")
    assert r.exit_code == 2
    assert "quikstart: no such file, and no recipe of that name" in r.stderr
    assert "wikitext2_word_cpu_quick" in r.stderr and not (tmp_path / "runs").exists()
    r = invoke(cli, "validate", "sub/quikstart.yaml")  # a path stays a path
    assert r.exit_code == 2 and "file not found" in r.stderr


# ---------------------------------------------------------------------------------------------
# `lmtrain download`


def _mirror(tmp_path: Path, files: dict[str, bytes]) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in files.items():
        (mirror / name).write_bytes(data)
    return mirror


def test_download_python_and_script_pin_the_same_files() -> None:
    from lmtrain.download import CORPORA

    script = SCRIPT.read_text()
    entries = re.findall(r'"([a-z0-9-]+)/([a-z.]+)\|\$[A-Z]+/[a-z.]+\|([0-9a-f]{64})"', script)
    assert sorted(entries) == sorted(
        (name, f, sha) for name, src in CORPORA.items() for f, sha in src.files
    )
    for src in CORPORA.values():
        assert src.base_url in script and f"${{{src.mirror_env}:-" in script


def test_download_verifies_and_moves_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    import hashlib

    from lmtrain import download

    data = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    mirror = _mirror(tmp_path, {"input.txt": data})
    source = download.Source(
        f"file://{mirror}",
        "TINYSHAKESPEARE_URL",
        (("input.txt", hashlib.sha256(data).hexdigest()),),
    )
    monkeypatch.setitem(download.CORPORA, "tinyshakespeare", source)
    monkeypatch.delenv("TINYSHAKESPEARE_URL", raising=False)
    monkeypatch.setenv("LMTRAIN_DATA", str(tmp_path / "data"))
    r = invoke(cli, "download", "tinyshakespeare")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "data/tinyshakespeare/input.txt").read_bytes() == data
    assert f"export LMTRAIN_DATA={tmp_path / 'data'}" in r.stdout
    assert [p.name for p in (tmp_path / "data/tinyshakespeare").iterdir()] == ["input.txt"]
    # Present and correct: kept, nothing fetched.
    (mirror / "input.txt").unlink()
    r = invoke(cli, "download", "tinyshakespeare")
    assert r.exit_code == 0 and "already present, checksum matches" in r.stderr
    # DEST given: ./DEST/CORPUS; a missing file at the source is a clear error.
    r = invoke(cli, "download", "tinyshakespeare", tmp_path / "elsewhere")
    assert r.exit_code == 2 and "download of file://" in r.stderr and "failed" in r.stderr
    assert list((tmp_path / "elsewhere").rglob("*.txt*")) == []


def test_download_refuses_a_checksum_mismatch_and_replaces_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    import hashlib

    fake = b"not the real corpus\n"
    mirror = _mirror(tmp_path, {n: fake for n in ("train.txt", "valid.txt", "test.txt")})
    monkeypatch.setenv("WIKITEXT2_URL", f"file://{mirror}")
    dest = tmp_path / "data"
    (dest / "wikitext-2").mkdir(parents=True)
    (dest / "wikitext-2/train.txt").write_bytes(b"an older copy\n")
    r = invoke(cli, "download", "wikitext-2", dest)
    assert r.exit_code == 2
    assert "checksum mismatch for" in r.stderr and "wikitext-2/train.txt" in r.stderr
    assert "expected sha256 9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f" in (
        r.stderr
    )
    assert f"got      sha256 {hashlib.sha256(fake).hexdigest()}" in r.stderr
    assert "Traceback" not in r.output
    assert [p.name for p in (dest / "wikitext-2").iterdir()] == ["train.txt"]
    assert (dest / "wikitext-2/train.txt").read_bytes() == b"an older copy\n"
    r = invoke(cli, "download", "wikitext-3")
    assert r.exit_code == 2 and "choose one of: wikitext-2, tinyshakespeare" in r.stderr


def test_download_python_and_script_pin_the_same_archives() -> None:
    from lmtrain.download import CORPORA

    script = SCRIPT.read_text()
    entries = re.findall(
        r'"([a-z0-9-]+)\|\$[A-Z0-9]+/([a-z0-9.-]+\.zip)\|([0-9a-f]{64})\|([^"]+)"', script
    )
    pinned = {
        name: (src.archive.name, src.archive.sha256)
        for name, src in CORPORA.items()
        if src.archive is not None
    }
    assert {name: (zip_name, sha) for name, zip_name, sha, _ in entries} == pinned
    assert set(pinned) == {"wikitext-103", "wikitext-103-raw", "enwik8"}
    for name, _, _, parts in entries:
        archive = CORPORA[name].archive
        assert archive is not None
        spec = []
        for part in archive.parts:
            span = "" if part.end is None else f"@{part.start}+{part.end - part.start}"
            spec.append(f"{part.name}={part.member}{span}")
        assert parts.split() == spec
    # The recipes' corpora are all downloadable.
    from lmtrain.catalog import recipes

    for r in recipes():
        assert r.data in CORPORA or r.data.startswith("builtin:"), r.name


def test_download_extracts_parts_of_a_verified_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    import hashlib
    import io
    import zipfile

    from lmtrain import download

    payload = bytes(range(256)) * 40  # 10,240 bytes
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("corpus/whole", payload)
    zipped = buf.getvalue()
    mirror = _mirror(tmp_path, {"c.zip": zipped})
    archive = download.Archive(
        "c.zip",
        hashlib.sha256(zipped).hexdigest(),
        len(zipped),
        (
            download.Part("train.txt", "corpus/whole", 0, 9000),
            download.Part("valid.txt", "corpus/whole", 9000, 9640),
            download.Part("test.txt", "corpus/whole", 9640, 10240),
        ),
    )
    source = download.Source(f"file://{mirror}", "ENWIK8_URL", archive=archive)
    monkeypatch.setitem(download.CORPORA, "enwik8", source)
    monkeypatch.delenv("ENWIK8_URL", raising=False)
    dest = tmp_path / "data"
    r = invoke(cli, "download", "enwik8", dest)
    assert r.exit_code == 0, r.output
    got = [(dest / "enwik8" / n).read_bytes() for n in ("train.txt", "valid.txt", "test.txt")]
    assert got == [payload[:9000], payload[9000:9640], payload[9640:]]
    assert not (dest / "enwik8" / "c.zip").exists()  # the archive is deleted once extracted
    (mirror / "c.zip").unlink()
    r = invoke(cli, "download", "enwik8", dest)
    assert r.exit_code == 0 and "already extracted" in r.stderr
    # A tampered archive is refused and nothing is extracted from it.
    (mirror / "c.zip").write_bytes(zipped[:-1] + b"x")
    r = invoke(cli, "download", "enwik8", tmp_path / "other")
    assert r.exit_code == 2 and "checksum mismatch" in r.stderr
    assert list((tmp_path / "other").rglob("*.txt*")) == []


def test_download_script_refuses_a_tampered_archive(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "enwik8.zip").write_bytes(b"not the real archive")
    r = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "data"), "enwik8"],
        env={**os.environ, "ENWIK8_URL": f"file://{mirror}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    assert "checksum mismatch for enwik8/enwik8.zip" in r.stderr
    assert "expected sha256 547994d9" in r.stderr
    assert [p.name for p in (tmp_path / "data").rglob("*") if p.is_file()] == []
    r = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "data"), "wikitext-4"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and "unknown corpus wikitext-4" in r.stderr
