"""The package's import graph: every import, at module level or inside a function, read from the
source with `ast`, must leave the modules without a cycle."""
import ast
import os

import estimator_gan

PACKAGE_DIR = os.path.dirname(estimator_gan.__file__)


def _modules() -> dict:
    """Dotted module name -> source path, for every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE_DIR))
                dotted = rel[:-3].replace(os.sep, ".")
                out[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = \
                    os.path.join(root, name)
    return out


def import_graph() -> dict:
    """Module -> the package's modules it imports (a package's `__init__` counts as the package)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        package = module if is_package else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names]
            else:
                continue
            targets.update(n for n in names if n in modules and n != module)
        graph[module] = targets
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_package_imports_have_no_cycle():
    graph = import_graph()
    assert {"estimator_gan.model.gan", "estimator_gan.runtime.loop", "estimator_gan.config"} <= set(graph)
    assert "estimator_gan.model.networks" in graph["estimator_gan.model.gan"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
