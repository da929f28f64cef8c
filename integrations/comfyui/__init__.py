"""image2prompt for ComfyUI: the Interrogate and Analyze nodes.

ComfyUI imports this file as a module when the folder is in ``ComfyUI/custom_nodes/``;
the nodes themselves are in ``nodes.py`` and the prompt display in ``web/``.
"""

from __future__ import annotations

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ModuleNotFoundError as err:
    if (err.name or "").split(".")[0] != "image2prompt":
        raise
    raise ImportError("the image2prompt library is not installed in ComfyUI's Python environment; "
                      "install it with: pip install -r requirements.txt (in this node's folder)") from None

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
