"""A real plugin distribution for the tests: a module and its dist-info with an ``image2prompt.plugins``
entry point, in a folder a subprocess puts on its PYTHONPATH (importlib.metadata then finds it)."""

from __future__ import annotations

from pathlib import Path


def make_plugin_site(root: Path, module: str, source: str, entry: str) -> Path:
    """``root`` holding ``module``.py (``source``) and its dist-info, registering it as ``entry``."""
    (root / f"{module}.py").write_text(source, encoding="utf-8")
    dist = module.replace("_", "-")
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[image2prompt.plugins]\n{entry} = {module}\n", encoding="utf-8")
    return root
