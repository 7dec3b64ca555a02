"""ComfyUI node pack for Ruyi image-to-video (see README, "Use in ComfyUI").

ComfyUI imports this package when ``ComfyUI/custom_nodes/<name>`` links to this folder; do not name
it ``ruyi`` (ComfyUI registers it in ``sys.modules`` under that name, shadowing the framework).
Importing it does not need ComfyUI; the ``ruyi`` package must be installed (``pip install -e``).
"""

from .keyframes import Ruyi_Keyframes
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

NODE_CLASS_MAPPINGS = {**NODE_CLASS_MAPPINGS, "Ruyi_Keyframes": Ruyi_Keyframes}
NODE_DISPLAY_NAME_MAPPINGS = {**NODE_DISPLAY_NAME_MAPPINGS, "Ruyi_Keyframes": "Keyframes"}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
