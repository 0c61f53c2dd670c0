"""The package's layers: the runtime import graph between libra_ray's top-level parts has no cycle, and
every import goes to the same layer or one below (the diagram in README, "Package layout").

A top-level part is a sub-package (`libra_ray/bench/`) or a module (`libra_ray/cli.py`). Every import
counts, function-level lazy ones too (a lazy import is still a dependency); only imports under
`if TYPE_CHECKING:` are ignored (annotations, never executed). Parsed with `ast`: nothing is imported.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "libra_ray"

# Bottom-up; keep in step with README.md ("Package layout / import graph").
LAYERS: list[set[str]] = [
    {"__init__", "_config_base", "credentials", "storage", "facts", "embeddings", "runtime"},  # foundations
    {"policy", "llm", "engines"},
    {"seeds"},
    {"tiny"},
    {"synth", "train", "serve", "bench"},  # the stages
    {"endpoints"},
    {"config"},
    {"cli", "submit", "deploy", "testing", "gpucheck"},
]
FOUNDATIONS = LAYERS[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_modules(tree: ast.AST, module: list[str]) -> list[tuple[str, int]]:
    """(dotted libra_ray module, line) for every import outside `if TYPE_CHECKING:` blocks."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the `else:` branch runs
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "libra_ray")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = ["libra_ray", *module[:len(module) - node.level + 1]]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "libra_ray":
                if name == "libra_ray":  # `from libra_ray import bench`: the names are the parts
                    out.extend((f"libra_ray.{a.name}", node.lineno) for a in node.names)
                else:
                    out.append((name, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """{part: {imported part: ["file:line", ...]}} over libra_ray's top-level parts."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("").parts
        part = rel[0]
        module = list(rel[:-1])  # the package a relative import resolves against
        graph.setdefault(part, defaultdict(list))
        for name, line in _imported_modules(ast.parse(path.read_text(encoding="utf-8")), module):
            target = name.split(".")[1] if "." in name else "__init__"
            if target != part:
                graph[part][target].append(f"{path.relative_to(package.parent)}:{line}")
    return graph


def graph_of(package: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """`import_graph` computed in a fresh interpreter: in the full suite, CPython 3.11.7's `ast.parse` raised
    "SystemError: AST constructor recursion depth mismatch" (state left behind by earlier tests), never alone."""
    out = subprocess.run([sys.executable, __file__, str(package)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def find_cycle(edges: dict[str, set[str]] | dict[str, dict]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := dfs(start)):
            return found
    return None


def _where(graph: dict, cycle: list[str]) -> str:
    return "; ".join(f"{a} -> {b} at {', '.join(graph[a][b][:3])}" for a, b in zip(cycle, cycle[1:]))


def test_the_cycle_finder_names_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b"}}) == ["b", "b"]


def test_the_graph_sees_lazy_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "libra_ray"
    (pkg / "bench").mkdir(parents=True)
    (pkg / "bench" / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from libra_ray.config import X\n"
        "def f():\n    from libra_ray.synth.pipeline import g\n    from . import rules\n")
    (pkg / "bench" / "rules.py").write_text("from ..policy import rules\nfrom .judge import j\n")
    (pkg / "cli.py").write_text("from libra_ray import bench, seeds\nimport libra_ray.config\n")
    graph = graph_of(pkg)
    assert {k: sorted(v) for k, v in graph.items() if v} == {"bench": ["policy", "synth"],
                                                            "cli": ["bench", "config", "seeds"]}


def test_no_import_cycle_between_top_level_parts():
    graph = graph_of()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)} ({_where(graph, cycle)})"


def test_every_import_goes_to_the_same_layer_or_below():
    graph = graph_of()
    layer = {part: i for i, parts in enumerate(LAYERS) for part in parts}
    unplaced = sorted(set(graph) - set(layer))
    assert not unplaced, f"new top-level part(s) {unplaced}: place them in LAYERS here and in README.md"
    upward = [f"{a} -> {b} at {', '.join(graph[a][b][:3])}" for a in sorted(graph) for b in sorted(graph[a])
              if layer[b] > layer[a]]
    assert not upward, "imports that go up a layer: " + "; ".join(upward)


def test_llm_is_a_pure_client():
    """`libra_ray.llm` imports foundations only: starting endpoints lives in `libra_ray.endpoints`."""
    graph = graph_of()
    stages = {b: where for b, where in graph["llm"].items() if b not in FOUNDATIONS}
    assert not stages, f"libra_ray.llm imports {sorted(stages)} ({stages})"


def test_the_cli_gives_the_stages_that_call_endpoints_the_opener():
    """Stages never import `libra_ray.endpoints` (it sits above them): the CLI passes it in."""
    from libra_ray.cli import stage_runner
    from libra_ray.endpoints import open_endpoint

    for stage in ("synth", "bench"):
        assert stage_runner(stage).keywords == {"open_endpoint": open_endpoint}
    assert not hasattr(stage_runner("train"), "keywords")


if __name__ == "__main__":  # used by `graph_of`
    print(json.dumps(import_graph(Path(sys.argv[1]))))
