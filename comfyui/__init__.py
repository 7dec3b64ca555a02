"""ComfyUI custom nodes for Ruyi (see README, "Use in ComfyUI").

ComfyUI imports this package when ``ComfyUI/custom_nodes/<name>`` is this folder (a symlink or a
copy) or when a root-level shim re-exports it. Importing it does not need ComfyUI.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
