"""The import graph of `api` and `keys`: layers point one way. `python tests/test_layers.py` prints it."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("api", "keys")


def import_graph():
    """Return {module: sorted modules of api and keys it imports}, from the source files."""
    graph = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            module = f"{package}.{path.stem}"
            imported = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = package if node.level else node.module or ""
                    if node.level and node.module:
                        base = f"{package}.{node.module}"
                    imported.update(
                        f"{base}.{alias.name}" if f"{base}.{alias.name}" in _modules() else base
                        for alias in node.names
                    )
            graph[module] = sorted(m for m in imported if m.split(".")[0] in PACKAGES and m != module)
    return graph


def _modules():
    return {f"{p}.{path.stem}" for p in PACKAGES for path in (ROOT / p).glob("*.py")}


def test_keys_never_imports_api():
    wrong = {module: deps for module, deps in import_graph().items() if module.startswith("keys.")}
    wrong = {module: [d for d in deps if d.startswith("api")] for module, deps in wrong.items()}
    assert {m: d for m, d in wrong.items() if d} == {}


def test_the_graph_has_no_cycles():
    graph = import_graph()
    done, path = set(), []

    def visit(module):
        assert module not in path, f"import cycle: {' -> '.join([*path[path.index(module) :], module])}"
        if module in done:
            return
        path.append(module)
        for dep in graph.get(module, ()):
            visit(dep)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_the_graph_sees_the_imports():
    """The walker itself: it finds a known edge of each package, so the checks above are not vacuous."""
    graph = import_graph()
    assert "keys.records" in graph["keys.store"]
    assert "api.store" in graph["api.concurrency"] and "keys.jws" in graph["api.tokens"]


if __name__ == "__main__":
    for module, deps in import_graph().items():
        print(f"{module:22} -> {', '.join(deps) or '-'}")
