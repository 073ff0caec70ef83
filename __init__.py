"""ConceptPrism for ComfyUI: learn a personal concept from a few images, without class nouns or masks."""
from .prism_core.host.folders import register_folders

register_folders()

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402  (folders first: nodes list them)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
