"""The manual stays true: README.md and docs/*.md against the code they describe.

- Every `lmtrain` command shown in a fenced `bash` block is either run here (RUN: the words its
  output must hold) or listed in NOT_RUN with the reason it cannot run in seconds on the
  built-in corpus; a command in neither table, or an entry no page shows any more, fails.
  The commands run with the `lmtrain` of this interpreter's environment, page by page, each page
  in a folder of its own holding `configs` (a link to the checkout's, as in a checkout) and a
  copy of the README's quickstart run. A `fit` runs with a short budget appended (FAST: a
  16-unit model, a tenth of the steps it asks for, 4 without a number), so the shapes of its
  output are checked, not its figures; the figures are the benchmarks' (each page shows the
  command that reproduces them).
- The README is the package's long description (pyproject.toml `readme`), shown by package
  indexes where a relative image cannot load: it has no relative images, and each relative
  link names a file of the checkout (and a heading of it, after `#`).
- The navigation of mkdocs.yml, the pages in docs/ and the tables of pages in the README and
  on the home page list the same pages.
- The site renders: headless Chromium draws the home page and a task page (not blank, the title
  in the DOM). It needs Chromium and mkdocs; without them it is skipped, with the reason, except
  under `make docs-check` (LMTRAIN_DOCS_CHECK=1), which fails instead.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
DOCS_CHECK = os.environ.get("LMTRAIN_DOCS_CHECK") == "1"

# Command shown -> words its output (stdout and stderr) must hold. Exit status 0 for all.
RUN: dict[str, tuple[str, ...]] = {
    # README.md, Quickstart (run first: the other pages start from a copy of its run)
    "lmtrain recipes": ("quickstart", "wikitext2_word_cpu", "lmtrain fit NAME"),
    "lmtrain fit quickstart": ("done: ", "best validation: bpc", "evaluate: lmtrain eval runs/quickstart"),
    "lmtrain eval runs/quickstart": ("evaluated runs/quickstart/checkpoints/best.pt (step 4)", "test split", "bpc"),
    'lmtrain sample runs/quickstart --prompt "The " --max-tokens 300 --temperature 0.8 --seed 0': ("The ",),
    "lmtrain init quickstart my.yaml": ("wrote my.yaml", "lmtrain fit my.yaml"),
    # configs.md
    "lmtrain config > my.yaml": (),
    "lmtrain validate my.yaml": ("my.yaml: OK", "model:"),
    "lmtrain fit my.yaml train.lr=0.001": ("done: ", "runs/default"),
    "lmtrain fit configs/quickstart.yaml train.lr=0.001 model.cell=gru run.dir=runs/gru": ("gru 1x16", "done: "),
    "lmtrain init quickstart quick.yaml": ("wrote quick.yaml",),
    # data.md
    "lmtrain prepare quickstart": ("vocabulary 105 (char)", "train: builtin:python-docs"),
    "lmtrain prepare quickstart --verify": ("train: builtin:python-docs",),
    "lmtrain fit configs/quickstart.yaml data.mode=sentences data.tokenizer=word run.dir=runs/sent": ("(word)", "done: "),
    "lmtrain eval runs/sent --batch-size 64": ("evaluated runs/sent", "ppl"),
    # training.md
    "lmtrain fit quickstart run.dir=runs/first train.max_steps=20": ("done: 2 steps",),
    "lmtrain fit quickstart run.dir=runs/first train.max_steps=40 --resume auto": ("done: step 4",),
    "lmtrain fit quickstart run.dir=runs/fork train.max_steps=60 --resume runs/first": ("done: step 6",),
    # watching.md
    "lmtrain fit quickstart run.dir=runs/lstm train.max_steps=300 train.eval_every=50": ("done: 30 steps",),
    "lmtrain fit quickstart run.dir=runs/gru model.cell=gru train.max_steps=300 train.eval_every=50": ("done: 30 steps",),
    "lmtrain plot runs/lstm runs/gru --metric ppl --x minutes --out curves.png": ("curves.png",),
    # evaluation.md
    "lmtrain eval runs/quickstart --json": ('"ppl"', '"bpb"', '"split": "test"'),
    "lmtrain eval runs/quickstart --streams 8": ("APPROXIMATE",),
    'lmtrain score runs/sent "the cat sat on the mat ." "mat the on sat cat the ." --json': ('"logprob"', '"log2prob"', '"text": "mat the on sat cat the ."'),
    "lmtrain score runs/sent --file sentences.txt": ("the cat sat on the mat .",),
    "lmtrain eval runs/quickstart --cache-size 500 --cache-theta 0.3 --cache-lambda 0.1": ("cache",),
    "lmtrain eval runs/quickstart --dynamic-lr 0.1 --dynamic-bptt 64": ("dynamic",),
    # sampling.md
    'lmtrain sample runs/quickstart --prompt "The " --max-tokens 40 --top-p 0.9 --num-samples 3 --seed 1': ("The ",),
    'lmtrain sample runs/quickstart --prompt "The " --max-tokens 40 --greedy': ("The ",),
    # export.md
    "lmtrain export runs/quickstart": ("exported runs/quickstart/checkpoints/best.pt", "model.safetensors"),
    'lmtrain sample runs/quickstart/export --prompt "The "': ("The ",),
    "lmtrain eval runs/quickstart/export": ("evaluated runs/quickstart/export",),
    # toolbox.md
    "lmtrain diagnose gradient-flow configs/quickstart.yaml --cell rnn_tanh --cell lstm --cell gru --steps 60 --out docs/gradient_flow.png --tensorboard runs/gradient-flow": ("steps back", "rnn_tanh", "wrote docs/gradient_flow.png"),
}  # fmt: skip

# Command shown -> why it is not run here.
NOT_RUN: dict[str, str] = {
    "lmtrain download wikitext-2": "fetches a corpus over the network (tests/test_download_write.py fakes the server)",
    "lmtrain download tinyshakespeare data": "fetches a corpus over the network (tests/test_download_write.py fakes the server)",
    "lmtrain fit quickstart 'data.train=${LMTRAIN_DATA}/tinyshakespeare/input.txt:train' 'data.valid=${LMTRAIN_DATA}/tinyshakespeare/input.txt:valid' data.test=null model.num_layers=2 model.embedding_dim=24 model.hidden_size=H train.batch_size=8 train.bptt=24 train.max_steps=150 train.eval_every=150 train.num_threads=1 run.tensorboard=false run.sample_tokens=0 run.dir=runs/remedy EXTRA": "a template (EXTRA) on the Tiny Shakespeare corpus, which is downloaded, not built in",
    "torchrun --nproc_per_node=4 -m lmtrain fit configs/quickstart.yaml run.dir=runs/ddp": "four processes; tests/runtime/test_distributed.py runs torchrun on the tiny corpus",
    "torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m lmtrain fit CONFIG": "two machines (HOST and CONFIG are placeholders)",
}  # fmt: skip

# The short budget of every `fit` shown: a tenth of the steps it asks for (4 without a number).
FAST = (
    "model.hidden_size=16",
    "model.embedding_dim=16",
    "run.sample_tokens=0",
    "train.log_every=1",
)

SENTENCES = "the cat sat on the mat .\nmat the on sat cat the .\n"


def pages() -> list[Path]:
    """README.md, then docs/*.md in the order of mkdocs.yml's navigation."""
    return [ROOT / "README.md", *(DOCS / p for p in nav_pages())]


def nav_pages() -> list[str]:
    def walk(node: object) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)

    # mkdocs.yml may hold !!python tags elsewhere; the nav is plain YAML.
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = yaml.safe_load(text[text.index("\nnav:") :])["nav"]
    return list(walk(nav))


def fenced_blocks(text: str) -> Iterator[tuple[str, list[str]]]:
    """(language, lines) of each fenced code block."""
    lines = iter(text.splitlines())
    for line in lines:
        m = re.match(r"^(\s*)(```+)\s*([\w-]*)", line)
        if not m:
            continue
        body = []
        for inner in lines:
            if inner.strip().startswith(m.group(2)):
                break
            body.append(inner[len(m.group(1)) :])
        yield m.group(3), body


def shell_commands(text: str) -> list[str]:
    """The command lines of the page's bash blocks: continuations joined, comments dropped."""
    out = []
    for lang, body in fenced_blocks(text):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        joined = re.sub(r"\\\n\s*", "", "\n".join(body))
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            line = re.sub(r"\s+", " ", line)
            if line:
                out.append(line)
    return out


def is_lmtrain(command: str) -> bool:
    return command.startswith("lmtrain ") or " -m lmtrain " in f"{command} "


def page_commands() -> dict[Path, list[str]]:
    return {
        p: [c for c in shell_commands(p.read_text(encoding="utf-8")) if is_lmtrain(c)]
        for p in pages()
    }


def test_every_lmtrain_command_shown_is_run_or_says_why_not() -> None:
    shown = page_commands()
    everywhere = {c for cs in shown.values() for c in cs}
    unlisted = sorted(
        f"{p.relative_to(ROOT)}: {c}"
        for p, cs in shown.items()
        for c in cs
        if c not in RUN and c not in NOT_RUN
    )
    assert not unlisted, "commands neither run nor listed as not runnable:\n" + "\n".join(unlisted)
    stale = sorted((RUN.keys() | NOT_RUN.keys()) - everywhere)
    assert not stale, "listed here but shown on no page:\n" + "\n".join(stale)
    assert not RUN.keys() & NOT_RUN.keys()
    assert all(NOT_RUN.values())


def test_every_fenced_block_names_its_language() -> None:
    # A command cannot hide from the rule above in an unlabelled block: commands are `bash`,
    # outputs, synopses and trees `text`.
    bare = [
        f"{p.relative_to(ROOT)}: {body[0] if body else ''}"
        for p in pages()
        for lang, body in fenced_blocks(p.read_text(encoding="utf-8"))
        if not lang
    ]
    assert not bare, "fenced blocks without a language:\n" + "\n".join(bare)


def fast(command: str) -> str:
    """A `fit` command with the short budget appended; other commands as shown."""
    words = shlex.split(command)
    if words[:2] != ["lmtrain", "fit"]:
        return command
    asked = [w.split("=", 1)[1] for w in words if w.startswith("train.max_steps=")]
    steps = max(1, int(asked[-1]) // 10) if asked else 4
    return f"{command} {' '.join(FAST)} train.max_steps={steps} train.eval_every={steps}"


def run_page(commands: list[str], work: Path, env: dict[str, str]) -> list[str]:
    """Run a page's commands in order in `work`; the problems found, one line each."""
    problems = []
    for command in commands:
        r = subprocess.run(
            ["bash", "-c", fast(command)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        out = r.stdout + r.stderr
        if r.returncode != 0:
            problems.append(f"{command}: exit {r.returncode}\n{out[-2000:]}")
            break  # later commands of the page build on this one
        missing = [w for w in RUN[command] if w not in out]
        if missing:
            problems.append(f"{command}: output lacks {missing}\n{out[-2000:]}")
    return problems


def workspace(root: Path, name: str, quickstart: Path | None) -> Path:
    work = root / name
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    (work / "sentences.txt").write_text(SENTENCES, encoding="utf-8")
    if quickstart is not None:
        shutil.copytree(quickstart, work / "runs" / "quickstart", symlinks=True)
    return work


@pytest.mark.slow
def test_commands_shown_run_and_print_what_the_pages_say(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        LMTRAIN_CACHE_DIR=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
    )
    assert (BIN / "lmtrain").exists(), f"no lmtrain next to {sys.executable}"
    todo = [
        (page.stem if page.parent == DOCS else page.name, [c for c in commands if c in RUN])
        for page, commands in page_commands().items()
    ]

    (readme_name, readme_cmds), rest = todo[0], todo[1:]
    first = workspace(tmp_path, readme_name, None)
    problems = run_page(readme_cmds, first, env)
    assert not problems, "\n\n".join(problems)
    quickstart = first / "runs" / "quickstart"
    # Two pages at a time: most of a command's time is starting Python and importing torch.
    with ThreadPoolExecutor(2) as pool:
        found = pool.map(
            lambda item: run_page(item[1], workspace(tmp_path, item[0], quickstart), env),
            [item for item in rest if item[1]],
        )
        problems = [p for ps in found for p in ps]
    assert not problems, "\n\n".join(problems)


@pytest.mark.slow
def test_readme_python_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (code,) = [
        "\n".join(body)
        for lang, body in fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
        if lang == "python"
    ]
    shown = '{"train.max_steps": 200, "run.dir": "runs/nb"}'
    assert shown in code
    short = '{"train.max_steps": 4, "run.dir": "runs/nb", "model.hidden_size": 16, "train.eval_every": 4}'
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(shown, short), "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("The ")


def test_the_api_page_shows_the_example_test_api_runs() -> None:
    from test_api import README_EXAMPLE

    blocks = [
        "\n".join(body) + "\n"
        for lang, body in fenced_blocks((DOCS / "api.md").read_text(encoding="utf-8"))
        if lang == "python"
    ]
    assert README_EXAMPLE in blocks


def test_docs_images_script_runs_the_commands_the_pages_show() -> None:
    spec = importlib.util.spec_from_file_location("docs_images", ROOT / "scripts/docs_images.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    watching = shell_commands((DOCS / "watching.md").read_text(encoding="utf-8"))
    toolbox = shell_commands((DOCS / "toolbox.md").read_text(encoding="utf-8"))
    assert [*script.RUNS, script.PLOT] == [c for c in watching if c.startswith("lmtrain ")]
    assert script.GRADIENT_FLOW in toolbox
    for image in ("curves.png", "tensorboard.png", "gradient_flow.png"):
        assert (DOCS / image).stat().st_size > 10_000, image


# --- links ------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    in_code = False
    found = set()
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^#{1,6}\s+(.*)", line)):
            found.add(slug(m.group(1)))
    return found


LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")


def test_the_long_description_has_no_relative_images_and_its_links_resolve() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^readme = "README.md"$', pyproject, re.M)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250
    links = LINK.findall(text)
    assert links, "the README links into docs/"
    broken = []
    for image, target in links:
        if re.match(r"^[a-z]+://", target):
            continue
        if image:
            broken.append(f"relative image {target}: package indexes cannot show it")
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / "README.md"
        if not file.is_file():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {path or 'README.md'}")
    assert not broken, "\n".join(broken)


def page_table(text: str, prefix: str) -> list[str]:
    return re.findall(rf"^\| \[[^\]]+\]\({re.escape(prefix)}([\w-]+\.md)\) \|", text, re.M)


def test_navigation_pages_and_tables_of_pages_agree() -> None:
    nav = nav_pages()
    assert nav[0] == "index.md" and len(nav) == len(set(nav))
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))
    readme = page_table((ROOT / "README.md").read_text(encoding="utf-8"), "docs/")
    home = page_table((DOCS / "index.md").read_text(encoding="utf-8"), "")
    assert readme == home == nav[1:]


def test_the_test_fixture_folder_is_named_only_in_development() -> None:
    named = [p.name for p in pages() if "../shared" in p.read_text(encoding="utf-8")]
    assert named == ["development.md"]


# --- the site in a browser -------------------------------------------------------------------


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def unavailable(reason: str) -> None:
    if DOCS_CHECK:
        pytest.fail(f"make docs-check: {reason}")
    pytest.skip(reason)


def browser_run(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--window-size=1280,900", *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip


@pytest.mark.slow
def test_site_renders_in_chromium(tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        unavailable(
            "Chromium is not installed (apt-get install chromium); make docs-check needs it"
        )
    if not (BIN / "mkdocs").exists():
        unavailable("mkdocs is not installed: pip install -e '.[docs]' (make docs does)")
    from PIL import Image, ImageStat

    if DOCS_CHECK:
        site = ROOT / "site"  # just built by `make docs`
    else:
        site = tmp_path / "site"
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        r = subprocess.run(
            [BIN / "mkdocs", "build", "--strict", "--quiet", "--site-dir", site],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
    for page, title in (
        ("index.html", "lmtrain"),
        ("training/index.html", "Training and resuming"),
    ):
        url = (site / page).as_uri()
        png = tmp_path / (page.replace("/", "-") + ".png")
        r = browser_run(browser, f"--screenshot={png}", url)
        assert png.is_file(), r.stderr[-2000:]
        with Image.open(png) as image:
            gray = image.convert("L")
            assert gray.size == (1280, 900)
            stat = ImageStat.Stat(gray)
            # A page that failed to draw is one colour; the manual's text, navigation and
            # header give a spread of greys.
            assert stat.stddev[0] > 20, f"{page}: screenshot is blank (stddev {stat.stddev[0]:.1f})"
            dark = sum(gray.histogram()[:128]) / (gray.size[0] * gray.size[1])
            assert dark > 0.005, f"{page}: almost no dark pixels ({dark:.2%}): no text drawn"
        dom = browser_run(browser, "--dump-dom", url).stdout
        assert f"<title>{title}" in dom, f"{page}: title {title!r} not in the DOM"
        assert re.search(rf"<h1[^>]*>{re.escape(title)}", dom), f"{page}: no heading {title!r}"
