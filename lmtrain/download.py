"""Fetch the corpora of the shipped recipes and check them byte for byte.

The same sources and checksums as scripts/download_data.sh (tests/test_recipes.py checks that
the two agree). Sources are pinned commits, so the bytes cannot change under a recipe:
  WikiText-2 (Merity et al. 2016, CC BY-SA 3.0), tokenised v1 files as used by pytorch/examples
    word_language_model, commit 77f55b912142e11fcfdf5b530231fb9c52f181e8.
  Tiny Shakespeare (public domain), karpathy/char-rnn data/tinyshakespeare/input.txt,
    commit 6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e.
Each file is downloaded to a temporary name beside its target, its sha256 compared with the
value recorded here, and only then moved into place: a target is either absent, the previous
file, or the verified new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmtrain.errors import LmtrainError


class DownloadError(LmtrainError):
    """A download that failed or whose bytes are not the recorded ones."""


@dataclass(frozen=True)
class Source:
    base_url: str
    """Where the files are; a mirror can be named with the environment variable `mirror_env`."""
    mirror_env: str
    files: tuple[tuple[str, str], ...]
    """(file name, sha256) of each file."""


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
}

Opener = Callable[[str], BinaryIO]


def _open_url(url: str) -> BinaryIO:
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - fixed https or a chosen mirror


def default_dest() -> Path:
    """$LMTRAIN_DATA when set (the recipes read their files from there), else ./data."""
    return Path(os.environ.get("LMTRAIN_DATA") or "data").expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(
    name: str,
    dest: Path | None = None,
    echo: Callable[[str], None] = print,
    opener: Opener = _open_url,
) -> Path:
    """Fetch corpus `name` into DEST/NAME/ and verify every file; returns that directory.

    Files already present with the right checksum are kept without downloading them again.
    """
    name = corpus_name(name, echo)
    source = CORPORA[name]
    base = os.environ.get(source.mirror_env) or source.base_url
    # A `~` the shell did not expand (quoted, or from a script) means home, not a folder "~".
    directory = (Path(dest).expanduser() if dest is not None else default_dest()) / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{directory}: cannot create it ({e.strerror or e})") from None
    for filename, want in source.files:
        target = directory / filename
        if target.is_file() and sha256_of(target) == want:
            echo(f"ok       {target} (already present, checksum matches)")
            continue
        url = f"{base.rstrip('/')}/{filename}"
        echo(f"fetching {url}")
        _fetch_verified(url, target, want, opener)
        echo(f"ok       {target}")
    return directory


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


def _fetch_verified(url: str, target: Path, want: str, opener: Opener) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, opener(url) as response:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise DownloadError(
                f"download of {url} failed ({reason}); check your connection and rerun. "
                f"Nothing was replaced at {target}."
            ) from None
        got = sha256_of(tmp)
        if got != want:
            raise DownloadError(
                f"checksum mismatch for {target}:\n"
                f"  expected sha256 {want}\n"
                f"  got      sha256 {got}\n"
                f"  from {url}; the download was deleted, nothing was replaced."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
