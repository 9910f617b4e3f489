"""The package's import structure: no circle among its modules, function-local imports only
where an import is deferred on purpose (and then with its reason), every module importable on
its own.  The graph is read from the source with ``ast``, so a circle hidden inside a function
counts as much as one at the top of a file."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each subpackage's files live (graphprune.passes is the top-level passes/ folder)
SOURCES = {"graphprune": ROOT / "graphprune", "graphprune.passes": ROOT / "passes"}
DEFERRED = "# deferred:"


def package_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if prefix == "graphprune" and parts[:1] == ["passes"]:
                continue
            found[".".join([prefix, *parts])] = path
    return found


def imported_modules(node: ast.AST, module: str, is_package: bool,
                     modules: dict[str, Path]) -> list[str]:
    """The package modules an import statement loads: ``from X import y`` loads X.y when that
    is a module, else X."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                   for a in node.names]
    found = []
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        # importing a.b.c runs a.b's __init__ first, unless the importer is inside a.b already
        # (then that __init__ is under way): a circle through a subpackage's __init__ counts
        parts = target.split(".")
        for k in range(2, len(parts) + 1):
            ancestor = ".".join(parts[:k])
            if ancestor != module and not module.startswith(ancestor + ".") and \
                    ancestor in modules:
                found.append(ancestor)
    return found


def function_imports(tree: ast.Module) -> list[ast.stmt]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return list({id(n): n for n in found}.values())


def typing_only(tree: ast.Module) -> set[int]:
    """The import statements under ``if TYPE_CHECKING:``: read by type checkers, never run."""
    found = set()
    for block in ast.walk(tree):
        test = getattr(block, "test", None)
        if isinstance(block, ast.If) and (
                (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")):
            found |= {id(n) for stmt in block.body for n in ast.walk(stmt)
                      if isinstance(n, (ast.Import, ast.ImportFrom))}
    return found


def import_graph() -> nx.DiGraph:
    """What importing each module runs: an edge per import statement outside
    ``if TYPE_CHECKING:`` blocks (function-local ones included)."""
    modules = package_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = typing_only(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skip:
                continue
            for target in imported_modules(node, name, path.name == "__init__.py", modules):
                graph.add_edge(name, target, line=node.lineno)
    return graph


def test_the_graph_reader_sees_a_circle():
    graph = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a")])
    assert nx.find_cycle(graph)
    assert "graphprune.passes.mask_channels" in package_modules()
    graph = import_graph()
    assert graph.has_edge("graphprune.pipeline", "graphprune.passes")
    assert graph.has_edge("graphprune.cli", "graphprune.data")          # from . import data
    assert not graph.has_edge("graphprune.cli", "graphprune.tracing")
    # graphprune.detect.val is loaded after graphprune.detect's __init__
    assert graph.has_edge("graphprune.cli", "graphprune.detect")
    # an import for annotations only runs nothing: channels types its rules with analysis's
    # ChannelAnalysis under TYPE_CHECKING, and analysis imports channels
    assert "ChannelAnalysis" in (ROOT / "graphprune" / "channels.py").read_text()
    assert not graph.has_edge("graphprune.channels", "graphprune.analysis")
    assert graph.has_edge("graphprune.analysis", "graphprune.channels")


def test_no_import_circle():
    graph = import_graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


def test_function_local_imports_say_why_they_are_deferred():
    missing = []
    for name, path in package_modules().items():
        lines = path.read_text().splitlines()
        for node in function_imports(ast.parse("\n".join(lines))):
            k = node.lineno - 1
            reason = DEFERRED in lines[k]
            while not reason and k > 0 and lines[k - 1].strip().startswith(("import ", "from ",
                                                                              "#")):
                k -= 1
                reason = DEFERRED in lines[k]
            if not reason:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not missing, "function-local imports without a '# deferred: <reason>' comment:\n" + \
        "\n".join(missing)


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh interpreter state for the package (torch stays
    loaded: it is not ours), so that no module works only because another was imported before."""
    names = sorted(package_modules())
    script = (
        "import importlib, sys\n"
        "import torch\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'graphprune' or m.startswith('graphprune.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok")


@pytest.mark.parametrize("module", ["graphprune.export", "graphprune.pipeline", "graphprune.fold"])
def test_writing_artifacts_does_not_depend_on_reading_checkpoints(module):
    """The circle this structure removed: export wrote artifacts *and* rebuilt checkpoints (by
    compiling), so export, pipeline and fold imported one another."""
    graph = import_graph()
    assert not nx.has_path(graph, module, "graphprune.checkpoint")


def test_only_the_pipeline_imports_the_passes():
    """The passes are thin: the library holds the logic, and nothing but the pipeline (and the
    passes package itself) reaches into them."""
    graph = import_graph()
    passes = {m for m in graph if m == "graphprune.passes" or m.startswith("graphprune.passes.")}
    importers = {a for a, b in graph.edges if b in passes and a not in passes}
    assert importers == {"graphprune.pipeline"}
    for name in passes - {"graphprune.passes"}:
        # a pass calls the library; no pass imports another
        assert not [b for b in graph.successors(name) if b in passes], name


def readme_layers() -> list[list[str]]:
    """The layers the README's Layout section lists: lines ``  name, name, ...`` (two spaces,
    then the modules; the description follows after two or more spaces or on its own lines)."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    layers = []
    for line in block.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and line.strip():
            names = line.strip().split("  ")[0]
            layers.append([n.strip() for n in names.split(",")])
    return layers


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    parts = module.split(".")
    key = "__init__" if module == "graphprune" else \
        parts[1] + "/" if len(parts) > 2 or parts[1] in ("data", "detect", "models",
                                                         "integrations", "passes") \
        else parts[1]
    return next((k for k, names in enumerate(layers) if key in names), None)


def test_the_readme_layers_hold():
    layers = readme_layers()
    assert len(layers) >= 5 and ["planning"] in layers
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m, layers) is None)
    assert not unplaced, f"modules the README's Layout does not place: {unplaced}"
    upward = [f"{a} (layer {layer_of(a, layers)}) imports {b} (layer {layer_of(b, layers)})"
              for a, b in graph.edges if layer_of(b, layers) > layer_of(a, layers)]
    assert not upward, "imports against the README's layers:\n" + "\n".join(upward)


def test_benchmarks_are_a_package_without_path_tricks():
    """Each benchmark script is a module of the ``benchmarks`` package (``python -m
    benchmarks.NAME``): none edits ``sys.path``, and one script reaches another's helpers only
    through the package (``benchmarks.common`` above all)."""
    folder = ROOT / "benchmarks"
    assert (folder / "__init__.py").is_file()
    scripts = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    offenders = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                offenders.append(f"{path.name}:{node.lineno} touches sys.path")
            if isinstance(node, ast.ImportFrom) and not node.level and \
                    (node.module or "").split(".")[0] in scripts:
                offenders.append(f"{path.name}:{node.lineno} imports {node.module} by file name")
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}:{node.lineno} imports {a.name} by file name"
                              for a in node.names if a.name.split(".")[0] in scripts]
    assert not offenders, "\n".join(offenders)
