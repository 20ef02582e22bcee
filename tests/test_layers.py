"""The package's layers: no import cycle inside `aif/`, and every DVC stage depends on exactly
the package modules its entry point imports, so a code change reruns what it affects."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml
from conftest import REPO

PACKAGE = REPO / "aif"


def module_file(name: str) -> Path | None:
    "The file of module `aif.x.y` (a module or a package), None outside the package."
    if name != "aif" and not name.startswith("aif."):
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, importer: str, is_package: bool) -> set[str]:
    """Every package module `source` imports, wherever the import stands (inside functions
    too), and every `importlib.import_module` call with a literal name."""
    found = set()
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)   # `from pkg import module`
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args and isinstance(
                node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found.add(node.args[0].value)
        elif isinstance(node, ast.Dict):   # the CLI's table of stage modules
            for value in node.values:
                first = value.elts[0] if isinstance(value, ast.Tuple) and value.elts else None
                if isinstance(first, ast.Constant) and str(first.value).startswith("aif."):
                    found.add(first.value)
    return {n for n in found if module_file(n) is not None}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_modidx.py":
            continue
        name = module_name(path)
        graph[name] = imported(path.read_text(), name, path.name == "__init__.py") - {name}
    return graph


def with_parents(names: set[str]) -> set[str]:
    "Importing `aif.a.b` runs `aif/__init__.py` and `aif/a/__init__.py` first."
    out = set(names)
    for n in names:
        parts = n.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def closure(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(with_parents(start))
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(with_parents(graph.get(n, set())) - seen)
    return seen


def runs_code(name: str) -> bool:
    "False for a module whose only statement is its docstring (nbdev's package `__init__`)."
    body = ast.parse(module_file(name).read_text()).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    "Every strongly connected group of more than one module (Tarjan)."
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def stage_modules(stage: dict, commands: dict[str, str]) -> set[str]:
    "The package modules a DVC stage's command runs: its entry module, and a notebook's imports."
    command = stage["cmd"].split()
    start = {commands[command[1]]} if command[0] == "aif" else set()
    for dep in stage.get("deps", []):
        if str(dep).endswith(".ipynb"):
            cells = json.loads((REPO / dep).read_text())["cells"]
            code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
            start |= imported(code, "__main__", False)
    return start


def cli_commands() -> dict[str, str]:
    from aif.cli import COMMANDS

    return {name: module for name, (module, _) in COMMANDS.items()}


def test_the_import_graph_is_read_whole():
    graph = import_graph()
    # a few edges any reader can check by opening the files
    assert "aif.features.specs" in graph["aif.features.engine"]
    assert "aif.modelling.model" in graph["aif.serve.model"]
    assert "aif.data.simulate" in graph["aif.cli"]               # from the CLI's table
    assert "aif.lifecycle.retrain" in graph["aif.cli"]           # an import inside a function


def test_cycle_finder_sees_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = "def f():\n    import importlib\n    importlib.import_module('aif.cli')\n"
    assert imported(source, "aif.x", False) == {"aif.cli"}


def test_no_import_cycle_inside_the_package():
    assert cycles(import_graph()) == []


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    """Deps are files, not package folders: a folder would rerun every stage under it for any
    change to a sibling module (the Dask engine reran featurize for a local-engine fix), and a
    file list is what this test can check against the imports."""
    graph, commands = import_graph(), cli_commands()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in stages.items():
        deps = {str(d) for d in stage.get("deps", [])}
        folders = sorted(d for d in deps if d.startswith("aif") and (REPO / d).is_dir())
        if folders:
            problems.append(f"{name}: depends on package folders {folders}; list the modules")
        needed = {str(module_file(m).relative_to(REPO))
                  for m in closure(stage_modules(stage, commands), graph) if runs_code(m)}
        listed = {d for d in deps if d.startswith("aif/")}
        if needed - listed:
            problems.append(f"{name}: dvc.yaml lacks {sorted(needed - listed)}")
        if listed - needed:
            problems.append(f"{name}: dvc.yaml lists {sorted(listed - needed)}, not imported")
    assert not problems, "\n".join(problems)
