"""The package's architecture, as a reader can check it: every import of every module
goes down the layers of :mod:`pyro_stcn.architecture` (or stays in its layer), no module
imports itself through others, no module is over 400 lines, and no library file reads
a test switch from the environment."""

import ast
import re
from pathlib import Path

import pytest

from pyro_stcn.architecture import LAYERS, layer_of

ROOT = Path(__file__).parents[1]
# Where each installed package's files are: models/ and guides/ install inside pyro_stcn.
SOURCES = {"pyro_stcn": ROOT / "pyro_stcn", "pyro_stcn.models": ROOT / "models", "pyro_stcn.guides": ROOT / "guides"}


def modules() -> dict[str, Path]:
    """Every library module by its dotted name."""
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(source: str, module: str, is_package: bool, known: set[str], top_level_only: bool = False) -> set[str]:
    """The ``pyro_stcn`` modules that ``source`` (module ``module``) imports: every import
    statement, or those run when the module is (not inside functions) with ``top_level_only``."""
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name == "pyro_stcn" or name.startswith("pyro_stcn.")}
    return found - {module}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a layer above its own."""
    return [f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
            for source, targets in graph.items() for target in sorted(targets)
            if layer_of(target) > layer_of(source)]  # fmt: skip


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles: paths of modules that lead back to their first."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def graph_of(top_level_only: bool = False) -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path.read_text(), name, path.name == "__init__.py", known, top_level_only)
            for name, path in found.items()}  # fmt: skip


def test_every_import_goes_down_the_layers():
    assert violations(graph_of()) == []


def test_the_check_sees_an_import_from_a_higher_layer():
    source = "from pyro_stcn.runs.api import load_run\n\ndef f():\n    from pyro_stcn.cli import main\n"
    found = imports(source, "pyro_stcn.nets.heads", False, {"pyro_stcn.runs.api", "pyro_stcn.cli"})
    assert found == {"pyro_stcn.runs.api", "pyro_stcn.cli"}
    assert violations({"pyro_stcn.nets.heads": found}) == [
        "pyro_stcn.nets.heads (nets) imports pyro_stcn.cli (command line)",
        "pyro_stcn.nets.heads (nets) imports pyro_stcn.runs.api (runs)",
    ]
    assert violations({"pyro_stcn.cli.train": {"pyro_stcn.runs.api", "pyro_stcn.nets"}}) == []


def test_no_module_imports_itself_through_others():
    assert cycles(graph_of(top_level_only=True)) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)
    with pytest.raises(ValueError, match="in no layer"):
        layer_of("pyro_stcn.elsewhere")


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_400_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= 400, f"{name} has {lines} lines"


def test_no_library_file_reads_a_test_switch():
    pattern = re.compile(r"environ[^\n]*(TEST|HOOK)|getenv\([^)]*(TEST|HOOK)")
    readers = [name for name, path in modules().items() if pattern.search(path.read_text())]
    assert readers == []
