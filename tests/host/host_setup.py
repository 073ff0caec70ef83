"""Finding and preparing the real ComfyUI host for the host tier.

The host is a ComfyUI checkout named by COMFYUI_PATH, or the ComfyUI this pack is installed in
(…/ComfyUI/custom_nodes/<pack>). Without one, every host test skips with the reason below.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[2]
SKIP_REASON = ("host tier skipped: no ComfyUI found. Set COMFYUI_PATH to a ComfyUI checkout whose requirements "
               "are installed in this Python (see README, 'Tests'), or install the pack in ComfyUI/custom_nodes.")


def find_host() -> Path | None:
    candidates = [Path(os.environ["COMFYUI_PATH"])] if os.environ.get("COMFYUI_PATH") else []
    if PACK_ROOT.parent.name == "custom_nodes":
        candidates.append(PACK_ROOT.parent.parent)
    return next((c.resolve() for c in candidates if (c / "comfy" / "model_management.py").is_file()), None)


def require_host() -> Path:
    """Skip the calling module without a host; otherwise make `import comfy` work on the CPU."""
    host = find_host()
    if host is None:
        pytest.skip(SKIP_REASON, allow_module_level=True)
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # argument parsing is off when imported as a library; no CUDA here
    return host


def fake_server():
    """The little of PromptServer that the executor talks to, recording what it is sent."""
    class Server:
        client_id = "test-client"
        last_node_id = None
        def __init__(self):
            self.messages = []
        def send_sync(self, event, data, sid=None):
            self.messages.append((event, data))
    return Server()
