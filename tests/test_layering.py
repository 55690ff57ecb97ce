"""The package's layers, read from its import statements (ast, nothing imported): no cycle, the
XenStore vocabulary at the bottom, clients and server side by side, the core below the rest.

Every ``import`` counts, including those inside functions (a lazy import is still a
dependency). ``__main__`` modules are entry points: nothing imports them, so they sit above
everything and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xenoffload"
#: The bottom layer: XenStore's values, errors, wire codec, requests and rules.
VOCABULARY = "xenoffload.xs"
#: The protocol core: pure functions and state machines, no store adapter, agent or command.
CORE = ("xenoffload.xenbus", "xenoffload.schema", "xenoffload.negotiation", "xenoffload.machine",
        "xenoffload.policy", "xenoffload.paths", "xenoffload.overrides", "xenoffload.xapi")
#: Drivers: one vif end's I/O, enforcement, override storage; below the agents and commands.
DRIVERS = ("xenoffload.endpoint", "xenoffload.enforce", "xenoffload.override_store",
           "xenoffload.devicelog", "xenoffload.vifends",
           "xenoffload.toggles")
#: What wires the layers below into processes: nothing under them imports these.
TOP = ("xenoffload.agents", "xenoffload.cli", "xenoffload.demo", "xenoffload.hotplug",
       "xenoffload.show", "xenoffload.conformance", "xenoffload.units")
#: What the core may not import.
ABOVE_CORE = ("xenoffload.store", "xenoffload.xenstored", "xenoffload.agents", "xenoffload.cli",
              "xenoffload.toggles", "xenoffload.conformance", "xenoffload.demo",
              "xenoffload.hotplug", "xenoffload.show", "xenoffload.toolstack")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every xenoffload module ``module`` (at ``path``) imports: ``import a.b`` is ``a.b``;
    ``from a import b`` is ``a.b`` when that is a module, else ``a`` (a name defined there).
    A name that is neither resolves to the nearest enclosing module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    resolved = set()
    for name in found:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("xenoffload") and name != module:
            resolved.add(name)
    return resolved


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {module: _imports(path, module, set(paths)) for module, path in paths.items()
            if not module.endswith("__main__")}


def _within(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_is_read_from_the_real_package() -> None:
    graph = _graph()
    assert "xenoffload.xs.model" in graph["xenoffload.store.memory"]
    assert "xenoffload.xs.wire" in graph["xenoffload.xenstored.server"]
    assert "xenoffload.xenstored.daemon" in graph["xenoffload.cli"]  # a lazy import counts


def test_the_module_graph_has_no_cycle() -> None:
    assert _cycle(_graph()) is None


def test_package_level_graph_has_no_cycle() -> None:
    """Subpackages as single nodes (xs, store, xenstored, agents, ...) have no cycle either."""
    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        packages.setdefault(top(module), set()).update(
            top(target) for target in targets if top(target) != top(module))
    assert _cycle(packages) is None


def test_the_vocabulary_imports_nothing_else_of_the_package() -> None:
    for module, targets in _graph().items():
        if _within(module, VOCABULARY):
            outside = {t for t in targets if not _within(t, VOCABULARY)}
            assert not outside, f"{module} imports {outside}"


def test_store_and_server_do_not_import_each_other() -> None:
    for module, targets in _graph().items():
        if _within(module, "xenoffload.store"):
            assert not {t for t in targets if _within(t, "xenoffload.xenstored")}, module
        if _within(module, "xenoffload.xenstored"):
            assert not {t for t in targets if _within(t, "xenoffload.store")}, module


def test_core_modules_import_no_adapter_agent_or_command() -> None:
    graph = _graph()
    for module in CORE:
        above = {t for t in graph[module] if any(_within(t, layer) for layer in ABOVE_CORE)}
        assert not above, f"{module} imports {above}"


def test_core_modules_import_only_the_core() -> None:
    graph = _graph()
    for module in CORE:
        outside = {t for t in graph[module] if t not in CORE}
        assert not outside, f"{module} imports {outside}"


def test_drivers_import_no_agent_or_command() -> None:
    for module, targets in _graph().items():
        if any(_within(module, layer) for layer in DRIVERS):
            above = {t for t in targets if any(_within(t, layer) for layer in TOP)}
            assert not above, f"{module} imports {above}"


def test_agents_import_no_command() -> None:
    for module, targets in _graph().items():
        if _within(module, "xenoffload.agents"):
            above = {t for t in targets if any(_within(t, layer) for layer in TOP)
                     and not _within(t, "xenoffload.agents")}
            assert not above, f"{module} imports {above}"


def test_the_product_does_not_depend_on_the_conformance_suite() -> None:
    """Only the ``conformance`` command reaches into the suite; the agents' device channel
    (``--device-log``) is the product's own module, which the suite reads."""
    for module, targets in _graph().items():
        if _within(module, "xenoffload.conformance") or module == "xenoffload.cli":
            continue
        suite = {t for t in targets if _within(t, "xenoffload.conformance")}
        assert not suite, f"{module} imports {suite}"
    cli_source = (PACKAGE / "cli.py").read_text(encoding="utf-8")
    uses = [line.strip() for line in cli_source.splitlines()
            if "xenoffload.conformance" in line and "import" in line]
    assert all("conformance.command" in line or "conformance.runner" in line
               for line in uses), uses


def test_a_cycle_would_be_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
