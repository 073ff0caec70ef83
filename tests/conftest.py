"""Test set-up shared by both tiers.

The pack is a ComfyUI custom node folder whose modules use relative imports, so tests import it
the way ComfyUI does: as a package. We register the repository root as the package
``comfyui_conceptprism`` without executing its ``__init__`` (which needs the host), so the core
tier can import ``comfyui_conceptprism.prism_core`` on a machine that has no ComfyUI.
The repository root itself is never put on ``sys.path``: its ``nodes/`` folder would shadow the
host's ``nodes.py``.
"""
from __future__ import annotations

import pathlib
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_conceptprism"

if PACKAGE not in sys.modules:
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(ROOT)]
    package.__file__ = str(ROOT / "__init__.py")
    sys.modules[PACKAGE] = package
