"""Fetch the corpora of the shipped recipes and check them byte for byte.

The same sources and checksums as scripts/download_data.sh (tests/test_recipes.py checks that
the two agree). Sources are pinned commits or fixed archives, so the bytes cannot change under
a recipe:
  WikiText-2 (Merity et al. 2016, CC BY-SA 3.0), tokenised v1 files as used by pytorch/examples
    word_language_model, commit 77f55b912142e11fcfdf5b530231fb9c52f181e8.
  Tiny Shakespeare (public domain), karpathy/char-rnn data/tinyshakespeare/input.txt,
    commit 6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e.
  WikiText-103 (tokenised v1, and raw v1 for BPE; Merity et al. 2016, CC BY-SA) and enwik8
    (the first 10^8 bytes of an English Wikipedia dump of 2006, Hutter Prize) come as zip
    archives from their authors' sites. Their sha256 values were not computed here: they are
    the ones the Hugging Face `datasets` library publishes for the same URLs, with their sizes
    (huggingface/datasets, datasets/wikitext/dataset_infos.json and
    datasets/enwik8/dataset_infos.json, commit 040102f100964a33fd334e2695f1c493fa6b92db).
Each file is downloaded to a temporary name beside its target, its sha256 compared with the
value recorded here, and only then moved into place: a target is either absent, the previous
file, or the verified new one. An archive is verified as a whole, then the files a recipe reads
are taken from it (enwik8 is cut at the customary 90 / 5 / 5 M bytes) and the archive deleted.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lmtrain import files
from lmtrain.errors import LmtrainError


class DownloadError(LmtrainError):
    """A download that failed or whose bytes are not the recorded ones."""


@dataclass(frozen=True)
class Part:
    """A file a recipe reads, taken from a verified archive: bytes [start, end) of a member."""

    name: str
    member: str
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class Archive:
    name: str
    """The archive's file name under the source's URL."""
    sha256: str
    size: int
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Source:
    base_url: str
    """Where the files are; a mirror can be named with the environment variable `mirror_env`."""
    mirror_env: str
    files: tuple[tuple[str, str], ...] = ()
    """(file name, sha256) of each file fetched as it is."""
    archive: Archive | None = field(default=None)
    """A zip archive the files are taken from, verified as a whole."""


_M = 1_000_000
_WIKITEXT_URL = "https://s3.amazonaws.com/research.metamind.io/wikitext"


CORPORA: dict[str, Source] = {
    "wikitext-2": Source(
        "https://raw.githubusercontent.com/pytorch/examples/"
        "77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2",
        "WIKITEXT2_URL",
        (
            ("train.txt", "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
            ("valid.txt", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
            ("test.txt", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
        ),
    ),
    "tinyshakespeare": Source(
        "https://raw.githubusercontent.com/karpathy/char-rnn/"
        "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare",
        "TINYSHAKESPEARE_URL",
        (("input.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),),
    ),
    "wikitext-103": Source(
        _WIKITEXT_URL,
        "WIKITEXT103_URL",
        archive=Archive(
            "wikitext-103-v1.zip",
            "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590",
            190_229_076,
            tuple(
                Part(f"{split}.txt", f"wikitext-103/wiki.{split}.tokens")
                for split in ("train", "valid", "test")
            ),
        ),
    ),
    "wikitext-103-raw": Source(
        _WIKITEXT_URL,
        "WIKITEXT103_RAW_URL",
        archive=Archive(
            "wikitext-103-raw-v1.zip",
            "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794",
            191_984_949,
            tuple(
                Part(f"{split}.txt", f"wikitext-103-raw/wiki.{split}.raw")
                for split in ("train", "valid", "test")
            ),
        ),
    ),
    "enwik8": Source(
        "http://mattmahoney.net/dc",
        "ENWIK8_URL",
        archive=Archive(
            "enwik8.zip",
            "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
            36_445_475,
            (
                Part("train.txt", "enwik8", 0, 90 * _M),
                Part("valid.txt", "enwik8", 90 * _M, 95 * _M),
                Part("test.txt", "enwik8", 95 * _M, 100 * _M),
            ),
        ),
    ),
}

Opener = Callable[[str], BinaryIO]
Progress = Callable[[int, int], None]
"""`progress(done, total)`: bytes read so far and in all, from 0 (lmtrain.metrics' Meter)."""


def _content_length(response: BinaryIO) -> int | None:
    """The size the server announces, when it does (an http response's Content-Length)."""
    headers = getattr(response, "headers", None)
    try:
        value = int(headers.get("Content-Length")) if headers is not None else 0
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _open_url(url: str) -> BinaryIO:
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - fixed https or a chosen mirror


def default_dest() -> Path:
    """$LMTRAIN_DATA when set (the recipes read their files from there), else ./data."""
    return Path(os.environ.get("LMTRAIN_DATA") or "data").expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with files.open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(
    name: str,
    dest: Path | None = None,
    echo: Callable[[str], None] = print,
    opener: Opener = _open_url,
    progress: Callable[[str], Progress] | None = None,
) -> Path:
    """Fetch corpus `name` into DEST/NAME/ and verify every file; returns that directory.

    Files already present with the right checksum are kept without downloading them again.
    `progress(file name)`: the progress callback of each file's bytes (metrics' Meter.track).
    A failed download leaves no folder it created and nothing in it (a rerun starts clean).
    """
    name = corpus_name(name, echo)
    source = CORPORA[name]
    base = os.environ.get(source.mirror_env) or source.base_url
    # A `~` the shell did not expand (quoted, or from a script) means home, not a folder "~".
    directory = (Path(dest).expanduser() if dest is not None else default_dest()) / name
    created = [p for p in (directory, *directory.parents) if not (p.exists() or p.is_symlink())]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise DownloadError(f"{directory}: cannot create it ({e.strerror or e})") from None
    try:
        _fetch_all(name, source, base, directory, echo, opener, progress)
    except BaseException:
        _remove_empty(created)  # offline, say: no empty folder left behind
        raise
    return directory


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of `folders` (innermost first) that is empty; anything in one keeps it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or not ours to remove): its parents are not empty either


