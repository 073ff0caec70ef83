"""Find the ComfyUI host and register this pack as a package: one module for tests, bench and eval.

The pack is a ComfyUI custom node folder whose modules use relative imports, so every development
tool imports it the way ComfyUI does: as the package ``comfyui_conceptprism``, registered without
executing its ``__init__`` (which needs a running host). The repository root itself is never put on
``sys.path``: its ``nodes/`` folder would shadow the host's ``nodes.py``.

The host is the ComfyUI checkout named by ``COMFYUI_PATH``, or the ComfyUI this pack is installed in
(``…/ComfyUI/custom_nodes/<pack>``). Tests import this file as ``hostenv`` (tests/ is pytest's
rootdir); bench/ and eval/ append tests/ to ``sys.path`` and import it too, since it has to work
before the package exists. It needs nothing but the standard library (no pytest).
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from types import ModuleType

PACK_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_conceptprism"
# Set by .ci/run: a host tier that would skip (no host, no browser) fails instead, so a broken
# install cannot pass green.
REQUIRE_ENV = "CONCEPTPRISM_REQUIRE_HOST"


def host_required() -> bool:
    """True when missing host tools must fail the run instead of skipping it (CI)."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def register_package() -> ModuleType:
    """The repository as the package ``comfyui_conceptprism`` (its ``__init__`` not run); idempotent."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(PACK_ROOT)]
        package.__file__ = str(PACK_ROOT / "__init__.py")
        sys.modules[PACKAGE] = package
    return sys.modules[PACKAGE]


def find_host() -> Path | None:
    """The ComfyUI checkout to test against (COMFYUI_PATH first, then the one the pack sits in), or None."""
    candidates = [Path(os.environ["COMFYUI_PATH"]).expanduser()] if os.environ.get("COMFYUI_PATH") else []
    if PACK_ROOT.parent.name == "custom_nodes":
        candidates.append(PACK_ROOT.parent.parent)
    return next((c.resolve() for c in candidates if (c / "comfy" / "model_management.py").is_file()), None)


def missing_host_reason() -> str:
    """Why no host was found, and what to set."""
    given = os.environ.get("COMFYUI_PATH")
    if given:
        return (f"COMFYUI_PATH={given} is not a ComfyUI checkout (no comfy/model_management.py): point it at the "
                "folder that holds ComfyUI's main.py, with its requirements.txt installed in this Python.")
    return ("no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout whose requirements are installed in this "
            "Python (README, 'Tests and CI'), or install the pack in ComfyUI/custom_nodes.")


# What the host tier imports from the host: its model management (torch, and the device it picks) and
# its node module (which pulls in most of comfy.*, torchvision included through the image nodes' deps).
_HOST_PROBE = ("comfy.model_management", "nodes")


def host_import_problem(host: Path) -> str | None:
    """None when `host` imports in this Python (on the CPU); else what failed, as one line.

    A checkout whose requirements are missing or broken (say a torchvision built for another torch)
    is found by `find_host` but fails on import; the host tier then skips (or fails, in CI) with this
    line instead of breaking test collection for the core tier too.
    """
    try:
        import_host(host)
        for module in _HOST_PROBE:
            importlib.import_module(module)
    except Exception as error:  # noqa: BLE001  (any import-time failure of the host is reported, not raised)
        return f"importing the host's {getattr(error, 'name', None) or 'modules'} failed: {type(error).__name__}: {error}"
    return None


def import_host(host: Path, pytorch_attention: bool = False, cpu: bool = True) -> Path:
    """Make ``import comfy`` work from `host` and register the pack; returns `host`.

    pytorch_attention: use torch's SDPA as ``--use-pytorch-cross-attention`` does (same maths as the
    CPU default, sub-quadratic chunking, and several times faster at bench/eval sizes). cpu: force the
    CPU (tests, CPU benches), as ``--cpu``; False lets the host pick its GPU (bench/gpu.py). Both must
    be chosen before ``comfy.model_management`` is first imported.
    """
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu  # argument parsing is off when imported as a library
    if pytorch_attention:
        comfy.cli_args.args.use_pytorch_cross_attention = True
    register_package()
    return host

