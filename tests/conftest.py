"""Test set-up shared by both tiers: the pack registered as the package ``comfyui_conceptprism``
(see hostenv.py), so the core tier imports ``comfyui_conceptprism.prism_core`` with no ComfyUI."""
from __future__ import annotations

import hostenv

hostenv.register_package()
