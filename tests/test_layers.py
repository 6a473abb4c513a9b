"""The package's architecture holds: every import in coa_lora/ goes along the layer diagram of coa_lora/__init__.py
(to its own layer or a lower one), no modules import each other round a circle, and the app and the notebooks use
only the public API (``coa_lora`` and its sub-packages' ``__all__``)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "coa_lora"
# Lowest first; the same order as the diagram in coa_lora/__init__.py. A top-level name is a sub-package or a module.
LAYERS = [
    {"storage", "progress", "distributed", "model_queue", "exports"},
    {"quant"},
    {"configs"},
    {"models", "runs"},
    {"search"},
    {"lora"},
    {"evaluation"},
    {"deploy"},
    {"plots", "explorer", "compare", "commands", "cli", "__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every coa_lora module ``path`` imports, at the top or inside a function (``from X import y`` counts as
    ``X.y`` when that is a module)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    here = module_name(path).split(".")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "coa_lora"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "coa_lora":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if _is_module(sub) else target)
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in RANK, f"{module} is in no layer of the diagram; add it to coa_lora/__init__.py and LAYERS"
    return RANK[top]


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_imports_follow_the_layer_diagram():
    wrong = [f"{m} imports {t}" for m, targets in graph().items() for t in targets
             if layer_of(t) > layer_of(m) and not m.startswith("coa_lora.__")]
    assert not wrong, "imports against the layer diagram: " + "; ".join(wrong)


def test_no_import_cycles():
    # Package __init__ files re-export their own modules, and the root one every layer: edges out of them are the
    # public API, not dependencies; what modules import from a package's __init__ is counted as that package.
    g = {m: {t for t in ts if t != m} for m, ts in graph().items() if not Path(*m.split(".")).name == "__init__"}
    g = {m: ts for m, ts in g.items() if not (ROOT / Path(*m.split(".")) / "__init__.py").is_file()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node}->{nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_cycle_test_finds_a_cycle(tmp_path):
    """The walker itself: a two-module circle written to a scratch package is found."""
    pkg = tmp_path / "coa_lora"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "storage.py").write_text("from coa_lora.progress import x\n")
    (pkg / "progress.py").write_text("def f():\n    from coa_lora import storage\n")
    globals_ = globals()
    old_root, old_pkg = globals_["ROOT"], globals_["PACKAGE"]
    globals_["ROOT"], globals_["PACKAGE"] = tmp_path, pkg
    try:
        with pytest.raises(AssertionError, match="coa_lora.progress"):
            test_no_import_cycles()
    finally:
        globals_["ROOT"], globals_["PACKAGE"] = old_root, old_pkg


def public_api() -> dict[str, set[str]]:
    api = {"coa_lora": set(importlib.import_module("coa_lora").__all__)}
    for init in PACKAGE.glob("*/__init__.py"):
        name = module_name(init)
        api[name] = set(importlib.import_module(name).__all__)
    return api


def user_imports(path: Path) -> list[tuple[str, str]]:
    source = path.read_text()
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "coa_lora":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "coa_lora"]
    return out


@pytest.mark.parametrize("folder", ["app", "notebooks"])
def test_app_and_notebooks_use_only_the_public_api(folder):
    api = public_api()
    wrong = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for module, name in user_imports(path):
            public = module in api and (name in api[module] or f"{module}.{name}" in api)
            if not public:
                wrong.append(f"{path.name}: from {module} import {name or '*'}")
    assert not wrong, "not in the public API: " + "; ".join(wrong)