def _fetch_all(
    name: str,
    source: Source,
    base: str,
    directory: Path,
    echo: Callable[[str], None],
    opener: Opener,
    progress: Callable[[str], Progress] | None,
) -> None:
    for tmp in files.sweep_temps(directory):
        echo(f"removed  {tmp} (an unfinished download of an interrupted run)")
    for filename, want in source.files:
        target = directory / filename
        if target.is_file() and sha256_of(target) == want:
            echo(f"ok       {target} (already present, checksum matches)")
            continue
        url = f"{base.rstrip('/')}/{filename}"
        echo(f"fetching {url}")
        _fetch_verified(url, target, want, opener, _track(progress, filename))
        echo(f"ok       {target}")
    if source.archive is not None:
        archive = source.archive
        _fetch_archive(
            f"{base.rstrip('/')}/{archive.name}", directory, archive, echo, opener,
            _track(progress, archive.name),
        )  # fmt: skip


def _track(progress: Callable[[str], Progress] | None, name: str) -> Progress | None:
    return None if progress is None else progress(name)


def _stamp(directory: Path, archive: Archive) -> Path:
    """Records which verified archive the parts came from: present = all parts were written."""
    return directory / f".{archive.name}.sha256"


def _fetch_archive(
    url: str,
    directory: Path,
    archive: Archive,
    echo: Callable[[str], None],
    opener: Opener,
    progress: Progress | None = None,
) -> None:
    stamp = _stamp(directory, archive)
    parts = [directory / p.name for p in archive.parts]
    if _stamped(stamp) == archive.sha256 and all(p.is_file() for p in parts):
        echo(f"ok       {directory} (already extracted from {archive.name}, checksum matched)")
        return
    zipped = directory / archive.name
    if not (zipped.is_file() and sha256_of(zipped) == archive.sha256):
        echo(f"fetching {url} ({archive.size / 1e6:,.0f} MB)")
        _fetch_verified(url, zipped, archive.sha256, opener, progress, archive.size)
    stamp.unlink(missing_ok=True)
    try:
        with files.open_regular(zipped) as f, zipfile.ZipFile(f) as z:
            for part in archive.parts:
                _extract(z, part, directory / part.name)
                echo(f"ok       {directory / part.name}")
    except files.WriteError:
        raise
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DownloadError(f"{zipped}: cannot extract the files ({e})") from None
    files.write_text(stamp, archive.sha256 + "\n")
    zipped.unlink()


