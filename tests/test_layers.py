"""The layers point one way, and torch is imported only in models/ (read from the source, no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "src" / "image2prompt"

#: Each layer and the layers it may import (besides itself): the table in docs/architecture.md, kept
#: equal to it by test_the_document_states_these_rules. Lower layers never import upper ones.
BASE = {"errors", "syntax", "settings", "results", "features", "hub", "spreadsheet", "__version__"}
FACADE = {"__init__", "__main__"}  # the package's public face may name anything
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "io": {"base"},
    "vocab": {"base"},
    "cache": {"base", "vocab"},
    "models": {"base"},
    "search": {"base"},
    "prompt": {"base"},
    "index": {"base", "vocab", "cache"},
    "identity": {"base", "vocab", "models"},
    "modes": {"base", "vocab", "cache", "index", "search", "prompt", "models"},
    "interrogator": {"base", "vocab", "cache", "index", "search", "prompt", "modes", "models", "identity"},
    "render": {"base", "prompt"},
    "catalogue": {"base", "models", "modes"},
    "work": {"base"},
    "runner": {"base", "io", "interrogator", "modes", "work"},
    "service": {"base", "io", "interrogator", "modes", "work"},
    "batch": {"base", "io", "vocab", "models", "identity", "interrogator", "render", "runner", "modes", "work"},
    "server": {"base", "io", "modes", "prompt", "interrogator", "render", "batch", "service", "catalogue"},
    "report": {"base", "io", "batch"},
    "cli": {"base", "io", "vocab", "cache", "models", "interrogator", "render", "runner", "modes", "prompt",
            "batch", "service", "server", "report", "catalogue"},
}


def layer_of(module: str) -> str:
    """'image2prompt.models.clip' -> 'models'; root modules in BASE -> 'base'."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    return "base" if head in BASE else "facade" if head in FACADE else head


def imports_of(path: Path) -> list[str]:
    rel = path.relative_to(PKG.parent).with_suffix("")
    module = ".".join(rel.parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = module.rsplit(".", 1)[0] if module.endswith("__init__") else module
    out: list[str] = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # names for type checkers only: not imported at run time
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
                out += [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif node.module:
                out.append(node.module)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def test_layers_point_one_way():
    wrong = []
    for path in modules():
        own = layer_of(".".join(path.relative_to(PKG.parent).with_suffix("").parts).replace(".__init__", ""))
        for target in imports_of(path):
            if not target.startswith("image2prompt"):
                continue
            other = layer_of(target)
            if own != "facade" and other != own and other not in ALLOWED[own]:
                wrong.append(f"{path.relative_to(PKG)} ({own}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("heavy", ["torch", "open_clip", "transformers"])
def test_only_models_import_torch(heavy):
    wrong = [str(p.relative_to(PKG)) for p in modules()
             if p.parent.name != "models" and any(t == heavy or t.startswith(heavy + ".") for t in imports_of(p))]
    assert not wrong, wrong


def test_registry_imports_no_torch_at_module_level():
    tree = ast.parse((PKG / "models" / "_registry.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("torch", "open_clip", "transformers")]


def test_the_document_states_these_rules():
    """docs/architecture.md's layer table and ALLOWED are the same rules."""
    doc = (PKG.parent.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = {}
    for line in doc.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 2:
            table[cells[0]] = {c.strip().strip("`") for c in cells[1].split(",") if c.strip() not in ("", "-")}
    assert table == ALLOWED
