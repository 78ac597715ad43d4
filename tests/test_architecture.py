"""The layout, read from the source: no import cycles, and layers that point one way.

Every `import` counts, including those inside functions and under TYPE_CHECKING, so a lazy
import that only dodges a cycle or a layer at run time still counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

import lmtrain

PACKAGE = Path(lmtrain.__file__).resolve().parent


class Import(NamedTuple):
    module: str  # the importing lmtrain module
    line: int
    target: str  # the lmtrain module it imports

    def where(self) -> str:
        path = _modules().get(self.module)
        name = path.relative_to(PACKAGE.parent) if path else self.module
        return f"{name}:{self.line}"


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


def imports() -> list[Import]:
    """Every import of one lmtrain module by another, with its line."""
    modules = _modules()
    found: list[Import] = []
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
                    target = _resolve(t, modules)
                    if target and target != mod:
                        found.append(Import(mod, node.lineno, target))
    return list(dict.fromkeys(found))  # `from P import a, b` is one import of P


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for imp in imports():
        graph[imp.module].add(imp.target)
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


# -- layers --------------------------------------------------------------------------------------
# A unit is a package or module; a module belongs to the longest unit that contains it. Each unit
# may import itself and the units LAYERS lists for it, nothing else: lower layers never import
# higher ones, and siblings in one layer only where listed.

# L0 base. The package's __init__ is here: it imports nothing of lmtrain (the API is looked up by
# name on first use), so importing it for __version__ is importing a base fact.
BASE = {"lmtrain", "lmtrain.errors", "lmtrain.files", "lmtrain.records"}
# L1 sections: each component's config section (lmtrain/<package>/config.py, torch-free) and the
# catalog of recipes and corpora. They import only the base.
SECTIONS = {"lmtrain.catalog"} | {
    m for m in _modules() if m.count(".") == 2 and m.endswith(".config")
}
# L3 runtime: devices, precision, threads, processes. Signals, which decide when a run stops, are
# the training loop's (and its callers'): evaluation computes, it does not stop runs.
RUNTIME = {"lmtrain.runtime"}
SIGNALS = {"lmtrain.runtime.signals"}
# L4 components: data, models, metrics
COMPONENTS = {"lmtrain.data", "lmtrain.models", "lmtrain.metrics"}
# L5 what reads and writes models: checkpoints, evaluation, sampling
READERS = {"lmtrain.checkpoint", "lmtrain.evaluation", "lmtrain.sample"}
# L6 tools
TOOLS = {
    "lmtrain.rundir",
    "lmtrain.export",
    "lmtrain.plot",
    "lmtrain.diagnose",
    "lmtrain.preflight",
    "lmtrain.download",
}
BELOW_TOOLS = BASE | SECTIONS | {"lmtrain.config"} | RUNTIME | COMPONENTS | READERS

LAYERS: dict[str, set[str]] = {
    # L0
    "lmtrain": set(),
    "lmtrain.errors": set(),
    "lmtrain.files": {"lmtrain.errors"},
    "lmtrain.records": {"lmtrain.errors"},
    # L1
    **{section: BASE for section in SECTIONS},
    # L2 the assembly of the sections: YAML, conversion, the root config, command options
    "lmtrain.config": BASE | SECTIONS,
    # L3 (never models: it moves tensors and modules, whatever the model is)
    "lmtrain.runtime": BASE,
    "lmtrain.runtime.signals": BASE,
    # L4: each reads its own section, never another's or the assembled config
    "lmtrain.data": BASE | RUNTIME | {"lmtrain.data.config"},
    # plain PyTorch modules and exceptions (lmtrain: the package's lazy-name helper)
    "lmtrain.models": RUNTIME | {"lmtrain", "lmtrain.models.config"},
    # figures come in computed, never from evaluation
    "lmtrain.metrics": BASE | RUNTIME | {"lmtrain.metrics.config"},
    # L5
    "lmtrain.checkpoint": BASE | SECTIONS | {"lmtrain.config"} | RUNTIME | COMPONENTS,
    "lmtrain.evaluation": BASE | SECTIONS | {"lmtrain.config"} | RUNTIME | COMPONENTS,
    # sampling reads a model as evaluation does (evaluation.reading.evaluating)
    "lmtrain.sample": (
        BASE | SECTIONS | {"lmtrain.config", "lmtrain.evaluation"} | RUNTIME | COMPONENTS
    ),
    # L6 (a run directory is files and records: the caller's ranks come in as a value)
    "lmtrain.rundir": BELOW_TOOLS - RUNTIME,
    "lmtrain.export": BELOW_TOOLS,
    "lmtrain.plot": BELOW_TOOLS | {"lmtrain.diagnose"},  # plot draws what diagnose measures
    "lmtrain.diagnose": BELOW_TOOLS,
    "lmtrain.preflight": BELOW_TOOLS,
    "lmtrain.download": BELOW_TOOLS,
    # L7
    "lmtrain.training": BELOW_TOOLS | SIGNALS | TOOLS,
    # L8 the faces: the work is done below them; they may name the types it hands out (the API's
    # Model.vocab is a data Tokenizer)
    "lmtrain.api": BELOW_TOOLS | SIGNALS | TOOLS | {"lmtrain.training"},
    "lmtrain.cli": BELOW_TOOLS | SIGNALS | TOOLS | {"lmtrain.training"},
    "lmtrain.__main__": {"lmtrain.cli"},
}


def unit(module: str) -> str | None:
    """The LAYERS unit a module belongs to (the package's __init__ only as itself)."""
    best = None
    for u in LAYERS:
        inside = module == u or (u != "lmtrain" and module.startswith(u + "."))
        if inside and (best is None or len(u) > len(best)):
            best = u
    return best


def against_layers(imp: Import) -> bool:
    src, dst = unit(imp.module), unit(imp.target)
    return src is None or dst is None or (src != dst and dst not in LAYERS[src])


def layer_violations(found: list[Import]) -> list[str]:
    return [
        f"{imp.where()}: {imp.module} imports {imp.target} ({unit(imp.module)} -> {unit(imp.target)})"
        for imp in found
        if against_layers(imp)
    ]


# -- tests -----------------------------------------------------------------------------------------


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


def test_layer_checker_catches_a_planted_violation() -> None:
    planted = [
        Import("lmtrain.data.corpus", 1, "lmtrain.data.config"),  # own section: allowed
        Import("lmtrain.evaluation.stream", 2, "lmtrain.runtime.device"),  # allowed
        Import("lmtrain.models.lm", 3, "lmtrain.training.loop"),  # upward
        Import("lmtrain.evaluation.stream", 4, "lmtrain.runtime.signals"),  # not listed
    ]
    bad = layer_violations(planted)
    assert len(bad) == 2, bad
    assert "lmtrain.models.lm imports lmtrain.training.loop" in bad[0]
    assert "lmtrain.evaluation.stream imports lmtrain.runtime.signals" in bad[1]


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        # the layer rules issue 22 found broken: each stays a rule
        ("lmtrain.data.corpus", "lmtrain.config.schema"),
        ("lmtrain.runtime.forward", "lmtrain.models.lm"),
        ("lmtrain.evaluation.stream", "lmtrain.runtime.signals"),
        ("lmtrain.metrics.logger", "lmtrain.evaluation.stream"),
        ("lmtrain.models.lm", "lmtrain.config.schema"),
        ("lmtrain.models.lm", "lmtrain.errors"),
        ("lmtrain.rundir.start", "lmtrain.runtime.distributed"),
        # and the direction of the sections: a component reads its own only
        ("lmtrain.data.config", "lmtrain.data.tokenizers"),
        ("lmtrain.config.checks", "lmtrain.metrics.backends"),
        ("lmtrain.data.corpus", "lmtrain.models.config"),
        ("lmtrain.models.lm", "lmtrain.data.tokenizers"),
        # and the faces do not call each other
        ("lmtrain.api", "lmtrain.cli.app"),
    ],
)
def test_layer_table_refuses(importer: str, imported: str) -> None:
    assert layer_violations([Import(importer, 1, imported)])


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in _modules() if unit(m) is None)
    assert not missing, f"modules in no LAYERS unit (add them to the table): {missing}"


def test_layers_point_one_way() -> None:
    bad = layer_violations(imports())
    assert not bad, "imports against the layer table:\n" + "\n".join(bad)