def _stamped(stamp: Path) -> str | None:
    """The checksum a stamp records; None where it is missing or unreadable."""
    try:
        return files.read_bounded(stamp, 128)[0].decode("ascii").strip()
    except (OSError, ValueError):
        return None


def _extract(z: zipfile.ZipFile, part: Part, target: Path) -> None:
    """Bytes [start, end) of a member into `target`, through files.atomic_write."""
    with files.atomic_write(target) as out, z.open(part.member) as member:
        left = None if part.end is None else part.end - part.start
        skip = part.start
        while skip > 0:
            block = member.read(min(skip, 1 << 20))
            if not block:
                break
            skip -= len(block)
        while left is None or left > 0:
            block = member.read(1 << 20 if left is None else min(left, 1 << 20))
            if not block:
                break
            out.write(block)
            if left is not None:
                left -= len(block)
        if skip > 0 or (left is not None and left > 0):
            raise DownloadError(f"{part.member} is shorter than {target.name} needs")


def corpus_name(name: str, echo: Callable[[str], None] = print) -> str:
    """`name` itself when it is a corpus, else the corpus of the recipe called `name` (what
    `lmtrain recipes` lists in its data column), so that `lmtrain download RECIPE` works too."""
    from lmtrain import catalog

    if name in CORPORA:
        return name
    try:
        recipe = catalog.find(name)
    except catalog.RecipeError:
        raise DownloadError(
            f"unknown corpus {name!r}; choose one of: {', '.join(CORPORA)} (or a recipe's name: "
            f"{', '.join(catalog.names())})"
        ) from None
    if recipe.data not in CORPORA:
        raise DownloadError(
            f"recipe {recipe.name} reads {recipe.data}, which needs no download; run it with "
            f"`lmtrain fit {recipe.name}`"
        )
    echo(f"recipe {recipe.name} reads the corpus {recipe.data}")
    return recipe.data


def _fetch_verified(
    url: str,
    target: Path,
    want: str,
    opener: Opener,
    progress: Progress | None = None,
    size: int | None = None,
) -> None:
    """`url` into `target`, moved into place only when its sha256 is `want`. `progress` hears
    the bytes read, out of `size` (else the response's Content-Length; unknown: no progress)."""
    h = hashlib.sha256()
    with files.atomic_write(target) as out:
        try:
            with opener(url) as response:
                total = size or _content_length(response)
                done = 0
                if progress is not None and total:
                    progress(0, total)
                for block in iter(lambda: response.read(1 << 20), b""):
                    h.update(block)
                    try:
                        out.write(block)
                    except OSError as e:  # the disk, not the connection: said as such
                        raise files.WriteError(target, e) from None
                    done += len(block)
                    if progress is not None and total:
                        progress(min(done, total), total)
        except files.WriteError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise DownloadError(
                f"download of {url} failed ({reason}); check your connection and rerun. "
                f"Nothing was replaced at {target}."
            ) from None
        if h.hexdigest() != want:
            raise DownloadError(
                f"checksum mismatch for {target}:\n"
                f"  expected sha256 {want}\n"
                f"  got      sha256 {h.hexdigest()}\n"
                f"  from {url}; the download was deleted, nothing was replaced."
            )
