"""Import the ComfyUI host and the pack from eval scripts, on the CPU with one thread.

Eval scripts run as files (``python eval/<script>.py``), so ``eval/`` is on ``sys.path`` and the
repository root is not: the root's ``nodes/`` folder would shadow the host's ``nodes.py``. The pack
is registered as the package ``comfyui_conceptprism`` without running its ``__init__`` by
``tests/hostenv.py`` (shared with the tests and the bench), so ``comfyui_conceptprism.prism_core.host`` imports with relative imports intact.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

EVAL_DIR = Path(__file__).resolve().parent
PACK_ROOT = EVAL_DIR.parent
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
    """Put the ComfyUI checkout named by COMFYUI_PATH on sys.path, force the CPU (with torch's SDPA,
    as `--use-pytorch-cross-attention`: the same attention maths as the CPU default, several times
    faster at these sizes), register the pack as a package, and return the host path. Finding and
    registering is tests/hostenv.py's job, shared with the tests and the bench; eval requires
    COMFYUI_PATH (not a surrounding custom_nodes folder) so that a run names its host."""
    single_thread()
    if not os.environ.get("COMFYUI_PATH"):
        raise SystemExit("COMFYUI_PATH is not set: set it to a ComfyUI checkout (the folder with main.py), "
                         "e.g. COMFYUI_PATH=~/ComfyUI python eval/run_table2.py")
    if str(PACK_ROOT / "tests") not in sys.path:
        sys.path.append(str(PACK_ROOT / "tests"))  # appended: shadows nothing
    import hostenv
    host = hostenv.find_host()
    if host is None:
        raise SystemExit(hostenv.missing_host_reason())
    return hostenv.import_host(host, pytorch_attention=True)
