"""Import the ComfyUI host and the pack from eval scripts, on the CPU with one thread.

Eval scripts run as files (``python eval/<script>.py``), so ``eval/`` is on ``sys.path`` and the
repository root is not: the root's ``nodes/`` folder would shadow the host's ``nodes.py``. The pack
is registered as the package ``comfyui_conceptprism`` without running its ``__init__``, exactly as
``tests/conftest.py`` does, so ``comfyui_conceptprism.prism_host`` imports with relative imports intact.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

EVAL_DIR = Path(__file__).resolve().parent
PACK_ROOT = EVAL_DIR.parent
PACKAGE = "comfyui_conceptprism"
ARTIFACTS = EVAL_DIR / "artifacts"


_interop_threads_set = False  # torch.set_num_interop_threads may only be called once per process


def single_thread() -> None:
    """One CPU thread: the eval machine is shared, and one thread makes timings comparable."""
    global _interop_threads_set
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    if not _interop_threads_set:
        torch.set_num_interop_threads(1)
        _interop_threads_set = True


def setup_host() -> Path:
    """Put the ComfyUI checkout named by COMFYUI_PATH on sys.path, force the CPU, register the pack
    as a package, and return the host path."""
    single_thread()
    if not os.environ.get("COMFYUI_PATH"):
        raise SystemExit("COMFYUI_PATH is not set: set it to a ComfyUI checkout (the folder with main.py), "
                         "e.g. COMFYUI_PATH=~/ComfyUI python eval/run_table2.py")
    host = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    if not (host / "comfy" / "model_management.py").is_file():
        raise SystemExit(f"COMFYUI_PATH={host} is not a ComfyUI checkout (no comfy/model_management.py): "
                         "point it at the folder that holds ComfyUI's main.py.")
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # argument parsing is off when imported as a library
    # As `--use-pytorch-cross-attention`: the same attention maths as the CPU default (sub-quadratic
    # chunking), several times faster at these sizes. Must be set before comfy.model_management loads.
    comfy.cli_args.args.use_pytorch_cross_attention = True
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(PACK_ROOT)]
        package.__file__ = str(PACK_ROOT / "__init__.py")
        sys.modules[PACKAGE] = package
    return host
