"""The layout issue 13 promises: no import cycles, and short modules unless they say why.

Both are read from the source (every `import`, including those inside functions), so a lazy
import that only dodges a cycle at run time still counts as one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lmtrain

PACKAGE = Path(lmtrain.__file__).resolve().parent
LONG_MODULE = 300
"""Lines above which a module's docstring must say why it is long."""
REASON = re.compile(r"\blong(?:er)?\b[^.]*\bbecause\b", re.IGNORECASE)
"""How a docstring says why: "... long(er) ... because ..." within one sentence."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The lmtrain module that `name` (a module or a name inside one) refers to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                # `from P import name`: the submodule P.name if there is one, else P itself.
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t.startswith("lmtrain"):
                    found = _resolve(t, modules)
                    if found and found != mod:
                        graph[mod].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    # lmtrain/cli/train.py imports the training package inside the fit command.
    assert any(m.startswith("lmtrain.training") for m in graph["lmtrain.cli.train"])


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_reason_pattern_wants_a_reason() -> None:
    assert REASON.search("It is a little long (about 300 lines) because the two belong together.")
    assert not REASON.search("Encoding takes longer than the first steps. Because of that, ...")


def test_long_modules_say_why() -> None:
    unexplained = []
    for mod, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > LONG_MODULE and not REASON.search(" ".join(doc.split())):
            unexplained.append(f"{mod} ({lines} lines)")
    assert not unexplained, "modules over 300 lines whose docstring does not say why: " + ", ".join(
        unexplained
    )
