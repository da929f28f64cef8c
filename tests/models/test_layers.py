"""Layers inside image2prompt.models point one way (read off the source, nothing imported)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import image2prompt.models

MODELS = Path(image2prompt.models.__file__).parent
PKG = "image2prompt.models"


def imports_of(path: Path, module_level: bool = False) -> set[str]:
    """Absolute names of the modules ``path`` imports: anywhere in the file, or only
    those run when it is imported (module level, outside ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if not module_level else [
        n for top in tree.body if not (isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test))
        for n in ([top] if not isinstance(top, (ast.Try, ast.If)) else ast.walk(top))
    ]
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = PKG.split(".")[: len(PKG.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            if not node.module:  # from . import x
                out.update(f"{mod}.{a.name}" for a in node.names)
    return out


GRAPH = {p.stem: imports_of(p) for p in MODELS.glob("*.py")}


def test_models_do_not_import_the_prompt_layer():
    for module, deps in GRAPH.items():
        bad = sorted(d for d in deps if d == "image2prompt.prompt" or d.startswith("image2prompt.prompt."))
        assert not bad, f"models/{module}.py imports {bad}"


def test_clip_and_prefix_import_one_way():
    assert f"{PKG}.clip" not in GRAPH["prefix"]
    assert f"{PKG}.batching" in GRAPH["prefix"]
    assert f"{PKG}.syntax" not in GRAPH["clip"] and "image2prompt.syntax" in GRAPH["clip"]


def test_captioners_do_not_import_the_clip_module():
    assert f"{PKG}.clip" not in GRAPH["captioners"] and f"{PKG}.prefix" not in GRAPH["captioners"]
    assert f"{PKG}.loading" in GRAPH["captioners"] and f"{PKG}.loading" in GRAPH["clip"]


def test_no_import_cycles_inside_models():
    local = {m: {d[len(PKG) + 1:] for d in deps if d.startswith(PKG + ".")} & set(GRAPH) for m, deps in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        assert state.get(m) != 1, f"import cycle: {' -> '.join(path + [m])}"
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(local[m]):
            visit(d, path + [m])
        state[m] = 2

    for m in sorted(local):
        visit(m, [])


def test_light_modules_import_nothing_heavy():
    heavy = ("torch", "open_clip", "transformers", "safetensors")
    for module in ("_registry", "batching", "loading", "tokenizers", "retype", "__init__"):
        top = {d.split(".")[0] for d in imports_of(MODELS / f"{module}.py", module_level=True)}
        assert not top & set(heavy), f"models/{module}.py imports {sorted(top & set(heavy))}"


def test_the_registry_parses_open_clip_names_without_torch():
    code = (
        "import sys, image2prompt.models._registry as r\n"
        "spec = r.parse_clip_name('ViT-B-32/openai')\n"
        "assert spec.backend == 'open_clip' and spec.pretrained == 'openai', spec\n"
        "names = r.open_clip_names()\n"
        "assert names and 'ViT-L-14/openai' in names, names\n"
        "assert ('ViT-B-32', 'openai') in r.known_open_clip_pairs()\n"
        "heavy = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_torch_free_table_equals_open_clips_own():
    import open_clip

    from image2prompt.models._registry import open_clip_names

    assert open_clip_names() == [f"{a}/{t}" for a, t in open_clip.list_pretrained()]
