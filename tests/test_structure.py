"""The shape of the code: no import cycle among our modules, and no import of our own modules
hidden inside a function (the way cycles used to be dodged)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed names of the source folders (pyproject's package-dir, and jaxllm's subpackages).
PACKAGES = {"jaxllm": "jaxllm", "jaxllm/serving": "jaxllm.serving", "jaxllm/api": "jaxllm.api", "models": "jaxllm.models",
            "sharding": "jaxllm.sharding"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


MODULES = _modules()


def _package(path: Path) -> str:
    return next(name for name, p in MODULES.items() if p == path).rpartition(".")[0] if path.stem != "__init__" else \
        next(name for name, p in MODULES.items() if p == path)


def _targets(node: ast.AST, package: str) -> list[str]:
    """Our modules an import statement in `package` names (`from jaxllm import x` names jaxllm.x
    when x is a module, else the package itself; `from . import x` is read from `package`)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
        base = package.rsplit(".", node.level - 1)[0] if node.level else ""
        module = ".".join(p for p in (base, node.module or "") if p)
        names = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
    else:
        return []
    return [n for n in names if n in MODULES]


def _top_level_imports(path: Path) -> set[str]:
    """What importing the module imports: its top level, `if` and `try` blocks included, but not an
    `if __name__ == "__main__":` block, which runs only when the module is the program (python -m),
    as `__main__`, so what it imports cannot come back to it as an import cycle, nor an `if TYPE_CHECKING:`
    block, which never runs (annotations only)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            out.update(_targets(sub, _package(path)))
    return out


def _function_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                found += [f"{path.name}:{node.lineno} {t}" for t in _targets(node, _package(path))]
    return found


def test_there_are_modules_to_check():
    assert {"jaxllm.loader", "jaxllm.serving.runner", "jaxllm.api.app", "jaxllm.api.protocol", "jaxllm.models.decoder", "jaxllm.sharding.rules"} <= set(MODULES)


def test_no_import_cycle_among_our_modules():
    graph = {name: _top_level_imports(path) - {"jaxllm"} for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(name, path):
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_function_level_import_of_our_modules():
    found = [hit for path in MODULES.values() for hit in _function_imports(path)]
    assert found == []
