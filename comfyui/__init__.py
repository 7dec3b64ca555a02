"""ComfyUI node pack for Ruyi image-to-video (see README, "Use in ComfyUI").

ComfyUI imports this package when ``ComfyUI/custom_nodes/<name>`` links to this folder; do not name
it ``ruyi`` (ComfyUI registers it in ``sys.modules`` under that name, shadowing the framework).
Importing it does not need ComfyUI; the ``ruyi`` package must be installed (``pip install -e``).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
