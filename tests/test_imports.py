"""The package's import graph, read statically (imports inside functions count too): no cycles,
`rl/` and `envs/` import nothing of the layers above, no library module imports the CLI, and no
module outside `envs/` names an env or imports an env's package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "gtr_turbo_jax"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (`from pkg import name` counts `pkg.name` when
    that is a module, else `pkg`). A module's own parent packages are left out: importing a
    submodule runs them first anyway, and their `__init__` re-exports are not a dependency."""
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        graph[name] = {
            t
            for t in imports_of(path)
            if t in modules and t != name and not name.startswith(t + ".")
            and modules[t].name != "__init__.py"
        }  # fmt: skip
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    assert cycles(graph) == []


def test_cycle_detection_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_rl_stands_alone_and_the_library_never_imports_the_cli():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("gtr_turbo_jax.rl"):
            assert all(t.startswith("gtr_turbo_jax.rl") for t in targets), (name, targets)
        if name not in ("gtr_turbo_jax.cli", "gtr_turbo_jax.__main__"):
            assert "gtr_turbo_jax.cli" not in targets, name


def test_envs_import_nothing_of_the_layers_above():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("gtr_turbo_jax.envs"):
            assert all(t.startswith("gtr_turbo_jax.envs") for t in targets), (name, targets)


def imports_of(path: Path) -> set[str]:
    """What one file imports (`from pkg import a` counts `pkg` and `pkg.a`)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return targets


def test_only_envs_know_an_env_by_name():
    """The layers above ask an env through its `AgentSpec`: no module outside `envs/` holds a
    shipped env's name as a string, nor imports an env's own package."""
    from gtr_turbo_jax.envs import ENVS

    packages = {module for module, _, _ in ENVS.values()}  # gtr_turbo_jax.envs.sokoban, ...
    above = {n: p for n, p in module_names().items() if not n.startswith("gtr_turbo_jax.envs")}
    assert len(above) > 40  # the layers above were read
    named, imported = [], []
    for name, path in above.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ENVS:
                named.append(f"{name}:{node.lineno} {node.value!r}")
        for target in imports_of(path):
            if any(target == p or target.startswith(p + ".") for p in packages):
                imported.append(f"{name} imports {target}")
    assert named == []
    assert imported == []
