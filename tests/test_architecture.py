"""The package keeps the shape docs/architecture.md draws: every import (inside functions too) goes to the
importer's layer or a lower one, no modules import each other in a circle, no module is over 400 lines
and no function over 60."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgeship"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _layers() -> dict[str, int]:
    """Module prefix -> layer number, from the table in docs/architecture.md."""
    layers = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        row = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if row:
            for name in re.findall(r"`([\w.]+)`", row.group(2)):
                layers[name] = int(row.group(1))
    return layers


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def _layer(name: str, layers: dict[str, int]) -> int | None:
    """The layer of the longest table prefix of `name` (the bare package name matches only itself)."""
    best = None
    for prefix, layer in layers.items():
        if name == prefix or (prefix != "edgeship" and name.startswith(prefix + ".")):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def test_every_module_has_a_layer() -> None:
    layers = _layers()
    assert len(layers) > 10, "docs/architecture.md lost its layer table"
    missing = sorted(name for name in _modules() if _layer(name, layers) is None)
    assert not missing, f"modules with no layer in docs/architecture.md: {missing}"


def _upward(modules: dict[str, Path], layers: dict[str, int], known: dict[str, Path]) -> list[str]:
    """`importer (layer) imports imported (layer)` for each import of `modules` that goes to a higher layer."""
    return [f"{name} (layer {_layer(name, layers)}) imports {dep} (layer {_layer(dep, layers)})"
            for name, path in sorted(modules.items()) for dep in sorted(_imports(name, path, known))
            if (_layer(dep, layers) or 0) > (_layer(name, layers) or 0)]


def test_no_module_imports_a_higher_layer() -> None:
    layers, modules = _layers(), _modules()
    upward = _upward(modules, layers, modules)
    assert not upward, "\n".join(upward)


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    circles = []
    for start in sorted(graph):  # a circle through `start`: `start` is reachable from what it imports
        seen, todo = set(), list(graph[start])
        while todo:
            current = todo.pop()
            if current == start:
                circles.append(start)
                break
            if current not in seen:
                seen.add(current)
                todo += graph[current]
    assert not circles, f"modules on an import circle: {circles}"


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_checks_see_a_violation(tmp_path) -> None:
    """The checks on a known case: a quantize module that imports a flow inside a function is caught."""
    layers, modules = _layers(), _modules()
    assert _layer("edgeship.quantize.calibrate", layers) < _layer("edgeship.flows.export", layers)
    assert _layer("edgeship.unknown", layers) is None
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from edgeship.flows import export\n")
    found = _upward({"edgeship.quantize.fake": fake}, layers, modules)
    assert found and all("edgeship.quantize.fake" in f and "edgeship.flows" in f for f in found)
